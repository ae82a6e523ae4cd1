"""Research tools around the core library: they use the model and the train step, nothing uses them.

- `torch_twin`: transformers' model trained with our recipe, step by step (the PyTorch twin);
- `compare`: our loss curves beside the twin's, and their gaps;
- `benchmark`: our train step timed beside the twin's; `input_benchmark`: the input pipeline's
  throughput beside what train steps consume; `profiling`: the busiest XLA ops of the step;
- `validation`: the pretraining objective on held-out audio; `probes`: linear probes and `evaluate`;
- `sweep`: grids of training runs and their results; `plotting`: the figures.
"""
