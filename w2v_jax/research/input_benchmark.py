"""Input pipeline throughput: audio-seconds per second decoded, normalised, cropped and batched.

`measure_loader` times one worker setting (seconds to the first batches, then the steady rate);
`loader_vs_train_step` runs the loader with a pretrain variant's data settings and times that
variant's train step (`research.benchmark`) on batches of the mean length the loader produced, so
their ratio says whether the input pipeline keeps up. Audio-seconds count real (attention_mask)
samples at 16 kHz. 0 workers = background threads in this process.

`compare_sources` times a manifest and its shard set (`data.shards`) in alternated passes, each
starting with the files' pages evicted from the page cache, and reports per pass the rate per CPU
second (the loader's processes' user + system time: what one core delivers, however loaded the
machine) and the workers' resident memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.pipeline import make_train_iterator
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
    max_tokens: int = 0,
    num_buckets: int = 8,
) -> dict[str, float]:
    """Start-up seconds (to the first `warmup` batches), audio-seconds and batches per second after them,
    and the batches' mean length in seconds."""
    start = time.perf_counter()
    lengths = []
    with make_train_iterator(
        manifest,
        batch_size=batch_size,
        max_tokens=max_tokens,
        num_buckets=num_buckets,
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


def _process_times(pid: int) -> tuple[float, float]:
    """(CPU seconds, resident MiB) of process `pid`, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss_pages = int(fields[21])
    return (int(fields[11]) + int(fields[12])) / ticks, rss_pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (grain's workers are children of a fork server, not of ours), from
    the children lists of all its threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        for child in children:
            found += [child, *_descendants(child)]
    return found


def evict_from_page_cache(paths: Sequence[str | os.PathLike]) -> None:
    """Asks the kernel to drop the cached pages of `paths` (posix_fadvise DONTNEED; the next read
    comes from the disk). Needs no privileges and leaves other files' pages alone."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure_cold_pass(
    source: str | os.PathLike, files: Sequence[str | os.PathLike], *, num_workers: int, batches: int, **loader
) -> dict[str, float]:
    """One timed pass of the loader over `source` after evicting `files` (its audio or its shards):
    audio-seconds per second and per CPU second of the loader's processes (ours and every one below
    it), and the largest worker's resident memory (MiB; ours with 0 workers). `loader`:
    make_train_iterator's batching arguments."""
    evict_from_page_cache(files)
    with make_train_iterator(source, seed=0, num_workers=num_workers, **loader) as iterator:
        next(iterator)  # the workers start
        processes = [os.getpid(), *_descendants(os.getpid())]
        before = [_process_times(pid)[0] for pid in processes]
        tic = time.perf_counter()
        audio_samples = 0
        for _ in range(batches):
            audio_samples += int(np.sum(next(iterator)["attention_mask"]))
        elapsed = time.perf_counter() - tic
        after = [_process_times(pid) for pid in processes]
    seconds = audio_samples / SAMPLE_RATE
    # At least one clock tick, the counters' resolution (a pass shorter than that has no measure).
    cpu = max(sum(a[0] - b for a, b in zip(after, before)), 1 / os.sysconf("SC_CLK_TCK"))
    return {
        "audio_s_per_s": seconds / elapsed,
        "audio_s_per_cpu_s": seconds / cpu,
        # The largest process below ours (beside the workers run a fork server and a resource tracker).
        "worker_rss_mib": max(rss for _, rss in (after[1:] or after)),
    }


def source_files(source: str | os.PathLike) -> list[str]:
    """The files a manifest's rows read (each once), or a shard set's shards."""
    rows = load_manifest(source)
    if rows.shard_rows is not None:
        return list(rows.shard_rows.files)
    return sorted({str(rows.file_path(i)) for i in range(len(rows))})


def compare_sources(
    sources: dict[str, tuple[str | os.PathLike, Sequence[str | os.PathLike]]],
    *,
    rounds: int,
    num_workers: int,
    batches: int,
    **loader,
) -> dict[str, dict[str, float]]:
    """`measure_cold_pass` of each source (name -> (manifest or shard set, its files)), alternated for
    `rounds` rounds: the medians of each figure per source."""
    passes: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    for _ in range(rounds):
        for name, (source, files) in sources.items():
            passes[name].append(measure_cold_pass(source, files, num_workers=num_workers, batches=batches, **loader))
    return {
        name: {key: float(np.median([p[key] for p in results])) for key in results[0]}
        for name, results in passes.items()
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


def batching_report(
    manifest: str | os.PathLike,
    *,
    batch_size: int,
    max_tokens: int,
    pad: bool,
    max_sample_size: int,
    min_sample_size: int,
    num_buckets: int,
    batch_multiple: int = 1,
) -> dict[str, float]:
    """One epoch's batches as planned (nothing decoded): how much of what the device computes is audio.

    Returns:
      batches and mean rows per batch; mean and max samples per batch (what a device must hold);
      `audio_share`: real audio samples over the batches' samples (pad mode: the rest is padding;
      crop mode: 1); `kept_share`: the cropped rows' samples over the utterances' samples (crop mode:
      the rest is cut away; pad mode: utterances longer than max_sample_size lose their tail);
      `budget_audio_share`: real audio over the sample budget, batches x the largest batch (what a
      device must be sized for; under a token budget, at most max_tokens);
      `utterances_used`: share of the usable utterances an epoch reads (bucket remainders wait);
      `compiles`: distinct batch shapes.
    """
    iterator = make_train_iterator(
        manifest,
        batch_size=batch_size,
        max_tokens=max_tokens,
        batch_multiple=batch_multiple,
        seed=0,
        num_workers=0,
        pad=pad,
        max_sample_size=max_sample_size,
        min_sample_size=min_sample_size,
        num_buckets=num_buckets,
    )
    rows, samples, audio_samples, utterance_samples, shapes = [], [], 0, 0, set()
    for number in range(iterator.batches_per_epoch):
        length, files = iterator.planned_batch(number)
        true = iterator.lengths_16k[files]
        kept = np.minimum(true, max_sample_size) if pad else np.full(len(files), length)
        rows.append(len(files))
        samples.append(len(files) * length)
        audio_samples += int(kept.sum())
        utterance_samples += int(true.sum())
        shapes.add((len(files), length))
    return {
        "batches": len(rows),
        "mean_rows": float(np.mean(rows)),
        "mean_samples": float(np.mean(samples)),
        "max_samples": float(np.max(samples)),
        "audio_share": audio_samples / float(np.sum(samples)),
        "kept_share": audio_samples / utterance_samples,
        "budget_audio_share": audio_samples / (len(samples) * float(np.max(samples))),
        "utterances_used": float(np.sum(rows)) / iterator.num_usable,
        "compiles": len(shapes),
    }


def compare_batching(
    manifest: str | os.PathLike,
    *,
    max_tokens: int,
    batch_multiple: int,
    pad: bool,
    max_sample_size: int,
    min_sample_size: int,
    num_buckets: int,
) -> list[str]:
    """`batching_report` of a token budget beside fixed-count batches of the same mean rows (rounded
    to `batch_multiple`): one line each."""
    common: dict[str, Any] = dict(
        pad=pad,
        max_sample_size=max_sample_size,
        min_sample_size=min_sample_size,
        num_buckets=num_buckets,
        batch_multiple=batch_multiple,
    )
    budget = batching_report(manifest, batch_size=1, max_tokens=max_tokens, **common)
    fixed_rows = max(batch_multiple, round(budget["mean_rows"] / batch_multiple) * batch_multiple)
    fixed = batching_report(manifest, batch_size=fixed_rows, max_tokens=0, **common)
    lines = []
    for name, report in ((f"max_tokens={max_tokens}", budget), (f"batch_size={fixed_rows}", fixed)):
        lines.append(
            f"{'pad' if pad else 'crop'} {name}: {report['batches']} batches of {report['mean_rows']:.1f} rows, "
            f"{report['mean_samples'] / 1e6:.2f}M samples on average, {report['max_samples'] / 1e6:.2f}M at most; "
            f"audio {report['budget_audio_share']:.1%} of the sample budget (batches x the largest), "
            f"{report['audio_share']:.1%} of the batches' samples, {report['kept_share']:.1%} of the utterances' "
            f"audio kept; {report['utterances_used']:.1%} of the utterances read per epoch; "
            f"{report['compiles']} compiles"
        )
    return lines


def workers_per_gpu(audio_s_per_s: float, num_workers: int, gpu_rate: float) -> float:
    """CPU workers one GPU needs to be fed `gpu_rate` audio-seconds per second, from a loader rate
    measured with `num_workers` workers (0 = threads in the main process, counted as one)."""
    return gpu_rate / (audio_s_per_s / max(num_workers, 1))
