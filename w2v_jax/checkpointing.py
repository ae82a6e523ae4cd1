"""Checkpoints: orbax `CheckpointManager` around the train state plus a JSON side record.

Each checkpoint (`workdir/checkpoints/<step>/`) has two items:
- "state": the train state pytree (parameters, optimizer state, step, counters, PRNG key data),
  written with `StandardSave` (tensorstore, sharded arrays written by the processes that hold them);
- "host": JSON with what lives on the host: every process's data-iterator position, the metrics
  of the logging window in progress, and anything else the trainer must restore for an exact
  resume.

Crash safety is orbax's: a save writes into a temporary directory that is renamed to `<step>`
only once every file of every process is written (`commit_success.txt` marks it on file systems
without atomic rename), so a process killed mid-save leaves a temporary directory that is never
listed as a step and is removed at the next start (`cleanup_tmp_directories`). Saves are
asynchronous: `save` returns once the arrays are copied to host memory, the writing goes on in a
background thread while training continues.

A checkpoint never holds non-finite values: `save` checks the state first and refuses.

`load_model` reads a model from any of our checkpoint formats: a training workdir (this module's
orbax checkpoints), our safetensors folder or a transformers folder (`convert`).
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from w2v_jax import convert, sharding
from w2v_jax import train_step as train_lib
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.model import Wav2Vec2ForPreTraining

logger = logging.getLogger(__name__)


class NonFiniteCheckpointError(ValueError):
    """Raised instead of writing a checkpoint whose arrays hold NaN or infinity."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def tree_all_finite(tree: Any) -> bool:
    """True when every floating-point array of `tree` is free of NaN and infinity.

    Jitted so it also works on arrays sharded over several processes (the result is replicated).
    """
    return bool(_all_finite(tree))


class Checkpointer:
    """Periodic, asynchronous, keep-the-last-N checkpoints of a train state and its host record.

    Args:
      directory: where the step directories go (created if missing).
      keep: how many of the most recent checkpoints to keep.
      async_save: write in a background thread (the train loop goes on meanwhile).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        # orbax refuses relative paths; a workdir given as runs/tiny must work.
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            # Only explicit saves (the trainer decides when); a should_save policy would be a second one.
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(1),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step (partial ones are never listed), or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, host: dict[str, Any]) -> None:
        """Starts saving `state` and the JSON-serialisable `host` record as checkpoint `step`.

        Every process must call it (each writes its shards). Raises NonFiniteCheckpointError
        if a floating-point array of `state` isn't finite.
        """
        if not tree_all_finite(state):
            raise NonFiniteCheckpointError(f"refusing to checkpoint step {step}: the state holds NaN or infinity")
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)),
            force=True,
        )
        if saved:
            logger.info("checkpoint %d: save started in %s", step, self.directory)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint `step` into the structure, dtypes and shardings of `abstract_state`.

        Args:
          step: a step from `latest_step()` / `all_steps()`.
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `.sharding` (the live state's layout).

        Returns:
          (state, host record).
        """
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), host=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["host"]

    def wait(self) -> None:
        """Blocks until the save in progress (if any) is written and committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's threads."""
        self._manager.close()


def abstract_like(state: Any) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of a live state: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def load_model(path: str | os.PathLike, step: int | None = None) -> Wav2Vec2ForPreTraining:
    """A model from any of our checkpoint formats.

    Args:
      path: a training workdir (`config.json` + orbax `checkpoints/`, from `experiments.pretrain`),
        our folder format (`config.json` + `params.safetensors`, `convert.save_checkpoint`), or a
        transformers folder (`config.json` + `model.safetensors` / `pytorch_model.bin`).
      step: the workdir checkpoint to load; default the newest.
    """
    folder = pathlib.Path(path)
    if (folder / "checkpoints").is_dir():
        return _load_workdir(folder, step)
    if step is not None:
        raise ValueError(f"step={step} only applies to a training workdir (with checkpoints/), not {folder}")
    if (folder / "params.safetensors").is_file():
        return convert.load_checkpoint(folder)[1]
    if (folder / "config.json").is_file():
        return convert.load_hf_checkpoint(folder)[1]
    raise ValueError(
        f"{folder} is not a checkpoint: expected a training workdir (checkpoints/), params.safetensors "
        "or a transformers folder (config.json + model.safetensors)"
    )


def _load_workdir(folder: pathlib.Path, step: int | None) -> Wav2Vec2ForPreTraining:
    """Restores the parameters of a training run's checkpoint (the optimizer state is read and dropped)."""
    config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    t = config.train
    model_config = Wav2Vec2Config.from_run_config(config)
    optimizer, _ = train_lib.optimizer_and_hyperparams(t)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    graphdef, abstract, shardings = train_lib.abstract_train_state(model_config, optimizer, mesh=mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    checkpointer = Checkpointer(folder / "checkpoints", async_save=False)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise ValueError(f"{folder / 'checkpoints'} holds no complete checkpoint")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ValueError(f"no checkpoint {step} in {folder / 'checkpoints'}; available: {sorted(steps)}")
        restored, _ = checkpointer.restore(step, target)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, restored.params, restored.model_state)
