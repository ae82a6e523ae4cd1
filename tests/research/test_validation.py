"""w2v_jax.research.validation: the pretraining objective in evaluation mode and codebook usage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.contrastive_loss import sample_negative_indices
from w2v_jax.masking import compute_mask_indices
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research.validation import validation_metrics


@pytest.fixture(scope="module")
def model():
    return Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))


def _perplexity(counts):
    """Sum over groups of exp(entropy) of each `[G, V]` row's normalised counts, in NumPy."""
    probs = counts / counts.sum(axis=1, keepdims=True)
    logs = np.log(np.where(probs > 0, probs, 1.0))
    return float(np.exp(-(probs * logs).sum(axis=1)).sum())


def test_one_batch_equals_the_models_own_metrics(model):
    # One batch: the documented draws (masks from fold_in(batch key, 0), distractors from
    # fold_in(batch key, 1), batch key = fold_in(key(seed), 0)) fed to the model in evaluation mode.
    rng = np.random.RandomState(2)
    waveforms = [rng.randn(9600).astype(np.float32) for _ in range(3)]
    metrics = validation_metrics(model, waveforms, seed=5, batch_size=3)
    config = model.config
    batch_key = jax.random.fold_in(jax.random.key(5), 0)
    time = model.num_frames(9600)
    mask = compute_mask_indices(
        jax.random.fold_in(batch_key, 0),
        (3, time),
        config.mask_time_prob,
        config.mask_time_length,
        config.mask_time_min_masks,
    )
    assert int(np.asarray(mask).sum(1).min()) > config.num_negatives  # no utterance skipped
    negatives = sample_negative_indices(jax.random.fold_in(batch_key, 1), mask, config.num_negatives)
    run = nnx.jit(lambda m, x, mask, negatives: m(x, mask_time_indices=mask, negative_indices=negatives))
    out = run(model, jnp.asarray(np.stack(waveforms)), mask, negatives)
    num_masked = int(out.num_masked)
    assert metrics.num_masked == num_masked and metrics.skipped_utterances == 0
    np.testing.assert_allclose(metrics.loss, float(out.loss) / num_masked, rtol=1e-6)
    np.testing.assert_allclose(metrics.contrastive_loss, float(out.contrastive_loss) / num_masked, rtol=1e-6)
    np.testing.assert_allclose(metrics.diversity_loss, float(out.diversity_loss) / num_masked, rtol=1e-6)
    np.testing.assert_allclose(metrics.feature_penalty, float(out.feature_penalty) / num_masked, rtol=1e-6)
    assert metrics.accuracy == int(out.num_correct) / num_masked
    # Chance: a guess among each masked frame's target and the distractors with other codewords.
    codes, negatives = np.asarray(out.codevector_indices), np.asarray(negatives)
    chance = [
        1 / (1 + np.sum(np.any(codes[b, negatives[b, t]] != codes[b, t], axis=-1)))
        for b, t in zip(*np.nonzero(np.asarray(mask)))
    ]
    np.testing.assert_allclose(metrics.chance_accuracy, np.mean(chance), rtol=1e-6)
    np.testing.assert_allclose(metrics.batch_perplexity, float(out.codevector_perplexity), rtol=1e-6)
    # The histogram counts the model's choices on every frame.
    indices = np.asarray(out.codevector_indices)  # [batch, time, G]
    counts = np.stack([np.bincount(indices[..., g].ravel(), minlength=8) for g in range(2)])
    np.testing.assert_array_equal(metrics.codebook_usage, counts)
    np.testing.assert_allclose(metrics.code_perplexity, _perplexity(counts), rtol=1e-5)
    assert metrics.used_fraction == np.count_nonzero(counts) / 16


def test_batches_add_up_and_filler_rows_are_dropped(model):
    rng = np.random.RandomState(2)
    waveforms = [rng.randn(n).astype(np.float32) for n in (9600, 9600, 9600, 6400)]
    whole = validation_metrics(model, waveforms, batch_size=3)
    frames = sum(model.num_frames(len(w)) for w in waveforms)
    # The filler rows of the 6400-sample batch (copies of its one utterance) are not counted.
    np.testing.assert_array_equal(whole.codebook_usage.sum(axis=1), [frames, frames])
    assert 0.2 <= whole.chance_accuracy <= 1  # 1 / (1 + K) at least
    assert validation_metrics(model, waveforms, batch_size=3).loss == whole.loss  # draws come from the seed
    assert validation_metrics(model, waveforms, seed=1, batch_size=3).loss != whole.loss
