"""Our own checkpoint folder: `config.json` (transformers' fields + fairseq's) and `params.safetensors`
keyed by our parameter paths (e.g. `wav2vec2.encoder.layers.0.attention.q_proj.kernel`); a CTC
model's folder also holds its vocabulary and processor files.

Integrity: `save_checkpoint` writes `integrity.json` last, the SHA-256 of every file it wrote;
`load_checkpoint` verifies each recorded file before using it, and a damaged or missing one is a
`DamagedCheckpointError` (a ValueError) naming it. Folders written before the record existed load
without the check. The record is read as untrusted: a name in it that is not a file of the folder itself
(a path with a separator, `..`, an absolute path, a symbolic link out of the folder) is refused."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from w2v_jax.checkpoints.hf import CONFIG_FILE, save_feature_extractor, save_processor_files, write_config
from w2v_jax.checkpoints.weights import Model, ParamPath, check_stored_weights, model_class
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.json_files import JSONFileError, read_json

PARAMS_FILE = "params.safetensors"
INTEGRITY_FILE = "integrity.json"


def _param_name(path: ParamPath) -> str:
    return ".".join(str(p) for p in path)


def save_checkpoint(
    config: Wav2Vec2Config,
    model: Model,
    path: str | os.PathLike,
    *,
    vocabulary: Vocabulary | None = None,
    do_normalize: bool | None = None,
) -> None:
    """Our folder format: config.json (transformers' + fairseq fields) and params.safetensors
    keyed by our parameter paths (e.g. `wav2vec2.encoder.layers.0.attention.q_proj.kernel`); with
    a `vocabulary` (CTC models) also the processor files, as `save_hf_checkpoint` writes them
    (`do_normalize`: whether the model's inputs are normalised per utterance, None: True, our
    pipeline's); without one, `do_normalize` given, the feature extractor's file alone
    (`hf.save_feature_extractor`: an imported pretrained model's `task.normalize`)."""
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INTEGRITY_FILE).unlink(missing_ok=True)
    before = _file_stats(folder)
    if vocabulary is not None:
        save_processor_files(vocabulary, config, folder, do_normalize=do_normalize is not False)
    elif do_normalize is not None:
        save_feature_extractor(config, folder, do_normalize=do_normalize)
    write_config(config, model, folder)
    params = {
        _param_name(p): np.asarray(jax.device_get(v[...]), np.float32)
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    safetensors.numpy.save_file(params, folder / PARAMS_FILE)
    # Last, so a folder whose saving was interrupted has no record of files that never finished.
    # The files written here only: others beside them (a best model's transcripts) may change later.
    written = [name for name, stat in _file_stats(folder).items() if before.get(name) != stat]
    record = {"sha256": {name: _sha256(folder / name) for name in sorted(written)}}
    (folder / INTEGRITY_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


class DamagedCheckpointError(ValueError):
    """A checkpoint folder's file does not match the integrity record written when it was saved."""


def _file_stats(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {f.name: (f.stat().st_mtime_ns, f.stat().st_size) for f in folder.iterdir() if f.is_file()}


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded_file(folder: pathlib.Path, name: str) -> pathlib.Path:
    """The file of `folder` that `integrity.json` names `name`; raises DamagedCheckpointError when the
    name leaves the folder (a path, `..`, an absolute path, a symbolic link out of it)."""
    file = folder / name
    inside = name not in ("", ".", "..") and pathlib.PurePath(name).name == name and "\\" not in name
    # realpath, not Path.resolve: a link loop resolves to a path (then no file), not an error.
    if not inside or not pathlib.Path(os.path.realpath(file)).is_relative_to(os.path.realpath(folder)):
        raise DamagedCheckpointError(
            f"{folder / INTEGRITY_FILE}: names {name!r}, which is not a file of the folder: refused"
        )
    return file


def verify_integrity(folder: str | os.PathLike) -> None:
    """Checks every file `integrity.json` records; no record (older folders): nothing to check.

    Raises DamagedCheckpointError naming the first damaged or missing file.
    """
    folder = pathlib.Path(folder)
    path = folder / INTEGRITY_FILE
    if not path.is_file():
        return
    try:
        recorded = read_json(path, expect=dict)["sha256"]
    except JSONFileError as error:
        raise DamagedCheckpointError(f"{path}: damaged integrity record ({error.problem})") from None
    except KeyError as error:
        raise DamagedCheckpointError(f"{path}: damaged integrity record ({error})") from None
    if not isinstance(recorded, dict):
        raise DamagedCheckpointError(f"{path}: damaged integrity record (sha256 is not a mapping)")
    for name, digest in recorded.items():
        file = _recorded_file(folder, name)
        if not file.is_file():
            raise DamagedCheckpointError(f"{file}: missing (recorded in {INTEGRITY_FILE})")
        if _sha256(file) != digest:
            raise DamagedCheckpointError(
                f"{file}: damaged (its SHA-256 differs from the one recorded in {INTEGRITY_FILE} when it was "
                f"saved; if you changed it on purpose, delete {folder / INTEGRITY_FILE})"
            )


def load_checkpoint(
    path: str | os.PathLike, *, dtype: jnp.dtype | None = None, allow_nonfinite: bool = False
) -> tuple[Wav2Vec2Config, Model]:
    """Reads a folder written by `save_checkpoint`; returns `(config, model)`, a
    `Wav2Vec2ForPreTraining` or a `Wav2Vec2Model` as the file holds. NaN or infinite weights are
    refused unless `allow_nonfinite` (`check_stored_weights`); a file that does not match the
    folder's integrity record is a `DamagedCheckpointError`."""
    folder = pathlib.Path(path)
    verify_integrity(folder)
    config = Wav2Vec2Config.from_json_file(folder / CONFIG_FILE)
    stored = safetensors.numpy.load_file(folder / PARAMS_FILE)
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
