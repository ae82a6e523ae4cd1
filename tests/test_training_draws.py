"""What the models draw in training (w2v_jax/training_draws.py): each draw from its named sub-key, the
span masks inside the real frames, the distractors other masked frames of the same utterance (checked
frame by frame in NumPy), the channel masks' spans. That the models draw exactly these for a key:
tests/test_model.py and tests/test_ctc_model.py."""

import jax
import jax.numpy as jnp
import numpy as np

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import sample_negative_indices
from w2v_jax.layers import named_key
from w2v_jax.masking import compute_mask_indices
from w2v_jax.quantization import gumbel_noise
from w2v_jax.training_draws import (
    gumbel_key,
    masks_and_negatives,
    sample_distractors,
    sample_feature_mask,
    sample_gumbel_noise,
    sample_masks_and_negatives,
    sample_time_mask,
    sample_training_masks,
)

CONFIG = Wav2Vec2Config.preset("tiny", mask_feature_prob=0.25, mask_feature_length=4, mask_feature_min_masks=1)
TIME = 49
LENGTHS = np.array([49, 30, 24])  # frames; the two last rows padded


def test_each_draw_comes_from_its_named_sub_key():
    key = jax.random.key(11)
    lengths = jnp.asarray(LENGTHS, jnp.int32)
    mask, negatives = jax.jit(sample_masks_and_negatives, static_argnums=(1, 2, 3))(key, CONFIG, 3, TIME, LENGTHS)
    spans = (CONFIG.mask_time_prob, CONFIG.mask_time_length, CONFIG.mask_time_min_masks)
    expected = compute_mask_indices(named_key(key, "mask"), (3, TIME), *spans, lengths)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(sample_time_mask(key, CONFIG, 3, TIME, lengths), expected)
    distractors = sample_negative_indices(named_key(key, "negatives"), expected, CONFIG.num_negatives)
    np.testing.assert_array_equal(negatives, distractors)
    np.testing.assert_array_equal(sample_distractors(key, CONFIG, expected), distractors)
    again = masks_and_negatives(named_key(key, "mask"), named_key(key, "negatives"), CONFIG, 3, TIME, LENGTHS)
    for a, b in zip(again, (mask, negatives)):
        np.testing.assert_array_equal(a, b)
    time_mask, feature_mask = sample_training_masks(key, CONFIG, 3, TIME, LENGTHS)
    np.testing.assert_array_equal(time_mask, expected)
    np.testing.assert_array_equal(feature_mask, sample_feature_mask(key, CONFIG, 3))
    gumbel = named_key(key, "gumbel")
    np.testing.assert_array_equal(jax.random.key_data(gumbel_key(key)), jax.random.key_data(gumbel))
    shape = (3, TIME, CONFIG.num_codevector_groups, CONFIG.num_codevectors_per_group)
    np.testing.assert_array_equal(sample_gumbel_noise(key, CONFIG, 3, TIME), gumbel_noise(gumbel, shape))


def test_masks_stay_in_real_frames_and_distractors_among_the_utterances_masked_frames():
    for seed in range(5):
        mask, negatives = map(np.asarray, sample_masks_and_negatives(jax.random.key(seed), CONFIG, 3, TIME, LENGTHS))
        assert mask.dtype == bool and negatives.dtype == np.int32 and negatives.shape == (3, TIME, CONFIG.num_negatives)
        for row, length in enumerate(LENGTHS):
            assert not mask[row, length:].any() and mask[row, :length].any()
            masked = set(np.flatnonzero(mask[row]).tolist())
            for frame in range(TIME):
                drawn = negatives[row, frame].tolist()
                if frame in masked:
                    assert set(drawn) <= masked - {frame}, (seed, row, frame)
                else:
                    assert drawn == [frame] * len(drawn)  # unmasked frames hold their own index


def test_without_a_probability_nothing_is_drawn():
    config = CONFIG.replace(mask_time_prob=0.0, mask_feature_prob=0.0)
    assert sample_training_masks(jax.random.key(0), config, 2, 24) == (None, None)


def test_channel_mask_spans_follow_the_config():
    config = Wav2Vec2Config.preset("tiny", mask_feature_prob=0.25, mask_feature_length=4, mask_feature_min_masks=1)
    masks = np.asarray(jax.vmap(lambda k: sample_feature_mask(k, config, 3))(jax.random.split(jax.random.key(0), 200)))
    # num_spans = max(1, int(0.25 * 32 / 4 + u)) = 2 spans of 4 (overlapping or not): 4 to 8 channels.
    counts = masks.sum(-1)
    assert counts.min() >= 4 and counts.max() <= 8
    assert masks.any(axis=(0, 1)).all()  # every channel gets masked sometimes
