"""The training loop and what it runs on, knowing no task (the tasks: `w2v_jax.pretraining`, `w2v_jax.asr`).

- `train_step`: the train state and the pure, jit-compiled, sharded update over an `Objective`;
- `optim`: the optimizer and learning-rate schedules;
- `trainer`: the loop, `train_and_evaluate(config, workdir, task)`, and the `Task` protocol;
- `evaluation`: the `Evaluator` type of validation inside the loop;
- `compute`: the model FLOPs of an update and the devices' peak rates (hours seen, FLOPs, MFU);
- `health`: the failure monitor and the detectors any task can list;
- `workdir`: the run's directory (lock, config check on resume, the metrics file's start, disk full);
- `metrics`: `metrics.jsonl`, TensorBoard, how a logging window reduces metrics (`MetricRoles`), the loss-curve plot;
- `distributed`, `host_memory`: multi-host start-up, host malloc.

Importing the room imports none of them: each is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.training import (
        compute,
        distributed,
        evaluation,
        health,
        host_memory,
        metrics,
        optim,
        train_step,
        trainer,
        workdir,
    )

__all__ = [
    "compute",
    "distributed",
    "evaluation",
    "health",
    "host_memory",
    "metrics",
    "optim",
    "train_step",
    "trainer",
    "workdir",
]
