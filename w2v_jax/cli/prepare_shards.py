"""Writes a manifest's audio into a shard set: ArrayRecord files read by random access through grain.

    w2v-prepare-shards /data/librilight/train.tsv /data/librilight/train_shards [--shard_mb 256]
    w2v-prepare-shards /data/LibriSpeech/train-100.tsv /data/ls100_shards --labels ltr

The audio is kept as stored (FLAC or WAV bytes, not re-encoded) with each row's id, length and, with
--labels, its transcripts (the label files beside the manifest: wrd, ltr, phn). Every file is read as
training reads it: unusable files are logged, counted and kept in the index with their reason. A
stopped preparation continues where it stopped when run again; run on a finished set, the command
verifies every shard against the set's checksum. Name the set's folder wherever a config names a
manifest (data.train_manifest, data.train_manifests, data.valid_manifest). All logic:
`w2v_jax.data.shard_preparation.prepare_shards`; the layout: `w2v_jax.data.shards`, docs/data.md.
"""

import os
import time
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli.launching import launch
from w2v_jax.data.shard_preparation import prepare_shards


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        shard_mb=flags.DEFINE_float("shard_mb", 256.0, "MiB of audio per shard.", flag_values=fv),
        labels=flags.DEFINE_list(
            "labels", [], "Label extensions beside the manifest to keep (wrd, ltr, phn).", flag_values=fv
        ),
        workers=flags.DEFINE_integer(
            "workers", min(32, (os.cpu_count() or 1) * 4), "Threads reading and checking files.", flag_values=fv
        ),
        allow_outside_root=flags.DEFINE_bool(
            "allow_outside_root", False, "Accept manifest paths outside its root.", flag_values=fv
        ),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) != 3:
        raise app.UsageError(f"expected MANIFEST OUT, got {argv[1:]}")
    start = time.perf_counter()
    lines = prepare_shards(
        argv[1],
        argv[2],
        shard_mb=args.shard_mb.value,
        labels=args.labels.value,
        num_workers=args.workers.value,
        allow_outside_root=args.allow_outside_root.value,
    )
    print("\n".join(lines))
    print(f"{time.perf_counter() - start:.1f} s")


def run() -> None:
    """The `w2v-prepare-shards` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
