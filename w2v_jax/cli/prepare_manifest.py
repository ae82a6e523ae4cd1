"""Writes fairseq-style TSV manifests for a folder of audio (e.g. LibriSpeech's layout).

    w2v-prepare-manifest /data/LibriSpeech/train-clean-100 --out train.tsv --valid_fraction 0.01

Lengths are probed in parallel threads (headers for WAV/FLAC, full decode for MP3/OGG...). Unusable
files are logged, counted and left out; --strict stops at the first one. With --valid_fraction, a
seeded random subset goes to a valid manifest beside --out (valid.tsv, or NAME_valid.tsv). All
logic: `w2v_jax.data.manifest.prepare_manifests`.
"""

import os
from collections.abc import Sequence
from types import SimpleNamespace

from absl import app, flags

from w2v_jax.cli.launching import launch
from w2v_jax.data.manifest import prepare_manifests


def define_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> SimpleNamespace:
    """The launcher's flags on `flag_values` (`argv` is unused: no config flag)."""
    del argv
    fv = flag_values
    return SimpleNamespace(
        out=flags.DEFINE_string("out", None, "Train manifest to write.", required=True, flag_values=fv),
        valid_fraction=flags.DEFINE_float(
            "valid_fraction", 0.0, "Share of the files for the valid manifest, in [0, 1).", flag_values=fv
        ),
        seed=flags.DEFINE_integer("seed", 0, "Seed of the train/valid split.", flag_values=fv),
        workers=flags.DEFINE_integer(
            "workers", min(32, (os.cpu_count() or 1) * 4), "Threads probing lengths.", flag_values=fv
        ),
        strict=flags.DEFINE_bool("strict", False, "Stop at the first unusable file.", flag_values=fv),
    )


def main(argv: list[str], args: SimpleNamespace) -> None:
    if len(argv) != 2:
        raise app.UsageError(f"expected one audio folder, got {argv[1:]}")
    lines = prepare_manifests(
        argv[1],
        args.out.value,
        valid_fraction=args.valid_fraction.value,
        seed=args.seed.value,
        num_workers=args.workers.value,
        strict=args.strict.value,
    )
    print("\n".join(lines))


def run() -> None:
    """The `w2v-prepare-manifest` command."""
    launch(main, define_flags)


if __name__ == "__main__":
    run()
