"""What every launcher shares: `launch(main, define_flags)`, absl's `app.run` plus the process setup.

- quiet, structured output: absl, orbax and jax log at WARNING only (they log each file written and
  each compile at INFO); w2v_jax's own lines are `HH:MM:SS message`, written through tqdm so they
  never break a progress bar;
- JAX's persistent compilation cache, on by default in `~/.cache/w2v_jax/jax` (`$XDG_CACHE_HOME`
  respected), so a rerun or the next sweep point loads the compiled step instead of compiling it
  again: `--compilation_cache=DIR` moves it, `--compilation_cache=` turns it off, and
  `JAX_COMPILATION_CACHE_DIR` in the environment takes precedence over both;
- `--config` resolved from the package and an unknown `--config.*` field as a one-line exit
  (`cli.config_flag`);
- `--host_malloc`, the host allocator of the launchers that train or time train steps.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import tqdm
from absl import app, flags

from w2v_jax.cli.config_flag import resolve_argv, unknown_field_message
from w2v_jax.training import host_memory, workdir

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


def define_host_malloc_flag(flag_values: flags.FlagValues) -> flags.FlagHolder:
    """`--host_malloc`: the process's host allocator (`training.host_memory`)."""
    return flags.DEFINE_enum("host_malloc", "reuse", host_memory.MODES, host_memory.FLAG_HELP, flag_values=flag_values)


Flags = TypeVar("Flags")


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
