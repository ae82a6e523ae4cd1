"""JSON that a user or a third party supplies (a transformers `config.json`, a `vocab.json`, a
checkpoint's records, a corpus's metadata lines), read with one line for bad input.

Python's `json` raises a `JSONDecodeError` for malformed text, a `UnicodeDecodeError` for bytes that
are not UTF-8 and, for input nested deeper than the interpreter's recursion limit allows (`"[" *
100000`; a thousand levels already fail), a `RecursionError`, which callers catching `ValueError`
let through as a traceback. Every reader here turns the three into a `JSONFileError`, a
`ValueError` whose message names the file and the problem. Time and memory stay those of one parse,
linear in the text's size: the C parser gives up at the recursion limit and unwinds its own frames,
so the process goes on as before.

Valid JSON of the wrong shape (a `config.json` holding a list, a JSON-lines row that is a string)
would fail later as an AttributeError or a TypeError far from the file: `expect=dict` (or `list`)
makes the readers check the top level, and `member` a value inside an object, with a JSONFileError
saying what was expected and what was found ("expected a JSON object at the top level, found an
array").
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any, TypeVar, overload

__all__ = ["JSONFileError", "loads", "member", "read_json", "read_json_lines"]

# The JSON containers a reader may expect: an object (dict) or an array (list).
_Container = TypeVar("_Container", dict, list)

# The types json.loads gives, by their JSON names (None, JSON's null, is named apart).
_JSON_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
# What `member` finds for a key its object lacks.
_ABSENT = object()


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


def _checked(
    value: Any, expect: type[_Container] | None, source: str | os.PathLike, where: str, line: int | None = None
) -> Any:
    """`value` when it is an `expect` (anything without one); a JSONFileError naming `source`, what
    was expected `where` (in the `line` of a JSON-lines file) and what was found otherwise."""
    if expect is None or isinstance(value, expect):
        return value
    if value is None or value is _ABSENT:
        found = "null" if value is None else "nothing"
    else:
        name = _JSON_NAMES[type(value)]
        found = f"an {name}" if name[0] in "aeiou" else f"a {name}"
    at_line = "" if line is None else f" (line {line})"
    raise JSONFileError(source, f"expected a JSON {_JSON_NAMES[expect]} {where}, found {found}{at_line}")


@overload
def loads(text: str | bytes, source: str | os.PathLike, *, line: int | None = None, expect: None = None) -> Any: ...
@overload
def loads(
    text: str | bytes, source: str | os.PathLike, *, line: int | None = None, expect: type[_Container]
) -> _Container: ...
def loads(
    text: str | bytes, source: str | os.PathLike, *, line: int | None = None, expect: type[_Container] | None = None
) -> Any:
    """The JSON value of `text` (a str, or UTF-8 bytes), read from `source` (a file, or what the text
    is, named in errors).

    `line`: the 1-based number in `source` of the line `text` is (JSON lines), for the messages.
    `expect`: `dict` or `list`, the type the value must have (any JSON value without one).
    Raises JSONFileError for text that is not JSON, not UTF-8, nested too deep to parse, or not an
    `expect`.
    """
    with _refused_in_one_line(source, line):
        # Decoded here rather than by `json.loads`, which would also take UTF-16 and UTF-32.
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    return _checked(value, expect, source, "at the top level", line)


@overload
def read_json(path: str | os.PathLike, *, expect: None = None) -> Any: ...
@overload
def read_json(path: str | os.PathLike, *, expect: type[_Container]) -> _Container: ...
def read_json(path: str | os.PathLike, *, expect: type[_Container] | None = None) -> Any:
    """The JSON value of the UTF-8 file at `path`; JSONFileError naming it when it is no JSON, or
    when its top level is not an `expect` (`dict` or `list`; any value without one)."""
    with _refused_in_one_line(path, None):
        value = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    return _checked(value, expect, path, "at the top level")


@overload
def read_json_lines(path: str | os.PathLike, *, expect: None = None) -> list[Any]: ...
@overload
def read_json_lines(path: str | os.PathLike, *, expect: type[_Container]) -> list[_Container]: ...
def read_json_lines(path: str | os.PathLike, *, expect: type[_Container] | None = None) -> list[Any]:
    """The JSON value of each non-blank line of the UTF-8 file at `path` (JSON lines), in order;
    JSONFileError naming the file and the first line that is no JSON, or no `expect` (`dict` or
    `list`; any value without one)."""
    values = []
    # Split as bytes, so that a line that is not UTF-8 is named by its number.
    for number, line in enumerate(pathlib.Path(path).read_bytes().split(b"\n"), start=1):
        if line.strip():
            values.append(loads(line, path, line=number, expect=expect))
    return values


def member(obj: dict[str, Any], key: str, expect: type[_Container], source: str | os.PathLike) -> _Container:
    """`obj[key]`, a value of the JSON object `obj` read from `source`; JSONFileError naming `source`
    when `obj` has no `key` or its value is not an `expect` (`dict` or `list`)."""
    return _checked(obj.get(key, _ABSENT), expect, source, f"as {json.dumps(key)}")
