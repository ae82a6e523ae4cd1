"""JSON that a user or a third party supplies (a transformers `config.json`, a `vocab.json`, a
checkpoint's records, a corpus's metadata lines), read with one line for bad input.

Python's `json` raises a `JSONDecodeError` for malformed text, a `UnicodeDecodeError` for bytes that
are not UTF-8 and, for input nested deeper than the interpreter's recursion limit allows (`"[" *
100000`; a thousand levels already fail), a `RecursionError`, which callers catching `ValueError`
let through as a traceback. Every reader here turns the three into a `JSONFileError`, a
`ValueError` whose message names the file and the problem. Time and memory stay those of one parse,
linear in the text's size: the C parser gives up at the recursion limit and unwinds its own frames,
so the process goes on as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["JSONFileError", "loads", "read_json", "read_json_lines"]


class JSONFileError(ValueError):
    """A file, or a line of one, that is not readable JSON: `source` names it, `problem` says why
    (without the name, for callers that put it in a message of their own)."""

    def __init__(self, source: str | os.PathLike, problem: str):
        super().__init__(f"{source}: {problem}")
        self.source = str(source)
        self.problem = problem


@contextlib.contextmanager
def _refused_in_one_line(source: str | os.PathLike, line: int | None) -> Iterator[None]:
    """Turns the errors of decoding and parsing the JSON of `source` into a JSONFileError."""
    at_line = "" if line is None else f" (line {line})"
    try:
        yield
    except RecursionError:
        raise JSONFileError(
            source, f"JSON nested deeper than Python's recursion limit ({sys.getrecursionlimit()}) allows{at_line}"
        ) from None
    except json.JSONDecodeError as error:
        position = f"line {error.lineno if line is None else line} column {error.colno}"
        raise JSONFileError(source, f"not valid JSON ({error.msg}: {position})") from None
    except UnicodeDecodeError as error:
        raise JSONFileError(source, f"not UTF-8 text ({error.reason} at byte {error.start}){at_line}") from None


def loads(text: str | bytes, source: str | os.PathLike, *, line: int | None = None) -> Any:
    """The JSON value of `text` (a str, or UTF-8 bytes), read from `source` (a file, or what the text
    is, named in errors).

    `line`: the 1-based number in `source` of the line `text` is (JSON lines), for the messages.
    Raises JSONFileError for text that is not JSON, not UTF-8, or nested too deep to parse.
    """
    with _refused_in_one_line(source, line):
        # Decoded here rather than by `json.loads`, which would also take UTF-16 and UTF-32.
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value of the UTF-8 file at `path`; JSONFileError naming it when it is no JSON."""
    with _refused_in_one_line(path, None):
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))


def read_json_lines(path: str | os.PathLike) -> list[Any]:
    """The JSON value of each non-blank line of the UTF-8 file at `path` (JSON lines), in order;
    JSONFileError naming the file and the first line that is no JSON."""
    values = []
    # Split as bytes, so that a line that is not UTF-8 is named by its number.
    for number, line in enumerate(pathlib.Path(path).read_bytes().split(b"\n"), start=1):
        if line.strip():
            values.append(loads(line, path, line=number))
    return values
