"""The command-line programs (`w2v-<name>` once installed, `python -m experiments.<name>` in the repository).

Each module defines its flags in `define_flags(flag_values, argv)` (nothing happens at import, so
every module of the package imports in one process), parses them and calls library code.
`launch(main, define_flags)` is absl's `app.run` plus what every launcher shares:

- quiet, structured output: absl, orbax and jax log at WARNING only (they log each file written and
  each compile at INFO); w2v_jax's own lines are `HH:MM:SS message`, written through tqdm so they
  never break a progress bar;
- JAX's persistent compilation cache, on by default in `~/.cache/w2v_jax/jax` (`$XDG_CACHE_HOME`
  respected), so a rerun or the next sweep point loads the compiled step instead of compiling it
  again: `--compilation_cache=DIR` moves it, `--compilation_cache=` turns it off, and
  `JAX_COMPILATION_CACHE_DIR` in the environment takes precedence over both.

Flags are snake_case; the dashed spellings of older launchers stay accepted (`alias`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

import jax
import tqdm
from absl import app, flags

from w2v_jax.asr.beam_search import BeamSearchOptions
from w2v_jax.asr.decoding import SEPARATORS
from w2v_jax.asr.long_form import DEFAULT_CHUNK_S
from w2v_jax.checkpoints.checkpointer import CorruptCheckpointError
from w2v_jax.configs import resolve_argv, unknown_field_message
from w2v_jax.research import probes
from w2v_jax.training import host_memory, workdir
from w2v_jax.training.trainer import TrainingDivergedError

DEFAULT_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "w2v_jax" / "jax"
# Libraries that log every file, compile or checkpoint step at INFO.
_QUIET_LOGGERS = ("absl", "jax", "orbax")
# orbax warns when a reader opens checkpoints read-only, which the readers (evaluate, export) do on purpose.
_EXPECTED_WARNINGS = ("Given directory is read only",)


def _drop_expected_warnings(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_EXPECTED_WARNINGS)


class _ProgressBarHandler(logging.Handler):
    """Writes records with `tqdm.write`: a line printed under an active bar doesn't break it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise (logging.Handler's contract)
            self.handleError(record)


class _Formatter(logging.Formatter):
    """`HH:MM:SS message`; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return f"{self.formatTime(record, '%H:%M:%S')} {text}"


def configure_logging(level: int = logging.INFO) -> None:
    """Quiet third-party INFO logs; w2v_jax's through the progress-bar-safe handler (idempotent)."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # orbax's writer threads log a traceback each when the disk is full; the launcher says it in one line.
    absl_logger = logging.getLogger("absl")
    for record_filter in (workdir.drop_disk_full_records, _drop_expected_warnings):
        if record_filter not in absl_logger.filters:
            absl_logger.addFilter(record_filter)
    handler = _ProgressBarHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    package = logging.getLogger("w2v_jax")
    package.handlers[:] = [handler]
    package.setLevel(level)
    package.propagate = False


def enable_compilation_cache(folder: str) -> str | None:
    """Turns on JAX's persistent compilation cache in `folder` ('' : off); returns the folder used.

    `JAX_COMPILATION_CACHE_DIR` in the environment, if set, is JAX's own setting and is kept.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not folder:
        return None
    folder = os.path.expanduser(folder)
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder


@contextlib.contextmanager
def run_faults_exit(run_dir: str | os.PathLike | None) -> Iterator[None]:
    """Turns the faults a user causes into one line and a non-zero exit (no traceback).

    A locked workdir or a refused config change (`workdir.WorkdirError`), a corrupt checkpoint with no
    intact one to fall back to, a diverged run, and a full disk under `run_dir` (named with its free
    space) each end the program with `SystemExit(message)`; anything else propagates.
    """
    try:
        yield
    except TrainingDivergedError as e:
        raise SystemExit(f"training stopped: {e}") from None
    except (workdir.WorkdirError, CorruptCheckpointError) as e:
        raise SystemExit(str(e)) from None
    except Exception as e:
        if run_dir is not None and (message := workdir.disk_full_message(e, run_dir)):
            raise SystemExit(message) from None
        raise


Flags = TypeVar("Flags")


def alias(flag_values: flags.FlagValues, *pairs: tuple[str, str]) -> None:
    """Accepts each `(old, new)` pair's old spelling (e.g. `vs-pytorch`) for flag `new`."""
    for old, new in pairs:
        flags.DEFINE_alias(old, new, flag_values=flag_values)


def define_host_malloc_flag(flag_values: flags.FlagValues) -> flags.FlagHolder:
    """`--host_malloc`: the process's host allocator (`training.host_memory`)."""
    return flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP, flag_values=flag_values)


def define_checkpoint_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--checkpoint` (any format `checkpoints.load_model` reads) and `--step` (a workdir's checkpoint)."""
    return {
        "checkpoint": flags.DEFINE_string(
            "checkpoint", None, "Training workdir or checkpoint folder.", required=True, flag_values=flag_values
        ),
        "step": flags.DEFINE_integer(
            "step", None, "Checkpoint step of a training workdir (default: newest).", flag_values=flag_values
        ),
    }


def define_ctc_checkpoint_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--checkpoint` (a fine-tuning workdir or CTC checkpoint), `--step` (default: the workdir's best
    model) and `--labels` (ltr or phn), the flags of every launcher that runs a fine-tuned model."""
    return {
        "checkpoint": flags.DEFINE_string(
            "checkpoint", None, "Fine-tuning workdir or CTC checkpoint folder.", required=True, flag_values=flag_values
        ),
        "step": flags.DEFINE_integer(
            "step", None, "Checkpoint step of a workdir (default: its best model).", flag_values=flag_values
        ),
        "labels": flags.DEFINE_enum(
            "labels",
            "ltr",
            sorted(SEPARATORS),
            "The model's labels: ltr (letters joined) or phn (phones separated by spaces).",
            flag_values=flag_values,
        ),
    }


def define_probe_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--held_out_voices` and `--probe_steps`, the phone probe's protocol (`research.probes`)."""
    return {
        "held_out_voices": flags.DEFINE_list(
            "held_out_voices",
            list(probes.DEFAULT_HELD_OUT_VOICES),
            "Voices (espeak-ng variants, e.g. m2) held out of the phone probe's training set; empty: none.",
            flag_values=flag_values,
        ),
        "probe_steps": flags.DEFINE_integer(
            "probe_steps", 300, "Adam iterations of each linear probe.", flag_values=flag_values
        ),
    }


def define_long_form_flags(flag_values: flags.FlagValues) -> dict[str, flags.FlagHolder]:
    """`--chunk_s`, `--stride_s` (`asr.long_form`) and `--strict` of the launchers that read many audio files."""
    fv = flag_values
    return {
        "chunk_s": flags.DEFINE_float(
            "chunk_s", DEFAULT_CHUNK_S, "Recordings longer than this (seconds) go in chunks.", flag_values=fv
        ),
        "stride_s": flags.DEFINE_float(
            "stride_s",
            None,
            "Overlap on each side of a chunk, seconds (default: a sixth of --chunk_s).",
            flag_values=fv,
        ),
        "strict": flags.DEFINE_bool("strict", False, "Stop at the first unreadable file.", flag_values=fv),
    }


class BadFiles:
    """Unreadable input files of a launcher that goes on without them: each one's line on stderr as
    it is met (`report`, an `on_bad_file` callback), then `exit_if_any` ends with status 1 and the count."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, path: pathlib.Path, reason: str) -> None:
        del path  # the reason names it
        self.count += 1
        print(reason, file=sys.stderr, flush=True)

    def exit_if_any(self) -> None:
        if self.count:
            raise SystemExit(f"{self.count} unreadable file{'s' if self.count > 1 else ''} skipped (reasons above)")


def define_beam_search_flags(flag_values: flags.FlagValues, sweep: bool = False) -> dict[str, flags.FlagHolder]:
    """`--lm`, `--lexicon`, `--lm_weight`, `--word_score`, `--beam_size`, `--beam_threshold`,
    `--beam_size_token` (`asr.beam_search.BeamSearchOptions`); with `sweep`, the LM weight and word
    score are comma-separated lists of values."""
    defaults = BeamSearchOptions()
    fv = flag_values
    number = flags.DEFINE_list if sweep else flags.DEFINE_float
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


def launch(
    main: Callable[[list[str], Flags], Any],
    define_flags: Callable[[flags.FlagValues, Sequence[str]], Flags],
) -> None:
    """Defines the launcher's flags and `--compilation_cache` on absl's flags, then
    `absl.app.run(main(argv, flags))` after `configure_logging` and `enable_compilation_cache`
    (see the module docstring)."""
    defined = define_flags(flags.FLAGS, sys.argv)
    cache = flags.DEFINE_string(
        "compilation_cache",
        str(DEFAULT_CACHE),
        "Folder of JAX's persistent compilation cache ('' turns it off; JAX_COMPILATION_CACHE_DIR wins).",
    )

    def with_setup(argv: list[str]) -> object:
        configure_logging()
        enable_compilation_cache(cache.value)
        return main(argv, defined)

    app.run(with_setup, flags_parser=lambda argv: parse_flags(argv, app.parse_flags_with_usage))


def parse_flags(argv: Sequence[str], parse: Callable[[list[str]], list[str]] = flags.FLAGS) -> list[str]:
    """The positional arguments of the command line `argv`, parsed by `parse` (absl's flags, or
    another `FlagValues`) after `--config` is resolved from the package. config_flags applies the
    `--config.*` overrides while parsing: an unknown field ends the program with one line naming it."""
    argv = resolve_argv("config", argv)
    try:
        return parse(argv)
    except (AttributeError, KeyError) as error:
        raise SystemExit(unknown_field_message(error, "config", argv)) from None
