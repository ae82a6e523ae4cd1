"""Writes fairseq-style TSV manifests for a folder of audio (e.g. LibriSpeech's layout).

    python -m experiments.prepare_manifest /data/LibriSpeech/train-clean-100 --out train.tsv --valid-fraction 0.01

Lengths are probed in parallel threads (headers for WAV/FLAC, full decode for MP3/OGG...). Unusable
files are logged, counted and left out; --strict stops at the first one. With --valid-fraction, a
seeded random subset goes to a valid manifest beside --out (valid.tsv, or NAME_valid.tsv). All
logic: `w2v_jax.data.manifest.prepare_manifests`.
"""

import os

from absl import app, flags

from w2v_jax.cli import launch
from w2v_jax.data.manifest import prepare_manifests

_OUT = flags.DEFINE_string("out", None, "Train manifest to write.", required=True)
_VALID_FRACTION = flags.DEFINE_float("valid-fraction", 0.0, "Share of the files for the valid manifest, in [0, 1).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the train/valid split.")
_WORKERS = flags.DEFINE_integer("workers", min(32, (os.cpu_count() or 1) * 4), "Threads probing lengths.")
_STRICT = flags.DEFINE_bool("strict", False, "Stop at the first unusable file.")


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError(f"expected one audio folder, got {argv[1:]}")
    lines = prepare_manifests(
        argv[1], _OUT.value, valid_fraction=_VALID_FRACTION.value, seed=_SEED.value,
        num_workers=_WORKERS.value, strict=_STRICT.value,
    )
    print("\n".join(lines))


def run() -> None:
    """The `w2v-prepare-manifest` command."""
    launch(main)


if __name__ == "__main__":
    run()
