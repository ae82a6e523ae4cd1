"""Our own checkpoint folder: `config.json` (transformers' fields + fairseq's) and `params.safetensors`
keyed by our parameter paths (e.g. `wav2vec2.encoder.layers.0.attention.q_proj.kernel`); a CTC
model's folder also holds its vocabulary and processor files. Files written before the pretraining
model's encoder was nested under `wav2vec2` are read too."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from w2v_jax.checkpoints.hf import CONFIG_FILE, save_processor_files, write_config
from w2v_jax.checkpoints.weights import Model, ParamPath, check_stored_weights, model_class
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.model import Wav2Vec2Model

PARAMS_FILE = "params.safetensors"
# The pretraining model's parameters outside its encoder `wav2vec2`.
_HEADS = ("quantizer", "project_hid", "project_q")


def _param_name(path: ParamPath) -> str:
    return ".".join(str(p) for p in path)


def save_checkpoint(
    config: Wav2Vec2Config, model: Model, path: str | os.PathLike, *, vocabulary: Vocabulary | None = None
) -> None:
    """Our folder format: config.json (transformers' + fairseq fields) and params.safetensors
    keyed by our parameter paths (e.g. `wav2vec2.encoder.layers.0.attention.q_proj.kernel`); with
    a `vocabulary` (CTC models) also the processor files, as `save_hf_checkpoint` writes them."""
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if vocabulary is not None:
        save_processor_files(vocabulary, config, folder)
    write_config(config, model, folder)
    params = {
        _param_name(p): np.asarray(jax.device_get(v[...]), np.float32)
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    safetensors.numpy.save_file(params, folder / PARAMS_FILE)


def _nest_legacy_names(stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names of a pretraining model saved before its encoder moved under `wav2vec2` (encoder
    parameters at the top beside `quantizer`, ...) -> today's names; other files unchanged."""
    if model_class(stored) is not Wav2Vec2Model or not any(k.split(".")[0] in _HEADS for k in stored):
        return stored
    return {(k if k.split(".")[0] in _HEADS else f"wav2vec2.{k}"): v for k, v in stored.items()}


def load_checkpoint(
    path: str | os.PathLike, *, dtype: jnp.dtype | None = None, allow_nonfinite: bool = False
) -> tuple[Wav2Vec2Config, Model]:
    """Reads a folder written by `save_checkpoint`; returns `(config, model)`, a
    `Wav2Vec2ForPreTraining` or a `Wav2Vec2Model` as the file holds. NaN or infinite weights are
    refused unless `allow_nonfinite` (`check_stored_weights`)."""
    folder = pathlib.Path(path)
    config = Wav2Vec2Config.from_json_file(folder / CONFIG_FILE)
    stored = _nest_legacy_names(safetensors.numpy.load_file(folder / PARAMS_FILE))
    check_stored_weights(config, stored, folder / PARAMS_FILE, allow_nonfinite=allow_nonfinite)
    cls = model_class(stored)
    model = nnx.eval_shape(lambda: cls(config, dtype=dtype))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    names = {_param_name(p) for p, _ in flat}
    if names != set(stored) or any(stored[_param_name(p)].shape != tuple(v.shape) for p, v in flat):
        raise ValueError(
            f"{folder / PARAMS_FILE} does not match the config: missing {sorted(names - set(stored))}, "
            f"unexpected {sorted(set(stored) - names)}"
        )
    nnx.update(model, nnx.from_flat_state([(p, v.replace(jnp.asarray(stored[_param_name(p)]))) for p, v in flat]))
    return config, model
