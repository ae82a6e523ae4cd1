"""Research tools around the core library: they use the model and the train step, nothing uses them.

- `torch_twin`: transformers' model trained with our recipe, step by step (the PyTorch twin);
- `compare`: our loss curves beside the twin's, and their gaps;
- `benchmark`: our train step timed beside the twin's; `input_benchmark`: the input pipeline's
  throughput beside what train steps consume; `profiling`: the busiest XLA ops of the step;
- `validation`: the pretraining objective on held-out audio; `probes`: linear probes and `evaluate`;
- `sweep`: grids of training runs and their results; `plotting`: the figures.

Importing the room imports none of them: each is imported when first read.
"""

from w2v_jax.lazy_exports import lazy_exports

with lazy_exports(globals()):
    from w2v_jax.research import (
        benchmark,
        compare,
        input_benchmark,
        plotting,
        probes,
        profiling,
        sweep,
        torch_twin,
        transcription_benchmark,
        validation,
    )

__all__ = [
    "benchmark",
    "compare",
    "input_benchmark",
    "plotting",
    "probes",
    "profiling",
    "sweep",
    "torch_twin",
    "transcription_benchmark",
    "validation",
]
