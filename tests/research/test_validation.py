"""w2v_jax.research.validation: the pretraining objective in evaluation mode and codebook usage."""

import numpy as np
import pytest
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining
from w2v_jax.research.validation import validation_metrics


@pytest.fixture(scope="module")
def model():
    return Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))


def test_validation_metrics_are_consistent(model):
    rng = np.random.RandomState(2)
    waveforms = [rng.randn(n).astype(np.float32) for n in (9600, 9600, 9600, 6400)]
    metrics = validation_metrics(model, waveforms, batch_size=3)
    frames = sum(model.num_frames(len(w)) for w in waveforms)
    assert metrics.codebook_usage.shape == (2, 8)
    np.testing.assert_array_equal(metrics.codebook_usage.sum(axis=1), [frames, frames])
    assert metrics.used_fraction == np.mean(metrics.codebook_usage > 0)
    assert 2.0 <= metrics.code_perplexity <= 16.0
    assert 0.0 <= metrics.accuracy <= 1.0 and metrics.chance_accuracy == 0.2
    assert metrics.num_masked > 0 and metrics.skipped_utterances == 0
    assert metrics.num_masked <= frames
    again = validation_metrics(model, waveforms, batch_size=3)
    assert again.loss == metrics.loss  # masks and distractors come from the seed
