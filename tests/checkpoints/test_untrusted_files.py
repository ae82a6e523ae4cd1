"""Untrusted files stay small: each attack of a few hundred bytes (pickles written opcode by opcode,
no torch) is refused in one line with the memory it costs bounded by the file's size, and nothing of
ours is mutated. Covers `torch_files` (the reader of fairseq's `.pt` and transformers'
`pytorch_model.bin`), fairseq's config fields, `integrity.json`, `import_processor_lm` and every JSON
file of a checkpoint folder (nested too deep to parse)."""

import json
import pathlib
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from tests.support import NESTED_JSON
from w2v_jax.asr.processor_lm import import_processor_lm
from w2v_jax.checkpoints import torch_files
from w2v_jax.checkpoints.fairseq import load_fairseq_checkpoint
from w2v_jax.checkpoints.folder import DamagedCheckpointError, verify_integrity
from w2v_jax.checkpoints.hf import load_vocabulary
from w2v_jax.checkpoints.loading import load_model, stored_input_normalization
from w2v_jax.config import Wav2Vec2Config
from w2v_jax.data.vocabulary import Vocabulary

# Pickle opcodes (pickletools names) of protocol 2.
PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
EMPTY_LIST, EMPTY_DICT, APPEND, SETITEM, REDUCE, BUILD, BINPERSID = b"]", b"}", b"a", b"s", b"R", b"b", b"Q"
NEWFALSE, POP = b"\x89", b"0"


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def put(slot: int) -> bytes:
    return b"q" + bytes([slot])


def get(slot: int) -> bytes:
    return b"h" + bytes([slot])


def ints(values) -> bytes:
    return MARK + b"".join(integer(v) for v in values) + TUPLE


def tensor(key: str, numel: int, size, stride) -> bytes:
    """`_rebuild_tensor_v2(storage key of numel float32, 0, size, stride, False, OrderedDict())`."""
    storage = MARK + text("storage") + glob("torch", "FloatStorage") + text(key) + text("cpu") + integer(numel)
    storage += TUPLE + BINPERSID
    ordered = glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
    args = MARK + storage + integer(0) + ints(size) + ints(stride) + NEWFALSE + ordered + TUPLE
    return glob("torch._utils", "_rebuild_tensor_v2") + args + REDUCE


def entry(name: str, value: bytes) -> bytes:
    """A top-level `{name: value}` dict's pickle."""
    return PROTO + EMPTY_DICT + text(name) + value + SETITEM + STOP


def write_archive(path: pathlib.Path, payload: bytes, storages=None, compression=zipfile.ZIP_STORED) -> int:
    """A torch-format zip around the pickle `payload`; returns its size in bytes."""
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr("archive/data.pkl", payload)
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
    return path.stat().st_size


def refused_within(path: pathlib.Path, match: str, read=torch_files.read_torch_checkpoint) -> int:
    """Asserts `read(path)` is a one-line ValueError matching `match`; returns its peak traced memory."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match) as info:
            read(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    return peak


# Peak memory of a refused read: the file's bytes a few times over plus the interpreter's own
# allocations while unpickling (measured: under 100 KiB for all of these files).
def memory_bound(file_size: int) -> int:
    return 16 * file_size + 512 * 1024


def test_a_stride_0_tensor_is_refused_before_its_copy(tmp_path):
    path = tmp_path / "expanded.pt"
    # One float32 element viewed as [4096, 4096] (64 MiB once copied out).
    size = write_archive(path, entry("w", tensor("0", 1, (4096, 4096), (0, 0))), {"0": b"\0\0\x80?"})
    assert size < 1000
    peak = refused_within(path, r"tensor of size \(4096, 4096\) would take 67108864 bytes .*refused")
    assert peak < memory_bound(size), peak


def test_a_zip_bomb_storage_is_refused_before_it_is_decompressed(tmp_path):
    path = tmp_path / "bomb.pt"
    numel = 1 << 20  # 4 MiB of zeros, deflated to a few KiB
    size = write_archive(
        path, entry("w", tensor("0", numel, (numel,), (1,))), {"0": bytes(4 * numel)}, zipfile.ZIP_DEFLATED
    )
    assert size < 8000
    peak = refused_within(path, r"archive/data/0 would take 4194304 bytes \(decompressed\).*refused")
    assert peak < memory_bound(size), peak


def test_shared_references_are_read_as_a_dag_never_expanded(tmp_path):
    """Twenty levels of a list holding the level below twice: a 2**20-leaf tree if expanded."""
    depth = 20
    levels = EMPTY_LIST + text("leaf") + APPEND + put(0) + POP
    for level in range(1, depth + 1):
        levels += EMPTY_LIST + get(level - 1) + APPEND + get(level - 1) + APPEND + put(level) + POP
    payload = PROTO + levels + EMPTY_DICT + text("a") + get(depth) + SETITEM + STOP
    path = tmp_path / "dag.pt"
    size = write_archive(path, payload)
    assert size < 1000
    tracemalloc.start()
    try:
        read = torch_files.read_torch_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < memory_bound(size), peak
    node = read["a"]
    for _ in range(depth):
        assert node[0] is node[1]  # shared, as in the pickle
        node = node[0]
    assert node == ["leaf"]


def test_deep_nesting_and_self_reference_are_one_line_errors(tmp_path):
    depth = 5000
    nested = PROTO + EMPTY_DICT + text("a") + EMPTY_LIST * depth + APPEND * (depth - 1) + SETITEM + STOP
    size = write_archive(tmp_path / "deep.pt", nested)
    assert refused_within(tmp_path / "deep.pt", "nests deeper than 100 levels") < memory_bound(size)
    itself = entry("a", EMPTY_LIST + put(0) + get(0) + APPEND)
    write_archive(tmp_path / "itself.pt", itself)
    refused_within(tmp_path / "itself.pt", "holds a list that contains itself")


def test_build_on_an_admitted_function_is_refused_and_mutates_nothing(tmp_path):
    state = EMPTY_DICT + text("pwned") + text("yes") + SETITEM
    write_archive(tmp_path / "build.pt", entry("f", glob("torch._utils", "_rebuild_tensor_v2") + state + BUILD))
    refused_within(tmp_path / "build.pt", "refusing to set the state of _rebuild_tensor_v2")
    assert not hasattr(torch_files._rebuild_tensor_v2, "pwned")
    # The classes admitted as constructors have no state to set either.
    write_archive(tmp_path / "class.pt", entry("d", glob("collections", "OrderedDict") + state + BUILD))
    refused_within(tmp_path / "class.pt", ".")
    assert not hasattr(torch_files._OrderedDict, "pwned")


def fairseq_file(path: pathlib.Path, model_fields: dict) -> pathlib.Path:
    """A `.pt` of plain data (no tensor): a hydra `cfg` whose model section is `model_fields`."""
    model = {"_name": "wav2vec2", "quantize_targets": True, **model_fields}
    state = {"model": {}, "cfg": {"model": model, "task": {}, "criterion": {}}}
    write_archive(path, pickle.dumps(state, protocol=2))
    return path


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("[(512, 10, 5)] * 30000000", "repeats 1 items 30000000 times"),
        ("[(512, 10, 5)] * 8 * 8 * 8", "repeats 64 items 8 times"),
        ("[" * 300 + "]" * 300, "is not a list of"),
        ("[(512, 10, 5)]" + " + [(1, 1, 1)]" * 60, "nested deeper than 20"),
        ("x" * 2000, "at most 1000 characters"),
    ],
    ids=["huge_repeat", "repeated_repeat", "deep_brackets", "long_chain", "long_string"],
)
def test_conv_feature_layers_are_parsed_within_bounds(tmp_path, spec, match):
    path = fairseq_file(tmp_path / "conv.pt", {"conv_feature_layers": spec})
    peak = refused_within(path, match, read=load_fairseq_checkpoint)
    assert peak < memory_bound(path.stat().st_size), peak


def test_self_referential_interpolations_are_one_line_errors(tmp_path):
    path = fairseq_file(tmp_path / "cycle.pt", {"encoder_layers": "${model.depth}", "depth": "${model.encoder_layers}"})
    cycle = r"interpolations form a cycle: \$\{model.depth\} -> \$\{model.encoder_layers\} -> \$\{model.depth\}"
    refused_within(path, cycle, read=load_fairseq_checkpoint)
    chain = {f"f{i}": f"${{model.f{i + 1}}}" for i in range(200)}
    path = fairseq_file(tmp_path / "chain.pt", {"encoder_layers": "${model.f0}", **chain})
    refused_within(path, "deeper than 100 levels", read=load_fairseq_checkpoint)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "link.bin"])
def test_integrity_record_names_outside_the_folder_are_refused(tmp_path, name):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"secret")
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    (folder / "integrity.json").write_text('{"sha256": {"%s": "00"}}' % name)
    with pytest.raises(DamagedCheckpointError, match="which is not a file of the folder: refused"):
        verify_integrity(folder)


def test_symbolic_links_out_of_a_transformers_folder_are_not_followed(tmp_path):
    source = tmp_path / "hf"
    lm = source / "language_model"
    lm.mkdir(parents=True)
    (lm / "attrs.json").write_text('{"alpha": 0.5, "beta": 1.0}')
    (lm / "unigrams.txt").write_text("a\n")
    secret = tmp_path / "secret.arpa"
    secret.write_text("\\data\\\n")
    (lm / "lm.arpa").symlink_to(secret)
    vocabulary = Vocabulary.from_symbols(["a", "b"])
    destination = tmp_path / "ours"
    destination.mkdir()
    with pytest.raises(ValueError, match=r"lm\.arpa: a symbolic link out of .*hf: refused"):
        import_processor_lm(source, destination, vocabulary)
    assert not (destination / "language_model").exists()
    (lm / "lm.arpa").unlink()
    (lm / "lm.arpa").symlink_to("/dev/zero")  # would be copied forever
    with pytest.raises(ValueError, match="refused"):
        import_processor_lm(source, destination, vocabulary)


# Each JSON file of a checkpoint folder, the files its reader needs beside it, the reader, and the
# error it raises (one naming the file, or the reader's own damage type).
JSON_READERS = [
    # A transformers folder's config, read by the loader before any weight.
    ("config.json", {"model.safetensors": ""}, load_model, ValueError),
    (
        "model.safetensors.index.json",
        {"config.json": json.dumps(Wav2Vec2Config().to_hf_dict())},
        load_model,
        ValueError,
    ),
    ("tokenizer_config.json", {"vocab.json": '{"<pad>": 0, "<unk>": 1}'}, load_vocabulary, ValueError),
    ("preprocessor_config.json", {}, stored_input_normalization, ValueError),
    # A training workdir's run config.
    ("config.json", {"checkpoints/1/_CHECKPOINT_METADATA": "{}"}, load_model, ValueError),
    ("integrity.json", {}, verify_integrity, DamagedCheckpointError),
    (
        "language_model/attrs.json",
        {"language_model/lm.arpa": ""},
        lambda folder: import_processor_lm(folder, folder / "ours", Vocabulary.from_symbols(["a"])),
        ValueError,
    ),
]


def _write(folder: pathlib.Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)


@pytest.mark.parametrize("nested, beside, read, refusal", JSON_READERS)
def test_json_nested_too_deep_to_parse_is_one_line_naming_the_file(tmp_path, nested, beside, read, refusal):
    _write(tmp_path, {**beside, nested: NESTED_JSON})
    with pytest.raises(refusal) as error:
        read(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / nested}: ") and "nested deeper" in message and "\n" not in message


@pytest.mark.parametrize("content, found", [("[]", "an array"), ("3", "a number")])
@pytest.mark.parametrize("name, beside, read, refusal", JSON_READERS)
def test_json_of_another_type_than_an_object_is_one_line_naming_the_file(
    tmp_path, name, beside, read, refusal, content, found
):
    _write(tmp_path, {**beside, name: content})
    with pytest.raises(refusal) as error:
        read(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / name}: ") and "\n" not in message
    # Alone, or in the reader's own words (a damaged integrity record, not pyctcdecode's attrs.json).
    assert f"expected a JSON object at the top level, found {found}" in message


@pytest.mark.parametrize(
    "index, problem",
    [
        ("{}", 'expected a JSON object as "weight_map", found nothing'),
        ('{"weight_map": ["model-1.safetensors"]}', 'expected a JSON object as "weight_map", found an array'),
        ('{"weight_map": {"w": 1}}', 'expected a file name for each weight of "weight_map"'),
        ('{"weight_map": {"w": ["model-1.safetensors"]}}', 'expected a file name for each weight of "weight_map"'),
    ],
)
def test_a_safetensors_index_without_a_map_of_file_names_is_one_line(tmp_path, index, problem):
    _write(tmp_path, {"config.json": json.dumps(Wav2Vec2Config().to_hf_dict()), "model.safetensors.index.json": index})
    with pytest.raises(ValueError) as error:
        load_model(tmp_path)
    assert str(error.value) == f"{tmp_path / 'model.safetensors.index.json'}: {problem}"


def test_a_real_array_still_reads_with_its_copy_counted(tmp_path):
    """Within the bound: a file's own arrays, a tied copy and an expanded view of a small one."""
    data = np.arange(256, dtype=np.float32)
    payload = PROTO + EMPTY_DICT
    for name, layout in (("w", ((256,), (1,))), ("tied", ((16, 16), (16, 1))), ("expanded", ((4, 64), (0, 1)))):
        payload += text(name) + tensor("0", 256, *layout) + SETITEM
    path = tmp_path / "fine.pt"
    write_archive(path, payload + STOP, {"0": data.tobytes()})
    read = torch_files.read_torch_checkpoint(path)
    np.testing.assert_array_equal(read["w"], data)
    np.testing.assert_array_equal(read["tied"], data.reshape(16, 16))
    np.testing.assert_array_equal(read["expanded"], np.broadcast_to(data[:64], (4, 64)))


def test_a_link_loop_is_a_one_line_refusal(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "loop.bin").symlink_to(folder / "loop.bin")
    (folder / "integrity.json").write_text('{"sha256": {"loop.bin": "00"}}')
    with pytest.raises(DamagedCheckpointError, match=r"loop\.bin: missing"):
        verify_integrity(folder)
    lm = tmp_path / "hf" / "language_model"
    lm.mkdir(parents=True)
    (lm / "loop.arpa").symlink_to(lm / "loop.arpa")
    with pytest.raises(ValueError, match=r"loop\.arpa: neither a folder nor a regular file: refused"):
        import_processor_lm(tmp_path / "hf", tmp_path, Vocabulary.from_symbols(["a"]))
