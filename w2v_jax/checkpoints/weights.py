"""What every checkpoint format shares: which model a set of weights fills, the checks on
untrusted weights before a model is built from them, and a checkpoint's weights put into a model
being trained (`with_parameters`)."""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForCTC, Wav2Vec2ForPreTraining, Wav2Vec2Model

Model = Wav2Vec2ForPreTraining | Wav2Vec2ForCTC | Wav2Vec2Model
# A parameter's path in `nnx.to_flat_state` (e.g. ("wav2vec2", "encoder", "layers", 0, ...)): names and
# indices, which flax types as hashable keys.
ParamPath = tuple[Hashable, ...]


def model_class(keys: Iterable[str]) -> type[Model]:
    """The model whose parameters these (transformers' or our) keys name: `Wav2Vec2ForCTC` when
    they hold `lm_head.`, else `Wav2Vec2ForPreTraining` when they hold an encoder under `wav2vec2.`,
    else `Wav2Vec2Model`."""
    keys = list(keys)
    if any(k.startswith("lm_head.") for k in keys):
        return Wav2Vec2ForCTC
    return Wav2Vec2ForPreTraining if any(k.startswith("wav2vec2.") for k in keys) else Wav2Vec2Model


# Layer indices in both key spellings: ours (`encoder.layers.3.`, `feature_extractor.layers.0.`) and
# transformers' (`wav2vec2.encoder.layers.3.`, `wav2vec2.feature_extractor.conv_layers.0.`).
_LAYER_KEYS = {
    "num_hidden_layers": re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\."),
    "conv_dim": re.compile(r"(?:^|\.)feature_extractor\.(?:conv_)?layers\.(\d+)\."),
}


def check_stored_weights(
    config: Wav2Vec2Config,
    weights: Mapping[str, np.ndarray],
    source: str | os.PathLike,
    *,
    allow_nonfinite: bool = False,
) -> None:
    """Checks an untrusted checkpoint's weights against its config before any model is built.

    The model built from `config` is bounded by the file: its Transformer and conv layer counts
    must be the layers the weights hold (a config.json asking for 10**9 layers is refused at once,
    instead of building them). Keys and shapes are then compared layer by layer when the model is
    built (`params_from_hf`, `load_checkpoint`). Non-finite weights are refused unless allowed.

    Args:
      config: the checkpoint's config.
      weights: its weights, by key (ours or transformers').
      source: the checkpoint's path, for messages.
      allow_nonfinite: accept NaN or infinite weights (to inspect a diverged checkpoint).

    Raises:
      ValueError: naming the field and the count the weights hold, or the non-finite arrays.
    """
    for field, pattern in _LAYER_KEYS.items():
        wanted = config.num_hidden_layers if field == "num_hidden_layers" else len(config.conv_dim)
        stored = {int(m.group(1)) for key in weights if (m := pattern.search(key))}
        if len(stored) != wanted or max(stored, default=-1) != wanted - 1:  # i.e. stored == {0..wanted-1}
            held = f"layers {min(stored)}..{max(stored)} ({len(stored)} distinct)" if stored else "no such layers"
            raise ValueError(
                f"{source}: config.json's {field} asks for {wanted} layers but the weights hold {held}; "
                "the config does not describe these weights"
            )
    if not allow_nonfinite:
        bad = sorted(key for key, value in weights.items() if not np.all(np.isfinite(value)))
        if bad:
            raise ValueError(
                f"{source}: {len(bad)} weight arrays hold NaN or infinity (first: {bad[0]}); "
                "pass allow_nonfinite=True (--allow_nonfinite) to load them anyway"
            )


def with_parameters(
    params: nnx.State, replacement: nnx.State, *, under: ParamPath = (), source: str = "the checkpoint"
) -> nnx.State:
    """`params` with the parameters under the path `under` replaced by `replacement`'s.

    Every parameter under `under` must be in `replacement`, with its shape, and `replacement` may
    hold no other (a checkpoint that does not describe the model is refused, naming the
    parameter); the others keep their values. Each new value takes the dtype of the one it replaces.

    Args:
      params: a model's parameters (`nnx.state(model, nnx.Param)`).
      replacement: the parameters of the sub-module at `under` (all of them with `under=()`).
      under: e.g. `("wav2vec2",)`: the encoder of a pretraining or CTC model.
      source: what `replacement` comes from, for messages.
    """
    new_values = {(*under, *path): variable for path, variable in nnx.to_flat_state(replacement)}
    flat = []
    for path, variable in nnx.to_flat_state(params):
        if path[: len(under)] == tuple(under):
            if path not in new_values:
                raise ValueError(f"{source} has no parameter {'.'.join(map(str, path[len(under) :]))}")
            new = new_values.pop(path)
            if tuple(new.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{'.'.join(map(str, path))}: shape {tuple(new.shape)} in {source}, "
                    f"{tuple(variable.shape)} in the model"
                )
            variable = variable.replace(jnp.asarray(new[...], variable.dtype))
        flat.append((path, variable))
    if new_values:
        raise ValueError(f"{source} has parameters the model lacks: {sorted(new_values)[:5]}")
    return nnx.from_flat_state(flat)
