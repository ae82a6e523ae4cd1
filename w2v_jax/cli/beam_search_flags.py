"""The beam-search decoder's flags (`asr.beam_search.BeamSearchOptions`), of the launchers that decode."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from absl import flags

from w2v_jax.asr.beam_search import BeamSearchOptions


def define_beam_search_flags(flag_values: flags.FlagValues, sweep: bool = False) -> dict[str, flags.FlagHolder]:
    """`--lm`, `--lexicon`, `--lm_weight`, `--word_score`, `--beam_size`, `--beam_threshold`,
    `--beam_size_token` (`asr.beam_search.BeamSearchOptions`); with `sweep`, the LM weight and word
    score are comma-separated lists of values."""
    defaults = BeamSearchOptions()
    fv = flag_values
    number: Callable[..., flags.FlagHolder[Any]] = flags.DEFINE_list if sweep else flags.DEFINE_float
    return {
        "lm": flags.DEFINE_string("lm", None, "n-gram LM: ARPA or KenLM binary file.", flag_values=fv),
        "lexicon": flags.DEFINE_string(
            "lexicon", None, "word<TAB>spelling ending with | (default: lexicon-free, a token LM).", flag_values=fv
        ),
        "lm_weight": number(
            "lm_weight",
            [str(defaults.lm_weight)] if sweep else defaults.lm_weight,
            "Weight of the LM's log10 probabilities (alpha)" + ("; values to sweep." if sweep else "."),
            flag_values=fv,
        ),
        "word_score": number(
            "word_score",
            [str(defaults.word_score)] if sweep else defaults.word_score,
            "Score added per word, lexicon decoding (beta)" + ("; values to sweep." if sweep else "."),
            flag_values=fv,
        ),
        "beam_size": flags.DEFINE_integer("beam_size", defaults.beam_size, "Hypotheses kept.", flag_values=fv),
        "beam_threshold": flags.DEFINE_float(
            "beam_threshold", defaults.beam_threshold, "Prune hypotheses this far below the best.", flag_values=fv
        ),
        "beam_size_token": flags.DEFINE_integer(
            "beam_size_token", None, "Tokens tried per frame (default: all).", flag_values=fv
        ),
    }


def beam_search_options(args: SimpleNamespace, lm_weight: float, word_score: float) -> BeamSearchOptions:
    """The options `define_beam_search_flags`' flags give, at one LM weight and word score."""
    return BeamSearchOptions(
        beam_size=args.beam_size.value,
        beam_size_token=args.beam_size_token.value,
        beam_threshold=args.beam_threshold.value,
        lm_weight=lm_weight,
        word_score=word_score,
    )
