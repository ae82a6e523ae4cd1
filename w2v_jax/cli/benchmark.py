"""Training-step benchmark: w2v_jax beside transformers' PyTorch model, same config, batch and masks.

    w2v-benchmark --config=pretrain.py:small --batch=4 --seconds=4 --vs_pytorch
    w2v-benchmark --config=finetune.py:tiny --vs_pytorch
    w2v-benchmark --config=pretrain.py:base --timed_steps=5 --precision=bfloat16
    w2v-benchmark --config=pretrain.py:base --remat_memory
    w2v-benchmark --config=pretrain.py:base --precision=bfloat16 --batch=0 \
        --seconds=15 --vs_pytorch
    w2v-benchmark --config=pretrain.py:base --warmup_steps=2 --timed_steps=3 \
        --profile=/tmp/prof

Prints one line per framework (median step time, audio-seconds per second, model FLOPs per step,
achieved FLOP/s, MFU against a matmul peak measured in the same run, compile time, memory), then
`ratio=X`: our throughput over the reference's. A fine-tune config times the CTC fine-tuning step
(`Wav2Vec2ForCTC`, labels, the frozen parameters and optimizer of the config) against
transformers' `Wav2Vec2ForCTC` with torch's AdamW. `--remat_memory` compiles the step without and
with rematerialisation and prints XLA's temporary bytes of each, for the forward + backward pass
(activation memory) and for the whole train step. `--profile` traces our step with `jax.profiler`
and prints its busiest XLA operations. `--batch=0` fills the device: the largest batch estimated to
fit in `--fill_fraction` of its memory (`benchmark.fill_batch`; default 0.8, 0.3 with `--vs_pytorch`,
which shares the device with the reference). All logic: `w2v_jax.research.benchmark` and `w2v_jax.research.profiling`.
"""

import dataclasses
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli.config_flag import define_config_flag
from w2v_jax.cli.launching import define_host_malloc_flag, launch
from w2v_jax.research import benchmark, profiling
from w2v_jax.training import host_memory


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv`: the command line, for the config's overrides)."""
    fv = flag_values
    return SimpleNamespace(
        config=define_config_flag(
            "config", "pretrain.py:tiny", "Pretrain or fine-tune config file, `path:variant`.", fv, argv
        ),
        batch=flags.DEFINE_integer(
            "batch", 4, "Utterances per step; 0: the batch that fills the device.", flag_values=fv
        ),
        fill_fraction=flags.DEFINE_float(
            "fill_fraction",
            None,
            "With --batch=0: the device memory to fill (0.8; 0.3 with --vs_pytorch).",
            flag_values=fv,
        ),
        seconds=flags.DEFINE_float("seconds", 4.0, "Seconds of 16 kHz audio per utterance.", flag_values=fv),
        timed_steps=flags.DEFINE_integer("timed_steps", 5, "Timed steps (after the warm-up).", flag_values=fv),
        warmup_steps=flags.DEFINE_integer("warmup_steps", 2, "Untimed steps first.", flag_values=fv),
        precision=flags.DEFINE_enum(
            "precision", "float32", sorted(benchmark.PRECISIONS), "Computation dtype.", flag_values=fv
        ),
        remat=flags.DEFINE_bool("remat", False, "Rematerialise the Transformer layers.", flag_values=fv),
        seed=flags.DEFINE_integer("seed", 0, "Parameters, waveforms and step key.", flag_values=fv),
        vs_pytorch=flags.DEFINE_bool(
            "vs_pytorch", False, "Also time transformers' model with torch's AdamW.", flag_values=fv
        ),
        remat_memory=flags.DEFINE_bool(
            "remat_memory", False, "Only compare XLA's temporary bytes without/with remat.", flag_values=fv
        ),
        profile=flags.DEFINE_string(
            "profile", None, "Only trace our step into this folder and print its busiest XLA ops.", flag_values=fv
        ),
        host_malloc=define_host_malloc_flag(fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    host_memory.configure(args.host_malloc.value)
    settings = benchmark.BenchmarkSettings(
        batch_size=args.batch.value or 1,
        seconds=args.seconds.value,
        steps=args.timed_steps.value,
        warmup=args.warmup_steps.value,
        precision=args.precision.value,
        remat=args.remat.value,
        seed=args.seed.value,
    )
    if args.batch.value == 0:
        fraction = args.fill_fraction.value or (0.3 if args.vs_pytorch.value else 0.8)
        batch, line = benchmark.fill_batch(args.config.value, settings, fraction)
        print(line, flush=True)
        settings = dataclasses.replace(settings, batch_size=batch)
    if args.remat_memory.value:
        for line in benchmark.remat_memory(args.config.value, settings):
            print(line, flush=True)
        return
    if args.profile.value:
        for line in profiling.profile_train_step(args.config.value, settings, args.profile.value):
            print(line, flush=True)
        return
    result = benchmark.run_benchmark(args.config.value, settings, vs_pytorch=args.vs_pytorch.value)
    for line in result.lines():
        print(line, flush=True)


def run() -> None:
    """The `w2v-benchmark` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
