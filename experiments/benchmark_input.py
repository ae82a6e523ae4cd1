"""Input pipeline throughput: audio-seconds per second decoded, normalised, cropped and batched.

    python -m experiments.benchmark_input [--manifest M] [--workers 0,1,2] [--batch-size 8] [--batches 60]
    python -m experiments.benchmark_input --vs-train-step tiny,small [--workers 0,2]

For each worker count: seconds to the first batch (worker start-up) and the steady-state rate over
--batches batches after --warmup. Audio-seconds count real (attention_mask) samples at 16 kHz. 0
workers = background threads in this process.

`--vs-train-step` compares, in the same run, with what train steps consume: for each named variant
of experiments/configs/pretrain.py, the loader runs with that config's batch size and crop lengths,
then the config's train step is timed (`w2v_jax.benchmark`) on batches of the mean length the loader
produced, and `ratio=` is the loader's audio-seconds per second over the step's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experiments.configs import pretrain
from w2v_jax import benchmark
from w2v_jax.data import SAMPLE_RATE, default_manifest, make_train_iterator


def measure(manifest: str, *, num_workers: int, batch_size: int, batches: int, warmup: int, pad: bool,
            max_sample_size: int, min_sample_size: int) -> dict[str, float]:
    """Returns start-up seconds, audio-seconds per second and batches per second for one setting."""
    start = time.perf_counter()
    lengths = []
    with make_train_iterator(manifest, batch_size=batch_size, seed=0, num_workers=num_workers, pad=pad,
                             max_sample_size=max_sample_size, min_sample_size=min_sample_size) as iterator:
        for _ in range(warmup):
            next(iterator)
        startup = time.perf_counter() - start
        audio_samples = 0
        tic = time.perf_counter()
        for _ in range(batches):
            batch = next(iterator)
            audio_samples += int(np.sum(batch["attention_mask"]))
            lengths.append(batch["input_values"].shape[1])
        elapsed = time.perf_counter() - tic
    return {"startup_s": startup, "audio_s_per_s": audio_samples / SAMPLE_RATE / elapsed,
            "batches_per_s": batches / elapsed, "mean_batch_seconds": float(np.mean(lengths)) / SAMPLE_RATE}


def train_step_consumption(variant: str, batch_size: int, seconds: float, steps: int = 5) -> float:
    """Audio-seconds per second that `variant`'s train step consumes on `[batch_size, seconds]` batches."""
    settings = benchmark.BenchmarkSettings(batch_size=batch_size, seconds=seconds, steps=steps, warmup=1)
    result = benchmark.run_benchmark(pretrain.get_config(variant), settings)
    return result.ours.audio_seconds_per_second


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(default_manifest("train")), help="TSV manifest or folder")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pad", action="store_true", help="pad mode (default: crop to the batch's shortest)")
    parser.add_argument("--max-sample-size", type=int, default=250_000)
    parser.add_argument("--min-sample-size", type=int, default=32_000)
    parser.add_argument("--vs-train-step", default="", help="comma-separated pretrain config variants to compare with")
    args = parser.parse_args(argv)
    if args.vs_train_step:
        compare_with_train_steps(args)
        return
    print(f"manifest {args.manifest}, batch {args.batch_size}, {'pad' if args.pad else 'crop'} mode, "
          f"crops {args.min_sample_size}-{args.max_sample_size} samples")
    for workers in (int(w) for w in args.workers.split(",")):
        result = measure(args.manifest, num_workers=workers, batch_size=args.batch_size, batches=args.batches,
                         warmup=args.warmup, pad=args.pad, max_sample_size=args.max_sample_size,
                         min_sample_size=args.min_sample_size)
        print(f"workers={workers}: {result['audio_s_per_s']:8.1f} audio-s/s  {result['batches_per_s']:6.2f} batches/s  "
              f"(first {args.warmup} batches after {result['startup_s']:.1f} s)", flush=True)


def compare_with_train_steps(args: argparse.Namespace) -> None:
    """Loader throughput with each variant's data settings, beside that variant's train step."""
    for variant in args.vs_train_step.split(","):
        config = pretrain.get_config(variant)
        batch_size = config.train.batch_size
        rates = {}
        for workers in (int(w) for w in args.workers.split(",")):
            rates[workers] = measure(args.manifest, num_workers=workers, batch_size=batch_size, batches=args.batches,
                                     warmup=args.warmup, pad=config.data.pad,
                                     max_sample_size=config.data.max_sample_size,
                                     min_sample_size=config.data.min_sample_size)
        seconds = float(np.mean([r["mean_batch_seconds"] for r in rates.values()]))
        consumed = train_step_consumption(variant, batch_size, seconds)
        for workers, result in rates.items():
            print(f"{variant}: batch {batch_size} x {seconds:.2f} s, workers={workers}: loader "
                  f"{result['audio_s_per_s']:.1f} audio-s/s, train step {consumed:.1f} audio-s/s, "
                  f"ratio={result['audio_s_per_s'] / consumed:.1f}", flush=True)


if __name__ == "__main__":
    main()
