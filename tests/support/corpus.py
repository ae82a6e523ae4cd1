"""A small generated corpus like the embedded one, shared by the probe and launcher tests."""

import json

import numpy as np
import soundfile

from w2v_jax.data import write_manifest


def make_corpus(folder, languages=("en", "fr"), per_language=3, seconds=1.2):
    """A small corpus like the embedded one: FLACs, a manifest and metadata with alignments."""
    rng = np.random.RandomState(0)
    paths, lengths, records = [], [], []
    for language in languages:
        for i in range(per_language):
            n = int(seconds * 16000) + 800 * i
            path = f"{language}_{i}.flac"
            soundfile.write(folder / path, (rng.randn(n) * 0.1).astype(np.float32), 16000)
            cuts = np.linspace(0, n, 9).astype(int)
            records.append(
                {
                    "path": path,
                    "language": language,
                    "voice": f"{language}+{('f1', 'm1', 'm2')[i % 3]}",
                    "phonemes": [f"{language}{k % 3}" for k in range(8)],
                    "phoneme_starts": cuts[:-1].tolist(),
                    "phoneme_ends": cuts[1:].tolist(),
                }
            )
            paths.append(path)
            lengths.append(n)
    write_manifest(folder / "train.tsv", folder, paths, lengths)
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return folder / "train.tsv"
