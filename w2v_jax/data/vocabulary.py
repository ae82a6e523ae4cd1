"""CTC output vocabularies in transformers' `vocab.json` format, and greedy ids -> text.

A vocabulary built here has `<pad>`=0 (the CTC blank, transformers' `pad_token_id`), `<s>`=1, `</s>`=2,
`<unk>`=3, `|`=4 (the word delimiter), then the label symbols sorted by code point. Any
`vocab.json` that `Wav2Vec2CTCTokenizer` reads (a flat token -> id mapping) loads, so imported
transformers models keep their ids.

`Vocabulary.decode` gives exactly the text of `Wav2Vec2CTCTokenizer.decode(frame_ids)` as the
automatic-speech-recognition pipeline calls it (special tokens kept, `group_tokens=True`, no
`clean_up_tokenization_spaces`, `do_lower_case=False`): ids -> tokens (unknown ids -> `<unk>`),
runs of the same token collapsed, `<pad>` dropped, `|` -> " ", tokens joined, the ends stripped.

Casing: labels and LM text are normalised to lower case (`data.labels.normalize_text`), while some
public models spell in upper case (fairseq's LibriSpeech `dict.ltr.txt`, transformers'
`facebook/wav2vec2-base-960h`). A vocabulary whose letters are all of one case (`casing`) takes a
label token in the other case as its own (`model_token`: `a` is `A`'s in an upper-case vocabulary);
a token the vocabulary has is always itself, and a vocabulary of mixed or no case maps nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from w2v_jax.json_files import read_json

PAD, BOS, EOS, UNK, WORD_DELIMITER = "<pad>", "<s>", "</s>", "<unk>", "|"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, WORD_DELIMITER)
VOCAB_FILE = "vocab.json"  # transformers' Wav2Vec2CTCTokenizer file name
Casing = Literal["lower", "upper"]


def _casing(tokens: Iterable[str]) -> Casing | None:
    """The one case of the tokens' cased letters, None if they mix cases or have none."""
    letters = [c for token in tokens for c in token if c.lower() != c.upper()]
    if letters and all(c.isupper() for c in letters):
        return "upper"
    if letters and all(c.islower() for c in letters):
        return "lower"
    return None


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Token <-> id mapping of a CTC head; `tokens[i]` is id i's token.

    The special-token names default to transformers' and must be in `tokens` (except the word
    delimiter, which phone vocabularies may lack).
    """

    tokens: tuple[str, ...]
    pad_token: str = PAD
    unk_token: str = UNK
    word_delimiter_token: str = WORD_DELIMITER
    # token -> id, derived from `tokens` in `__post_init__`.
    _ids: dict[str, int] = dataclasses.field(init=False, repr=False, compare=False)
    _casing: Casing | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.tokens)) != len(self.tokens):
            duplicates = sorted({t for t in self.tokens if self.tokens.count(t) > 1})
            raise ValueError(f"vocabulary tokens must be distinct, repeated: {duplicates}")
        for name in ("pad_token", "unk_token"):
            if getattr(self, name) not in self.tokens:
                raise ValueError(f"{name} {getattr(self, name)!r} is not in the vocabulary")
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})
        object.__setattr__(self, "_casing", _casing(t for t in self.tokens if t not in SPECIAL_TOKENS))

    @classmethod
    def from_symbols(cls, symbols: Iterable[str]) -> Vocabulary:
        """The special tokens, then every distinct other symbol sorted by code point."""
        symbols = set(symbols)
        if any(not s or s != s.strip() or any(c.isspace() for c in s) for s in symbols):
            raise ValueError("vocabulary symbols must be non-empty and free of whitespace")
        return cls(SPECIAL_TOKENS + tuple(sorted(symbols - set(SPECIAL_TOKENS))))

    @classmethod
    def load(cls, path: str | os.PathLike, **special_tokens: str) -> Vocabulary:
        """Reads a `vocab.json` (or the folder holding one): a flat token -> id mapping, ids 0..n-1.

        `special_tokens`: `pad_token`, `unk_token`, `word_delimiter_token` when not transformers'
        defaults (a tokenizer_config.json names them).
        """
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        if not path.is_file():
            raise ValueError(f"{path}: no such vocabulary file")
        mapping = read_json(path, expect=dict)
        if not all(isinstance(v, int) for v in mapping.values()):
            raise ValueError(
                f"{path}: expected a flat JSON object token -> integer id (per-language vocabularies are not supported)"
            )
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise ValueError(f"{path}: ids must be 0..{len(mapping) - 1}, each once")
        return cls(tuple(sorted(mapping, key=mapping.__getitem__)), **special_tokens)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes `vocab.json` (into `path` if it is a folder); returns the file written."""
        path = Path(path)
        if path.is_dir():
            path = path / VOCAB_FILE
        path.write_text(json.dumps(self.token_to_id, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return path

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._ids

    @property
    def token_to_id(self) -> dict[str, int]:
        return dict(self._ids)

    @property
    def pad_id(self) -> int:
        """The CTC blank."""
        return self._ids[self.pad_token]

    @property
    def unk_id(self) -> int:
        return self._ids[self.unk_token]

    @property
    def casing(self) -> Casing | None:
        """The tokens' one case, "lower" or "upper", when every cased letter of them (special tokens
        aside) is of it; None for mixed case or none (most phone sets, caseless scripts)."""
        return self._casing

    def model_token(self, token: str) -> str:
        """`token` as this vocabulary spells it: itself when the vocabulary has it, else in the
        vocabulary's single case when that spelling is in it (module docstring), else itself."""
        if token in self._ids or self._casing is None:
            return token
        cased = token.upper() if self._casing == "upper" else token.lower()
        return cased if cased in self._ids else token

    def encode(self, tokens: Sequence[str]) -> tuple[np.ndarray, int]:
        """Token ids `[len(tokens)]` int32 (each token as `model_token` spells it; unknown tokens ->
        `<unk>`) and how many were unknown."""
        ids = np.fromiter((self._ids.get(self.model_token(t), -1) for t in tokens), np.int32, len(tokens))
        unknown = int(np.count_nonzero(ids < 0))
        return np.where(ids < 0, self.unk_id, ids).astype(np.int32), unknown

    def decode_tokens(self, frame_ids: Iterable[int]) -> list[str]:
        """Greedy CTC tokens of frame-wise argmax ids: unknown ids -> `<unk>`, runs collapsed, blanks dropped."""
        tokens = (self.tokens[i] if 0 <= i < len(self.tokens) else self.unk_token for i in map(int, frame_ids))
        return [token for token, _ in itertools.groupby(tokens) if token != self.pad_token]

    def decode(self, frame_ids: Iterable[int], separator: str = "") -> str:
        """The transcript `Wav2Vec2CTCTokenizer.decode` gives in the ASR pipeline (see the module
        docstring); `separator=" "` puts a space between tokens, as phone transcripts (`.phn`
        files, transformers' phoneme tokenizer) are written: phones span several characters."""
        tokens = self.decode_tokens(frame_ids)
        return separator.join(" " if t == self.word_delimiter_token else t for t in tokens).strip()
