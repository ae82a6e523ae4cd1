"""Training-step benchmark: w2v_jax beside transformers' PyTorch model, same config, batch and masks.

    python -m experiments.benchmark --config=experiments/configs/pretrain.py:small --batch=4 --seconds=4 --vs-pytorch
    python -m experiments.benchmark --config=experiments/configs/finetune.py:tiny --vs-pytorch
    python -m experiments.benchmark --config=experiments/configs/pretrain.py:base --steps=5 --precision=bfloat16
    python -m experiments.benchmark --config=experiments/configs/pretrain.py:base --remat-memory
    python -m experiments.benchmark --config=experiments/configs/pretrain.py:base --warmup=2 --steps=3 --profile=/tmp/prof

Prints one line per framework (median step time, audio-seconds per second, model FLOPs per step,
achieved FLOP/s, MFU against a matmul peak measured in the same run, compile time, memory), then
`ratio=X`: our throughput over the reference's. A fine-tune config times the CTC fine-tuning step
(`Wav2Vec2ForCTC`, labels, the frozen parameters and optimizer of the config) against
transformers' `Wav2Vec2ForCTC` with torch's AdamW. `--remat-memory` compiles the step without and
with rematerialisation and prints XLA's temporary bytes of each, for the forward + backward pass
(activation memory) and for the whole train step. `--profile` traces our step with `jax.profiler`
and prints its busiest XLA operations. All logic: `w2v_jax.research.benchmark` and `w2v_jax.research.profiling`.
"""

from absl import app, flags

from w2v_jax import host_memory
from w2v_jax.cli import launch
from w2v_jax.configs import define_config_flag
from w2v_jax.research import benchmark, profiling

_CONFIG = define_config_flag("config", "pretrain.py:tiny", "Pretrain or fine-tune config file, `path:variant`.")
_BATCH = flags.DEFINE_integer("batch", 4, "Utterances per step.")
_SECONDS = flags.DEFINE_float("seconds", 4.0, "Seconds of 16 kHz audio per utterance.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after the warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first.")
_PRECISION = flags.DEFINE_enum("precision", "float32", sorted(benchmark.PRECISIONS), "Computation dtype.")
_REMAT = flags.DEFINE_bool("remat", False, "Rematerialise the Transformer layers.")
_SEED = flags.DEFINE_integer("seed", 0, "Parameters, waveforms and step key.")
_VS_PYTORCH = flags.DEFINE_bool("vs-pytorch", False, "Also time transformers' model with torch's AdamW.")
_REMAT_MEMORY = flags.DEFINE_bool("remat-memory", False, "Only compare XLA's temporary bytes without/with remat.")
_PROFILE = flags.DEFINE_string("profile", None, "Only trace our step into this folder and print its busiest XLA ops.")
_HOST_MALLOC = flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(_HOST_MALLOC.value)
    settings = benchmark.BenchmarkSettings(
        batch_size=_BATCH.value,
        seconds=_SECONDS.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        precision=_PRECISION.value,
        remat=_REMAT.value,
        seed=_SEED.value,
    )
    if _REMAT_MEMORY.value:
        for line in benchmark.remat_memory(_CONFIG.value, settings):
            print(line, flush=True)
        return
    if _PROFILE.value:
        for line in profiling.profile_train_step(_CONFIG.value, settings, _PROFILE.value):
            print(line, flush=True)
        return
    result = benchmark.run_benchmark(_CONFIG.value, settings, vs_pytorch=_VS_PYTORCH.value)
    for line in result.lines():
        print(line, flush=True)


def run() -> None:
    """The `w2v-benchmark` command."""
    launch(main)


if __name__ == "__main__":
    run()
