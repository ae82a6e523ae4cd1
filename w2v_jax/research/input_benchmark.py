"""Input pipeline throughput: audio-seconds per second decoded, normalised, cropped and batched.

`measure_loader` times one worker setting (seconds to the first batches, then the steady rate);
`loader_vs_train_step` runs the loader with a pretrain variant's data settings and times that
variant's train step (`research.benchmark`) on batches of the mean length the loader produced, so
their ratio says whether the input pipeline keeps up. Audio-seconds count real (attention_mask)
samples at 16 kHz. 0 workers = background threads in this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ml_collections
import numpy as np

from w2v_jax.data import SAMPLE_RATE, make_train_iterator
from w2v_jax.research import benchmark


def measure_loader(
    manifest: str | os.PathLike,
    *,
    num_workers: int,
    batch_size: int,
    batches: int,
    warmup: int,
    pad: bool,
    max_sample_size: int,
    min_sample_size: int,
) -> dict[str, float]:
    """Start-up seconds (to the first `warmup` batches), audio-seconds and batches per second after them,
    and the batches' mean length in seconds."""
    start = time.perf_counter()
    lengths = []
    with make_train_iterator(
        manifest,
        batch_size=batch_size,
        seed=0,
        num_workers=num_workers,
        pad=pad,
        max_sample_size=max_sample_size,
        min_sample_size=min_sample_size,
    ) as iterator:
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
    return {
        "startup_s": startup,
        "audio_s_per_s": audio_samples / SAMPLE_RATE / elapsed,
        "batches_per_s": batches / elapsed,
        "mean_batch_seconds": float(np.mean(lengths)) / SAMPLE_RATE,
    }


def train_step_consumption(config: ml_collections.ConfigDict, batch_size: int, seconds: float, steps: int = 5) -> float:
    """Audio-seconds per second that a pretrain config's train step consumes on `[batch_size, seconds]` batches."""
    settings = benchmark.BenchmarkSettings(batch_size=batch_size, seconds=seconds, steps=steps, warmup=1)
    return benchmark.run_benchmark(config, settings).ours.audio_seconds_per_second


def loader_vs_train_step(
    manifest: str | os.PathLike,
    variant: str,
    config: ml_collections.ConfigDict,
    workers: Sequence[int],
    *,
    batches: int,
    warmup: int,
) -> list[str]:
    """The loader with `config`'s data settings for each worker count, beside `config`'s train step.

    Returns:
      one line per worker count, ending `ratio=` loader audio-seconds per second over the step's.
    """
    batch_size = config.train.batch_size
    rates = {
        count: measure_loader(
            manifest,
            num_workers=count,
            batch_size=batch_size,
            batches=batches,
            warmup=warmup,
            pad=config.data.pad,
            max_sample_size=config.data.max_sample_size,
            min_sample_size=config.data.min_sample_size,
        )
        for count in workers
    }
    seconds = float(np.mean([r["mean_batch_seconds"] for r in rates.values()]))
    consumed = train_step_consumption(config, batch_size, seconds)
    return [
        f"{variant}: batch {batch_size} x {seconds:.2f} s, workers={count}: loader "
        f"{result['audio_s_per_s']:.1f} audio-s/s, train step {consumed:.1f} audio-s/s, "
        f"ratio={result['audio_s_per_s'] / consumed:.1f}"
        for count, result in rates.items()
    ]
