"""w2v_jax/json_files.py: supplied JSON read with one line naming the file for any bad input."""

import json
import re
import sys
import tracemalloc

import pytest

from tests.support import NESTED_JSON
from w2v_jax.json_files import JSONFileError, loads, member, read_json, read_json_lines


def _depth(n: int) -> int:
    return 0 if n == 0 else 1 + _depth(n - 1)


@pytest.mark.parametrize("text", [NESTED_JSON, "[" * 100_000, NESTED_JSON.encode()])
def test_nesting_too_deep_is_one_line_and_the_process_goes_on(text):
    for _ in range(2):  # the same again: the parser's failure left nothing behind
        with pytest.raises(JSONFileError) as error:
            loads(text, "some/config.json")
        message = str(error.value)
        assert message == (
            f"some/config.json: JSON nested deeper than Python's recursion limit ({sys.getrecursionlimit()}) allows"
        )
        assert error.value.source == "some/config.json" and message.endswith(error.value.problem)
    # The interpreter recurses as deep as before and parses as before.
    assert _depth(sys.getrecursionlimit() - 100) == sys.getrecursionlimit() - 100
    assert loads("[[1], {}]", "x") == json.loads("[[1], {}]")


def test_malformed_text_and_bytes_name_the_file_and_the_position(tmp_path):
    path = tmp_path / "vocab.json"
    name = re.escape(str(path))
    path.write_text('{\n  "a": 1,\n  "b" 2\n}')
    with pytest.raises(JSONFileError, match=rf"^{name}: not valid JSON \(Expecting ':' delimiter: line 3 column 7\)$"):
        read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(JSONFileError, match=rf"^{name}: not UTF-8 text \(invalid start byte at byte 7\)$"):
        read_json(path)
    # UTF-16 is no UTF-8, though `json.loads` of the bytes would guess it.
    path.write_bytes('{"a": 1}'.encode("utf-16"))
    with pytest.raises(JSONFileError, match="not UTF-8 text"):
        read_json(path)
    path.write_text('{"a": [1, "\u00e9"]}', encoding="utf-8")
    assert read_json(path) == {"a": [1, "\u00e9"]}


def test_json_lines_name_the_line_and_skip_blank_ones(tmp_path):
    path = tmp_path / "metadata.jsonl"
    name = re.escape(str(path))
    path.write_text('{"path": "a"}\n\n  \n{"path": "b", "text": "x\u2028y"}\r\n')
    assert read_json_lines(path) == [{"path": "a"}, {"path": "b", "text": "x\u2028y"}]
    path.write_text('{"path": "a"}\n\n' + NESTED_JSON + "\n")
    with pytest.raises(JSONFileError, match=rf"^{name}: JSON nested deeper than .* allows \(line 3\)$"):
        read_json_lines(path)
    path.write_text('{"path": "a"}\n{"path": }\n')
    with pytest.raises(JSONFileError, match=rf"^{name}: not valid JSON \(Expecting value: line 2 column 10\)$"):
        read_json_lines(path)


@pytest.mark.parametrize(
    "text, expect, found",
    [
        ("[]", dict, "an array"),
        ("3", dict, "a number"),
        ("2.5", dict, "a number"),
        ('"a"', dict, "a string"),
        ("true", dict, "a boolean"),
        ("null", dict, "null"),
        ('{"a": 1}', list, "an object"),
    ],
)
def test_a_value_of_the_wrong_type_names_what_was_expected_and_found(tmp_path, text, expect, found):
    wanted = f"expected a JSON {'object' if expect is dict else 'array'} at the top level, found {found}"
    with pytest.raises(JSONFileError) as error:
        loads(text, "some/config.json", expect=expect)
    assert str(error.value) == f"some/config.json: {wanted}" and error.value.problem == wanted
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(JSONFileError, match=rf"^{re.escape(str(path))}: {wanted}$"):
        read_json(path, expect=expect)
    lines = tmp_path / "rows.jsonl"
    lines.write_text(f"{'[1]' if expect is list else '{}'}\n\n{text}\n")
    with pytest.raises(JSONFileError, match=rf"^{re.escape(str(lines))}: {wanted} \(line 3\)$"):
        read_json_lines(lines, expect=expect)


def test_the_expected_type_is_given_back_and_no_expectation_takes_any_value(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": [1]}\n[2]\n"x"\n')
    assert read_json_lines(path) == [{"a": [1]}, [2], "x"]
    path.write_text('{"a": [1]}\n{}\n')
    assert read_json_lines(path, expect=dict) == [{"a": [1]}, {}]
    path.write_text('{"a": [1]}')
    assert read_json(path, expect=dict) == {"a": [1]} and loads("[2]", "x", expect=list) == [2]
    assert member({"weight_map": {"w": "a.safetensors"}}, "weight_map", dict, "x") == {"w": "a.safetensors"}


@pytest.mark.parametrize(
    "obj, found",
    [({}, "nothing"), ({"weight_map": None}, "null"), ({"weight_map": ["a.safetensors"]}, "an array")],
)
def test_a_member_of_an_object_is_checked_like_the_top_level(obj, found):
    with pytest.raises(JSONFileError) as error:
        member(obj, "weight_map", dict, "index.json")
    assert str(error.value) == f'index.json: expected a JSON object as "weight_map", found {found}'


def test_a_deep_file_is_refused_within_a_few_times_its_size(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * (1 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(JSONFileError, match="nested deeper"):
            read_json(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * (1 << 20) + (512 << 10)  # the bytes and their text, 1 MiB each, and little else
