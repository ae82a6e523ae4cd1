"""Input pipeline throughput: audio-seconds per second decoded, normalised, cropped and batched.

    w2v-benchmark-input [--manifest M] [--workers 0,1,2] [--batch_size 8] [--timed_batches 60]
    w2v-benchmark-input --vs_train_step tiny,small [--workers 0,2]

For each worker count: seconds to the first batch (worker start-up) and the steady-state rate over
--timed_batches batches after --warmup_batches. Audio-seconds count real (attention_mask) samples at 16 kHz. 0
workers = background threads in this process.

`--librispeech_like DIR` first writes (once) a generated corpus with LibriSpeech's utterance lengths
there (`w2v_jax.data.generated`) and measures on it. `--max_tokens` batches by a token budget;
`--batching` prints, instead of timing, one epoch's planned batches under that budget beside
fixed-count batches of the same mean rows: the share of the sample budget that is real audio and the
number of compiles. `--gpu_rate` (default NVIDIA's BASE rate on an A100 in bf16, 750 audio-s/s) turns
each rate into the CPU workers one GPU needs.

`--shards DIR` compares the manifest with its shard set DIR (`w2v-prepare-shards`; prepared there
first, timed, when DIR holds none): --rounds alternated passes of each with --workers' first count,
every pass starting with the files' pages evicted from the page cache (posix_fadvise), medians of
the rate, the rate per CPU second of the loader's processes (what one core delivers), the cores one
GPU needs at --gpu_rate and the workers' resident memory.

`--vs_train_step` compares, in the same run, with what train steps consume: for each named variant
of the pretrain config (`w2v_jax/configs/pretrain.py`), the loader runs with that config's batch size and crop lengths,
then the config's train step is timed (`w2v_jax.research.benchmark`) on batches of the mean length
the loader produced, and `ratio=` is the loader's audio-seconds per second over the step's. All
logic: `w2v_jax.research.input_benchmark`.
"""

import os
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
from absl import app, flags

from w2v_jax.cli.launching import launch
from w2v_jax.configs import pretrain
from w2v_jax.data import audio, default_manifest, generated, shards
from w2v_jax.data.audio import SAMPLE_RATE
from w2v_jax.data.manifest import load_manifest
from w2v_jax.data.shard_preparation import prepare_shards
from w2v_jax.research import input_benchmark


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        manifest=flags.DEFINE_string(
            "manifest", str(default_manifest("train")), "TSV manifest or folder.", flag_values=fv
        ),
        workers=flags.DEFINE_list("workers", ["0", "1", "2"], "Comma-separated worker counts.", flag_values=fv),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Utterances per batch.", flag_values=fv),
        timed_batches=flags.DEFINE_integer("timed_batches", 60, "Timed batches.", flag_values=fv),
        warmup_batches=flags.DEFINE_integer("warmup_batches", 3, "Untimed batches first.", flag_values=fv),
        pad=flags.DEFINE_bool("pad", False, "Pad mode (default: crop to the batch's shortest).", flag_values=fv),
        max_sample_size=flags.DEFINE_integer("max_sample_size", 250_000, "Longest crop in samples.", flag_values=fv),
        min_sample_size=flags.DEFINE_integer(
            "min_sample_size", 32_000, "Shortest utterance kept, in samples.", flag_values=fv
        ),
        max_tokens=flags.DEFINE_integer(
            "max_tokens", 0, "Token budget: samples per batch (0: --batch_size rows).", flag_values=fv
        ),
        num_buckets=flags.DEFINE_integer("num_buckets", 8, "Crop / pad lengths.", flag_values=fv),
        batch_multiple=flags.DEFINE_integer(
            "batch_multiple", 8, "--batching: rows rounded to this (devices x accumulation).", flag_values=fv
        ),
        batching=flags.DEFINE_bool(
            "batching", False, "Report the planned batches' audio share (token budget vs fixed).", flag_values=fv
        ),
        librispeech_like=flags.DEFINE_string(
            "librispeech_like",
            "",
            "Folder of a generated LibriSpeech-like corpus (written if missing).",
            flag_values=fv,
        ),
        librispeech_like_rows=flags.DEFINE_integer(
            "librispeech_like_rows", 5000, "Manifest rows of the generated corpus.", flag_values=fv
        ),
        librispeech_like_files=flags.DEFINE_integer(
            "librispeech_like_files", 200, "Distinct files of the generated corpus.", flag_values=fv
        ),
        librispeech_like_rate=flags.DEFINE_integer(
            "librispeech_like_rate", SAMPLE_RATE, "Sample rate of the generated files.", flag_values=fv
        ),
        gpu_rate=flags.DEFINE_float(
            "gpu_rate", 750.0, "Audio-s/s one GPU trains on (NVIDIA, BASE, A100, bf16).", flag_values=fv
        ),
        shards=flags.DEFINE_string(
            "shards", "", "Shard set of --manifest to compare with it (prepared if missing).", flag_values=fv
        ),
        rounds=flags.DEFINE_integer("rounds", 3, "--shards: alternated passes of each.", flag_values=fv),
        vs_train_step=flags.DEFINE_list(
            "vs_train_step", [], "Comma-separated pretrain config variants to compare with.", flag_values=fv
        ),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workers = [int(w) for w in args.workers.value]
    manifest = args.manifest.value
    if args.librispeech_like.value:
        manifest = generated.librispeech_like_manifest(
            args.librispeech_like.value,
            num_rows=args.librispeech_like_rows.value,
            num_files=args.librispeech_like_files.value,
            sample_rate=args.librispeech_like_rate.value,
        )
    if args.batching.value:
        lines = input_benchmark.compare_batching(
            manifest,
            max_tokens=args.max_tokens.value,
            batch_multiple=args.batch_multiple.value,
            pad=args.pad.value,
            max_sample_size=args.max_sample_size.value,
            min_sample_size=args.min_sample_size.value,
            num_buckets=args.num_buckets.value,
        )
        print("\n".join(lines), flush=True)
        return
    if args.shards.value:
        print("\n".join(compare_with_shards(manifest, args.shards.value, workers[0], args)), flush=True)
        return
    if args.vs_train_step.value:
        for variant in args.vs_train_step.value:
            lines = input_benchmark.loader_vs_train_step(
                manifest,
                variant,
                pretrain.get_config(variant),
                workers,
                batches=args.timed_batches.value,
                warmup=args.warmup_batches.value,
            )
            print("\n".join(lines), flush=True)
        return
    batches = f"max_tokens {args.max_tokens.value}" if args.max_tokens.value else f"batch {args.batch_size.value}"
    print(
        f"manifest {manifest}, {batches}, {'pad' if args.pad.value else 'crop'} mode, "
        f"crops {args.min_sample_size.value}-{args.max_sample_size.value} samples"
    )
    for count in workers:
        result = input_benchmark.measure_loader(
            manifest,
            num_workers=count,
            batches=args.timed_batches.value,
            warmup=args.warmup_batches.value,
            **loader_settings(args),
        )
        print(
            f"workers={count}: {result['audio_s_per_s']:8.1f} audio-s/s  {result['batches_per_s']:6.2f} batches/s  "
            f"(first {args.warmup_batches.value} batches after {result['startup_s']:.1f} s); "
            f"{input_benchmark.workers_per_gpu(result['audio_s_per_s'], count, args.gpu_rate.value):.1f} workers "
            f"per GPU at {args.gpu_rate.value:g} audio-s/s",
            flush=True,
        )


def loader_settings(args: SimpleNamespace) -> dict[str, Any]:
    """The flags that say how the loader batches (`make_train_iterator`'s arguments)."""
    return {
        "batch_size": args.batch_size.value,
        "max_tokens": args.max_tokens.value,
        "num_buckets": args.num_buckets.value,
        "pad": args.pad.value,
        "max_sample_size": args.max_sample_size.value,
        "min_sample_size": args.min_sample_size.value,
    }


def compare_with_shards(manifest: str, shards_dir: str, num_workers: int, args: SimpleNamespace) -> list[str]:
    """Prepares the shard set when missing (timed), then `input_benchmark.compare_sources`."""
    lines = []
    if shards.descriptor_path(shards_dir) is None:
        start = time.perf_counter()
        prepare_shards(manifest, shards_dir)
        elapsed = time.perf_counter() - start
        rows = load_manifest(shards_dir)
        if rows.shard_rows is None:
            raise ValueError(f"{shards_dir}: prepare_shards wrote no shard set")
        audio_s = float(np.sum(rows.lengths_16k())) / audio.SAMPLE_RATE
        mib = sum(os.path.getsize(f) for f in rows.shard_rows.files) / (1 << 20)
        lines.append(
            f"preparation: {len(rows)} rows, {mib:.0f} MiB in {elapsed:.1f} s: {len(rows) / elapsed:.0f} rows/s, "
            f"{mib / elapsed:.1f} MiB/s, {audio_s / elapsed:.0f} audio-s/s"
        )
    sources: dict[str, tuple[str | os.PathLike, Sequence[str | os.PathLike]]] = {
        "files": (manifest, input_benchmark.source_files(manifest))
    }
    sources["shards"] = (shards_dir, input_benchmark.source_files(shards_dir))
    medians = input_benchmark.compare_sources(
        sources,
        rounds=args.rounds.value,
        num_workers=num_workers,
        batches=args.timed_batches.value,
        **loader_settings(args),
    )
    for name, result in medians.items():
        lines.append(
            f"{name}: workers={num_workers}, medians of {args.rounds.value} cold passes: "
            f"{result['audio_s_per_s']:.1f} audio-s/s, {result['audio_s_per_cpu_s']:.1f} audio-s per CPU-s "
            f"({args.gpu_rate.value / result['audio_s_per_cpu_s']:.2f} cores per GPU at {args.gpu_rate.value:g} "
            f"audio-s/s), {result['worker_rss_mib']:.0f} MiB per worker (the largest)"
        )
    return lines


def run() -> None:
    """The `w2v-benchmark-input` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
