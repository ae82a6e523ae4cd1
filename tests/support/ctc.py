"""Tiny CTC models and batches for the fine-tuning tests."""

import numpy as np

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import Vocabulary

VOCABULARY = Vocabulary.from_symbols("abcdefg'")
CONFIG = Wav2Vec2Config.preset("tiny", vocab_size=len(VOCABULARY), feature_grad_mult=0.0)
LAYER_CONFIG = CONFIG.replace(feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=True)


def ctc_batch(seed=0, lengths=(8000, 6400, 5600, 7200)):
    rng = np.random.default_rng(seed)
    width = max(lengths)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    labels = np.full((len(lengths), 6), -100, np.int32)
    for row in range(len(lengths)):
        n = rng.integers(2, 7)
        labels[row, :n] = rng.integers(5, len(VOCABULARY), n)
    return {
        "input_values": (rng.standard_normal(mask.shape) * mask).astype(np.float32),
        "attention_mask": mask,
        "labels": labels,
    }
