"""tools/training_memory.py: its parameter count (one and two layers, extrapolated) against a whole
abstract model's, and its activation estimate against a NumPy count of the tensors it names."""

import jax
import numpy as np
from flax import nnx

from tools import training_memory
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining


def test_the_extrapolated_count_is_the_whole_models():
    config = Wav2Vec2Config.preset("tiny", num_hidden_layers=5)
    model = nnx.eval_shape(lambda: Wav2Vec2ForPreTraining(config))
    whole = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert training_memory.parameter_count(config) == whole


def test_activations_count_the_named_tensors():
    config = Wav2Vec2Config.preset("base")
    frames, samples = 50, 16_000  # one second
    conv = 3 * 512 * 2 * samples / 5
    layer = frames * (9 * 768 + 2 * 3072)
    attention = 12 * frames**2
    full = training_memory.activation_bytes(config, 1.0, remat=False, fused_attention=False)
    assert full == 2 * (conv + 12 * (layer + attention))
    fused = training_memory.activation_bytes(config, 1.0, remat=False, fused_attention=True)
    assert full - fused == 2 * 12 * (attention - 12 * frames)
    remat = training_memory.activation_bytes(config, 1.0, remat=True, fused_attention=False)
    assert remat == 2 * (12 * frames * 768 + max(conv, layer + attention))
