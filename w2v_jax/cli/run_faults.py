"""A training run's faults a user causes, as one line and an exit status instead of a traceback
(`run_faults_exit`, for the launchers that train)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from w2v_jax.checkpoints.checkpointer import CorruptCheckpointError
from w2v_jax.training import workdir
from w2v_jax.training.trainer import TrainingDivergedError


@contextlib.contextmanager
def run_faults_exit(run_dir: str | os.PathLike | None) -> Iterator[None]:
    """Turns the faults a user causes into one line and a non-zero exit (no traceback).

    A locked workdir or a refused config change (`workdir.WorkdirError`), a corrupt checkpoint with no
    intact one to fall back to, a diverged run, and a full disk under `run_dir` (named with its free
    space) each end the program with `SystemExit(message)`; anything else propagates.
    """
    try:
        yield
    except TrainingDivergedError as e:
        raise SystemExit(f"training stopped: {e}") from None
    except (workdir.WorkdirError, CorruptCheckpointError) as e:
        raise SystemExit(str(e)) from None
    except Exception as e:
        if run_dir is not None and (message := workdir.disk_full_message(e, run_dir)):
            raise SystemExit(message) from None
        raise
