"""wav2vec 2.0 pretraining as a task of the training loop: the contrastive objective, its validation.

- `objective`: the objective of the train step (contrastive + diversity + feature penalty, summed
  over masked frames) and the totals of its terms over several batches;
- `evaluator`: validation inside pretraining: fixed batches, masks and distractors of held-out audio;
- `task`: pretraining as a task of the loop: the step settings, the input pipeline, how its
  metrics are logged and shown, the failure detectors that watch it.
"""
