"""wav2vec 2.0 pretraining as a task of the training loop: the contrastive objective, its validation.

- `objective`: the objective of the train step (contrastive + diversity + feature penalty, summed
  over masked frames) and the totals of its terms over several batches;
- `evaluator`: validation inside pretraining: fixed batches, masks and distractors of held-out audio;
- `task`: pretraining as a task of the loop: the step settings, the input pipeline, how its
  metrics are logged and shown, the failure detectors that watch it;
- `continued`: continued pretraining from a checkpoint (`config.init`): the source's architecture
  with the config's training fields, the parameters it gives.

Importing the room imports none of them: each is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.pretraining import continued, evaluator, objective, task

__all__ = ["continued", "evaluator", "objective", "task"]
