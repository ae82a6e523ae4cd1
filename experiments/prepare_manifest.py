"""Writes fairseq-style TSV manifests for a folder of audio (e.g. LibriSpeech's layout).

    python -m experiments.prepare_manifest /data/LibriSpeech/train-clean-100 --out train.tsv --valid-fraction 0.01

Lengths are probed in parallel threads (headers for WAV/FLAC, full decode for MP3/OGG...). Unusable
files are logged, counted and left out; --strict stops at the first one. With --valid-fraction, a
seeded random subset goes to a valid manifest beside --out (valid.tsv, or NAME_valid.tsv).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from w2v_jax.data import scan_folder, write_manifest
from w2v_jax.data.skips import BadInputError


def valid_path(out: Path) -> Path:
    """valid.tsv beside train.tsv; NAME_valid.tsv beside any other NAME.tsv."""
    return out.with_name("valid.tsv" if out.name == "train.tsv" else f"{out.stem}_valid{out.suffix or '.tsv'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="train manifest to write")
    parser.add_argument("--valid-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/valid split")
    parser.add_argument("--workers", type=int, default=min(32, (os.cpu_count() or 1) * 4))
    parser.add_argument("--strict", action="store_true", help="stop at the first unusable file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not 0.0 <= args.valid_fraction < 1.0:
        parser.error(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")

    manifest = scan_folder(args.folder, num_workers=args.workers, progress=True)
    for index, (reason, detail) in sorted(manifest.known_bad.items()):
        if args.strict:
            raise BadInputError(f"{manifest.file_path(index)}: {reason} ({detail})")
        logging.warning("skipping %s: %s (%s)", manifest.file_path(index), reason, detail)
    good = np.asarray([i for i in range(len(manifest)) if i not in manifest.known_bad], np.int64)
    num_valid = int(round(args.valid_fraction * len(good)))
    in_valid = np.zeros(len(good), bool)
    in_valid[np.random.default_rng(args.seed).permutation(len(good))[:num_valid]] = True
    splits = {args.out: good[~in_valid]}
    if args.valid_fraction > 0:
        splits[valid_path(args.out)] = good[in_valid]
    for path, indices in splits.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(path, manifest.root, [manifest.paths[i] for i in indices], manifest.num_samples[indices])
        hours = manifest.num_samples[indices].sum() / 16_000 / 3600
        print(f"{path}: {len(indices)} files, {hours:.2f} h")
    if manifest.known_bad:
        reasons = [reason for reason, _ in manifest.known_bad.values()]
        print(f"skipped {len(reasons)} unusable files: "
              + ", ".join(f"{r}: {reasons.count(r)}" for r in sorted(set(reasons))))


if __name__ == "__main__":
    main()
