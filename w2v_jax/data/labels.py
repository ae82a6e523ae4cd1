"""Transcripts for CTC fine-tuning: fairseq label files beside a manifest, normalised and encoded.

fairseq's convention, so existing manifests work: beside `X.tsv` (a shard set's `index.tsv`), one
line per manifest row in the same order,
- `X.wrd`: the transcript (words);
- `X.ltr`: its letters separated by spaces, `|` after every word (`t h e | c a t |`); derived from
  `X.wrd` when missing;
- `X.phn`: space-separated phones (a second label set).

One text normalisation (`normalize_text`) is applied to every word and letter label and to the
WER/CER references derived from them: Unicode NFC, lower case, `’` -> `'`, punctuation (Unicode
category P*) other than the apostrophe and the word delimiter `|` replaced by a space, whitespace
collapsed. A `.ltr` file is read back to words, normalised and re-spelled, so it obeys the same rule.
Phones are only NFC-normalised (they are symbols, not text).

`LabelSet` encodes every row once, up front, and decides which rows CTC cannot use (counted skips,
each logged once): an empty transcript, or one needing more frames than the utterance has.
"""

from __future__ import annotations

import collections
import logging
import os
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from w2v_jax.data import shards
from w2v_jax.data.manifest import Manifest, open_shards, read_manifest
from w2v_jax.data.vocabulary import Vocabulary
from w2v_jax.json_files import read_json_lines

logger = logging.getLogger("w2v_jax.data")

LabelKind = Literal["ltr", "phn"]
EMPTY_TRANSCRIPT = "empty_transcript"
LONGER_THAN_FRAMES = "transcript_longer_than_frames"  # CTC needs a frame per label (+1 per repeat)
LABEL_SKIP_REASONS = (EMPTY_TRANSCRIPT, LONGER_THAN_FRAMES)
LABEL_PADDING = -100  # transformers' ignore index; `w2v_jax.ctc.ctc_loss` drops it too
PAUSE_PHONE = "_"  # the embedded corpus's espeak-ng pause: silence, not a phone


def normalize_text(text: str) -> str:
    """The module's one text normalisation (see the module docstring)."""
    text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'")
    kept = [" " if (unicodedata.category(c).startswith("P") and c != "'") or c == "|" else c for c in text]
    return " ".join("".join(kept).split())


def words_to_letters(text: str) -> list[str]:
    """fairseq's `.ltr` tokens of a transcript: normalised letters, `|` after each word."""
    letters = []
    for word in normalize_text(text).split():
        letters += [*word, "|"]
    return letters


def letters_to_words(letters: Sequence[str]) -> str:
    """The normalised transcript that `.ltr` tokens spell (`|` separates words)."""
    return normalize_text("".join(" " if t == "|" else t for t in letters))


def label_path(manifest_path: str | os.PathLike, extension: str) -> Path:
    """`X.tsv` -> `X.<extension>` beside it; a shard set (its folder or `shards.json`) -> its
    `index.<extension>`."""
    return (shards.index_path(manifest_path) or Path(manifest_path)).with_suffix(f".{extension}")


def read_label_lines(manifest_path: str | os.PathLike, extension: str, num_rows: int) -> list[str]:
    """The lines of the label file beside a manifest, one per row.

    Raises a ValueError naming the manifest and the label file when it is missing or its line count
    differs from the manifest's `num_rows`.
    """
    path = label_path(manifest_path, extension)
    if not path.is_file():
        raise ValueError(f"{manifest_path}: label file {path} not found")
    text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first transcript
    # Only "\n" ends a row: str.splitlines would also split at U+2028 and friends inside a transcript.
    lines = [line.rstrip("\r") for line in text.removesuffix("\n").split("\n")] if text else []
    if len(lines) != num_rows:
        raise ValueError(f"{path} has {len(lines)} lines but the manifest {manifest_path} has {num_rows} rows")
    return lines


def read_label_tokens(manifest_path: str | os.PathLike, kind: LabelKind, num_rows: int) -> list[list[str]]:
    """Per row, the tokens CTC is trained on: normalised letters (from `.ltr`, else `.wrd`) or phones."""
    if kind == "phn":
        return [unicodedata.normalize("NFC", line).split() for line in read_label_lines(manifest_path, "phn", num_rows)]
    if kind != "ltr":
        raise ValueError(f"label kind must be 'ltr' or 'phn', got {kind!r}")
    if label_path(manifest_path, "ltr").is_file():
        lines = read_label_lines(manifest_path, "ltr", num_rows)
        return [words_to_letters(letters_to_words(line.split())) for line in lines]
    if not label_path(manifest_path, "wrd").is_file():
        raise ValueError(
            f"{manifest_path}: neither {label_path(manifest_path, 'ltr')} nor {label_path(manifest_path, 'wrd')} found"
        )
    return [words_to_letters(line) for line in read_label_lines(manifest_path, "wrd", num_rows)]


def _read_manifest_file(manifest_path: str | os.PathLike) -> Manifest:
    if shards.descriptor_path(manifest_path) is not None:
        return open_shards(manifest_path)
    if not Path(manifest_path).is_file():
        raise ValueError(
            f"{manifest_path}: labels need a manifest file (X.tsv beside X.wrd/.ltr/.phn), "
            "not a folder or a missing path"
        )
    return read_manifest(manifest_path)


def _frames_needed(ids: np.ndarray) -> int:
    """Fewest frames that can emit `ids` under CTC: one per label, plus a blank between repeats."""
    return int(len(ids) + np.count_nonzero(ids[1:] == ids[:-1]))


class LabelSet:
    """The encoded labels of one manifest, and which rows CTC fine-tuning must skip.

    Args:
      manifest_path: the `X.tsv` the label files sit beside.
      kind: "ltr" (letters, from `.ltr` or `.wrd`) or "phn" (phones).
      vocabulary: maps tokens to ids, in its own casing where it has one case (`Vocabulary.model_token`);
        symbols outside it become `<unk>` and are counted.
      num_frames: samples -> encoder frames, e.g. `FeatureEncoder.compute_output_length`; applied to
        the manifest's lengths to find transcripts that cannot fit.
      manifest: the parsed manifest, when the caller has it already.
    """

    def __init__(
        self,
        manifest_path: str | os.PathLike,
        kind: LabelKind,
        vocabulary: Vocabulary,
        num_frames: Callable[[np.ndarray], np.ndarray],
        *,
        manifest: Manifest | None = None,
    ):
        manifest = manifest if manifest is not None else _read_manifest_file(manifest_path)
        self.kind = kind
        self.vocabulary = vocabulary
        self.tokens = read_label_tokens(manifest_path, kind, len(manifest))
        frames = np.asarray(num_frames(manifest.num_samples))
        self._ids: list[np.ndarray] = []
        self._skips: dict[int, str] = {}
        self.unknown_symbols: collections.Counter[str] = collections.Counter()
        for index, tokens in enumerate(self.tokens):
            ids, _ = vocabulary.encode(tokens)
            self.unknown_symbols.update(t for t in tokens if vocabulary.model_token(t) not in vocabulary)
            self._ids.append(ids)
            if not len(ids):
                self._skip(manifest, index, EMPTY_TRANSCRIPT, "no labels after normalisation")
            elif _frames_needed(ids) > frames[index]:
                self._skip(
                    manifest,
                    index,
                    LONGER_THAN_FRAMES,
                    f"{_frames_needed(ids)} frames needed, the audio gives {int(frames[index])}",
                )
        if self.unknown_symbols:
            logger.warning(
                "%s: %d label symbols outside the vocabulary mapped to <unk>: %s",
                manifest_path,
                sum(self.unknown_symbols.values()),
                dict(self.unknown_symbols.most_common(20)),
            )

    def _skip(self, manifest: Manifest, index: int, reason: str, detail: str) -> None:
        self._skips[index] = reason
        logger.warning("skipping %s: %s (%s)", manifest.file_path(index), reason, detail)

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, index: int) -> np.ndarray | str:
        """Row `index`'s label ids `[labels]` int32, or its skip reason (one of LABEL_SKIP_REASONS)."""
        return self._skips.get(index, self._ids[index])

    def reference(self, index: int) -> str:
        """Row `index`'s reference for error rates: normalised words (letters) or space-joined phones."""
        if self.kind == "ltr":
            return letters_to_words(self.tokens[index])
        return " ".join(self.tokens[index])

    def usable_indices(self) -> np.ndarray:
        """The rows fine-tuning can use, int64 `[rows]`."""
        return np.asarray([i for i in range(len(self)) if i not in self._skips], np.int64)

    def skip_counts(self) -> dict[str, int]:
        """Skipped rows per reason, every reason present (stable metric keys)."""
        counts = collections.Counter(self._skips.values())
        return {reason: counts[reason] for reason in LABEL_SKIP_REASONS}

    def num_unknown(self) -> int:
        """Label symbols mapped to `<unk>`, over all rows."""
        return sum(self.unknown_symbols.values())

    def summary(self) -> str:
        """One line for the log: rows usable, skipped per reason, symbols mapped to `<unk>`."""
        skipped = ", ".join(f"{reason}: {n}" for reason, n in self.skip_counts().items() if n) or "none"
        return (
            f"{self.kind} labels: {len(self) - len(self._skips)} of {len(self)} rows usable; skipped "
            f"({skipped}); {self.num_unknown()} symbols mapped to <unk>"
        )


def pad_labels(ids: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Stacks label ids into `[batch, length]` int32 padded with -100 (transformers' ignore index).

    `length` defaults to the longest; a fixed `length` (e.g. a bucket size) keeps jit shapes static.
    """
    longest = max((len(row) for row in ids), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"labels of length {longest} do not fit in length {length}")
    padded = np.full((len(ids), length), LABEL_PADDING, np.int32)
    for row, values in zip(padded, ids):
        row[: len(values)] = values
    return padded


def build_vocabulary(manifest_path: str | os.PathLike, kind: LabelKind) -> Vocabulary:
    """The vocabulary of the training labels beside `manifest_path` (special tokens first, then sorted)."""
    num_rows = len(_read_manifest_file(manifest_path))
    return Vocabulary.from_symbols(t for tokens in read_label_tokens(manifest_path, kind, num_rows) for t in tokens)


def write_corpus_labels(corpus_dir: str | os.PathLike, splits: Sequence[str] = ("train", "valid")) -> list[Path]:
    """Writes `.wrd`, `.ltr` and `.phn` beside each split's manifest from the corpus's `metadata.jsonl`.

    `.wrd` holds the text as written, `.ltr` its normalised letters, `.phn` espeak-ng's phonemes
    without pauses. Rows follow the manifest. Returns the files written.
    """
    corpus_dir = Path(corpus_dir)
    by_path = {row["path"]: row for row in read_json_lines(corpus_dir / "metadata.jsonl", expect=dict)}
    written = []
    for split in splits:
        manifest_path = corpus_dir / f"{split}.tsv"
        manifest = read_manifest(manifest_path)
        missing = [p for p in manifest.paths if p not in by_path]
        if missing:
            raise ValueError(
                f"{manifest_path}: {len(missing)} rows not in {corpus_dir / 'metadata.jsonl'}, e.g. {missing[0]}"
            )
        rows = [by_path[p] for p in manifest.paths]
        contents = {
            "wrd": [" ".join(row["text"].split()) for row in rows],
            "ltr": [" ".join(words_to_letters(row["text"])) for row in rows],
            "phn": [" ".join(p for p in row["phonemes"] if p != PAUSE_PHONE) for row in rows],
        }
        for extension, lines in contents.items():
            path = label_path(manifest_path, extension)
            path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
            written.append(path)
    return written
