"""CTC beam search with an n-gram language model: flashlight-text's decoders with KenLM.

The decoder is flashlight-text's (the `decode` extra): the wav2letter beam search that fairseq's
`W2lKenLMDecoder` and torchaudio's `ctc_decoder` wrap, with KenLM inside its wheels (ARPA and KenLM
binary files). Its scoring, which `tests/asr/test_beam_search.py` reproduces by enumerating every
labelling of tiny vocabularies: a hypothesis scores its best CTC alignment's log-probabilities
(`log_add=False`: hypotheses reaching the same state keep the better one), plus `lm_weight` times
the LM's log10 probabilities (KenLM's unit), with `</s>` at the end, plus

- with a lexicon (`LexiconDecoder`): `word_score` per word; a word is emitted when its spelling,
  ending with the word delimiter `|`, is complete; only lexicon words are emitted. The LM is over
  words. A final `|` frame is appended to the emissions so that the last word completes even when
  the model leaves out the transcript's final `|`.
- without one (`LexiconFreeDecoder`): the LM scores every emitted token (a token LM built with
  `build_lm --unit=ltr` or `phn`, its tokens in either case); flashlight has no word score there, so
  `word_score` must be 0. A word-level ARPA LM given without a lexicon decodes with the lexicon of
  its words spelled in the model's tokens.

Lexicons and token LMs are of normalised (lower-case) text; an upper-case model's tokens spell them
(`Vocabulary.model_token`), and a spelling the model cannot make leaves its word out, counted.

Without an LM, beam search at `beam_size=1` is greedy decoding (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special

from w2v_jax.asr.decoding import GreedyDecoder, Transcript, frame_path_transcript
from w2v_jax.asr.lm import BOS, EOS, UNK, NgramLM, read_lexicon, spell_words
from w2v_jax.data.vocabulary import Vocabulary

DECODERS = ("greedy", "beam")
KENLM_BINARY_MAGIC = b"mmap lm "  # the first bytes of KenLM's binary format
# Log-probability of every token but `|` in the appended final frame: unreachable, yet finite.
_UNREACHABLE = -1e4

logger = logging.getLogger("w2v_jax.asr")


def _flashlight() -> tuple[Any, Any, Any]:
    """flashlight-text's decoder, KenLM and dictionary modules, or an ImportError naming the extra."""
    try:
        from flashlight.lib.text import decoder, dictionary  # noqa: PLC0415 - optional: the `decode` extra
        from flashlight.lib.text.decoder import kenlm  # noqa: PLC0415 - optional: the `decode` extra
    except ImportError as error:
        raise ImportError(
            "beam-search decoding needs flashlight-text: pip install -e '.[decode]' (the `decode` extra)"
        ) from error
    return decoder, kenlm, dictionary


@dataclasses.dataclass(frozen=True)
class BeamSearchOptions:
    """flashlight's decoder options (fairseq's `--beam`, `--beam-threshold`, `--lm-weight`, `--word-score`).

    beam_size: hypotheses kept per frame.
    beam_size_token: tokens tried per frame, the most probable first (None: every token).
    beam_threshold: hypotheses scoring this far below the frame's best are pruned.
    lm_weight: alpha, the weight of the LM's log10 probabilities.
    word_score: beta, added per emitted word (lexicon decoding only).
    unk_score: added for a spelling outside the lexicon (-inf: never emitted).
    """

    beam_size: int = 50
    beam_size_token: int | None = None
    beam_threshold: float = 25.0
    lm_weight: float = 2.0
    word_score: float = 0.0
    unk_score: float = -math.inf

    def __post_init__(self):
        if self.beam_size < 1 or (self.beam_size_token is not None and self.beam_size_token < 1):
            raise ValueError(f"beam_size and beam_size_token must be at least 1, got {self}")
        if self.beam_threshold <= 0:
            raise ValueError(f"beam_threshold must be positive, got {self.beam_threshold}")


def check_lm_file(path: str | os.PathLike) -> list[str] | None:
    """The words of an ARPA file (its unigrams but `<s>`, `</s>`, `<unk>`), None for a KenLM binary;
    a ValueError naming `path` when it is neither."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such language model file")
    with path.open("rb") as file:
        if file.read(len(KENLM_BINARY_MAGIC)) == KENLM_BINARY_MAGIC:
            return None
    # The header and the words only: a large LM is KenLM's to read, in seconds rather than Python's minutes.
    return [w for w in NgramLM.read_arpa(path, max_order=1).vocabulary if w not in (BOS, EOS, UNK)]


def is_token_lm(words: Sequence[str], vocabulary: Vocabulary) -> bool:
    """Whether an LM's `words` are `vocabulary`'s tokens (in either case, `Vocabulary.model_token`)
    rather than words: at least half of the tokens (special tokens aside) are among them."""
    tokens = set(vocabulary.tokens) - {vocabulary.pad_token, BOS, EOS, UNK}
    return len(tokens & {vocabulary.model_token(w) for w in words}) >= len(tokens) / 2


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Sends the process's stderr (file descriptor 2) to /dev/null: KenLM prints a progress bar
    there for every ARPA file it reads. Its errors still come back as exceptions."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _load_kenlm(path: str | os.PathLike, units: tuple[str, ...]) -> Any:
    """flashlight's KenLM over `units` (the decoder's words or tokens, in index order); the decoders
    of a sweep share one (a large LM loads once), reloaded when the file changes."""
    path = Path(path).resolve()
    return _cached_kenlm(str(path), path.stat().st_mtime_ns, units)


@functools.lru_cache(maxsize=4)
def _cached_kenlm(path: str, mtime_ns: int, units: tuple[str, ...]) -> Any:
    del mtime_ns  # part of the cache key only
    _, fl_kenlm, fl_dictionary = _flashlight()
    dictionary = fl_dictionary.Dictionary()
    for unit in units:
        dictionary.add_entry(unit)
    try:
        with _native_stderr_silenced():
            return fl_kenlm.KenLM(path, dictionary)
    except RuntimeError as error:
        reason = str(error).strip().split("\n")[-1]
        raise ValueError(f"{path}: KenLM cannot read this language model: {reason}") from None


class BeamSearchDecoder:
    """CTC beam search over one utterance's logits, with an optional KenLM LM and lexicon.

    Args:
      vocabulary: the CTC head's tokens (blank = its pad token, `|` the word delimiter and silence).
      lm: an ARPA or KenLM binary file (None: no LM).
      lexicon: word<TAB>spelling file (`lm.read_lexicon`); None: lexicon-free decoding, except with a
        word-level ARPA `lm` (not over the vocabulary's tokens, `is_token_lm`): then the lexicon of its
        words spelled in the vocabulary's tokens (what transformers' `Wav2Vec2ProcessorWithLM` users
        expect of an LM alone), said in one log line; the words it cannot spell are left out, counted.
      options: beam size, pruning, LM weight, word score.
      separator: between tokens of a lexicon-free transcript ("" letters, " " phones).
    """

    def __init__(
        self,
        vocabulary: Vocabulary,
        lm: str | os.PathLike | None = None,
        lexicon: str | os.PathLike | None = None,
        options: BeamSearchOptions = BeamSearchOptions(),
        separator: str = "",
    ):
        fl_decoder, _, _ = _flashlight()
        self.vocabulary, self.options, self.separator = vocabulary, options, separator
        blank = vocabulary.pad_id
        delimiter = vocabulary.word_delimiter_token
        self._sil = vocabulary.token_to_id[delimiter] if delimiter in vocabulary else blank
        lm_words = None if lm is None else check_lm_file(lm)
        spellings = None
        if lexicon is not None:
            spellings = read_lexicon(lexicon, vocabulary)
        elif lm is not None and lm_words is not None and not is_token_lm(lm_words, vocabulary):
            spellings = {word: [spelling] for word, spelling in spell_words(lm_words, vocabulary, lm).items()}
            logger.info(
                "%s: a word LM without a lexicon: decoding with the lexicon of its words spelled in the "
                "model's tokens (%d of %d words)",
                lm,
                len(spellings),
                len(lm_words),
            )
        self.lexicon_free = spellings is None
        num_tokens = len(vocabulary)
        criterion = fl_decoder.CriterionType.CTC
        beam_size_token = options.beam_size_token or num_tokens
        if spellings is None:
            if options.word_score != 0:
                raise ValueError("word_score needs a lexicon: flashlight's lexicon-free decoder has no word score")
            # The LM's name of each token: a token LM of normalised (lower-case) text scores an
            # upper-case model's tokens.
            lm_name = {vocabulary.model_token(w): w for w in lm_words or ()}
            units = tuple(lm_name.get(token, token) for token in vocabulary.tokens)
            language_model = fl_decoder.ZeroLM() if lm is None else _load_kenlm(lm, units)
            decoder_options = fl_decoder.LexiconFreeDecoderOptions(
                options.beam_size, beam_size_token, options.beam_threshold, options.lm_weight, 0.0, False, criterion
            )
            self._decoder = fl_decoder.LexiconFreeDecoder(decoder_options, language_model, self._sil, blank, [])
            self._words: list[str] = []
            return
        self._words = [*spellings, UNK] if UNK not in spellings else list(spellings)
        language_model = fl_decoder.ZeroLM() if lm is None else _load_kenlm(lm, tuple(self._words))
        # The trie of spellings, each node carrying the best unigram score below it (flashlight's
        # "smearing"): a look-ahead that prunes, while the final scores are the words' real ones.
        trie = fl_decoder.Trie(num_tokens, self._sil)
        start = language_model.start(False)
        for index, word in enumerate(self._words):
            _, score = language_model.score(start, index)
            for spelling in spellings.get(word, ()):
                trie.insert([vocabulary.token_to_id[t] for t in spelling], index, score)
        trie.smear(fl_decoder.SmearingMode.MAX)
        decoder_options = fl_decoder.LexiconDecoderOptions(
            options.beam_size,
            beam_size_token,
            options.beam_threshold,
            options.lm_weight,
            options.word_score,
            options.unk_score,
            0.0,
            False,
            criterion,
        )
        unk = self._words.index(UNK)
        self._decoder = fl_decoder.LexiconDecoder(
            decoder_options, trie, language_model, self._sil, blank, unk, [], False
        )

    def emissions(self, logits: np.ndarray, length: int | None = None) -> np.ndarray:
        """The decoder's input: log-softmax of the first `length` frames, `[time, vocab]` float32
        (plus one final `|` frame for lexicon decoding)."""
        logits = np.asarray(logits, np.float32)
        if logits.ndim != 2 or logits.shape[1] != len(self.vocabulary):
            raise ValueError(f"logits must be [time, {len(self.vocabulary)}], got {logits.shape}")
        log_probs = scipy.special.log_softmax(logits[:length], axis=-1).astype(np.float32)
        if not self.lexicon_free:
            final = np.full((1, log_probs.shape[1]), _UNREACHABLE, np.float32)
            final[0, self._sil] = 0.0
            log_probs = np.concatenate([log_probs, final])
        return np.ascontiguousarray(log_probs)

    def best(self, logits: np.ndarray, length: int | None = None) -> Any:
        """flashlight's best `DecodeResult` (score, emittingModelScore, lmScore, tokens, words)."""
        emissions = self.emissions(logits, length)
        results = self._decoder.decode(emissions.ctypes.data, emissions.shape[0], emissions.shape[1])
        return results[0]

    def decode(self, logits: np.ndarray, length: int | None = None) -> Transcript:
        """The best hypothesis of one utterance (`logits [time, vocab]`, first `length` frames)."""
        result = self.best(logits, length)
        num_frames = int(np.asarray(logits)[:length].shape[0])
        # tokens: one per frame, between the decoder's start and end states.
        path = list(result.tokens)[1 : 1 + num_frames]
        transcript = frame_path_transcript(path, self.vocabulary, self.separator)
        if self.lexicon_free:
            return transcript
        text = " ".join(self._words[i] for i in result.words if i >= 0)
        return dataclasses.replace(transcript, text=text)


def make_decoder(
    vocabulary: Vocabulary,
    decoder: str = "greedy",
    *,
    lm: str | os.PathLike | None = None,
    lexicon: str | os.PathLike | None = None,
    options: BeamSearchOptions = BeamSearchOptions(),
    separator: str = "",
) -> GreedyDecoder | BeamSearchDecoder:
    """The decoder the launchers' flags name: "greedy" (the default; no LM) or "beam"."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "greedy":
        if lm is not None or lexicon is not None:
            raise ValueError("an LM or a lexicon needs --decoder=beam")
        return GreedyDecoder(vocabulary, separator)
    return BeamSearchDecoder(vocabulary, lm, lexicon, options, separator)
