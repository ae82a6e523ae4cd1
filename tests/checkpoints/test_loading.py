"""w2v_jax/checkpoints/loading.py: `load_model` from any format (the formats themselves: test_hf,
test_folder; training workdirs: training/test_checkpointer)."""

import jax
import numpy as np
import pytest
from flax import nnx

from w2v_jax.checkpoints import load_model
from w2v_jax.checkpoints.folder import save_checkpoint
from w2v_jax.checkpoints.hf import save_hf_checkpoint
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining


def test_load_model_refuses_nothing_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path)


def test_load_model_reads_our_and_transformers_folders(tmp_path):
    model = Wav2Vec2ForPreTraining(Wav2Vec2Config.preset("tiny"), rngs=nnx.Rngs(0))
    save_checkpoint(model.config, model, tmp_path / "ours")
    save_hf_checkpoint(model.config, model, tmp_path / "hf")
    expected = jax.tree.leaves(nnx.state(model, nnx.Param))
    for name in ("ours", "hf"):
        loaded = load_model(tmp_path / name)
        for a, b in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), expected):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path)
