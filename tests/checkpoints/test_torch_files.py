"""torch's zip format read without torch (`checkpoints.torch_files`): every tensor as `torch.load`
gives it, bit for bit, and nothing but tensors and plain data unpickled."""

import collections
import io
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from w2v_jax.checkpoints.torch_files import read_torch_checkpoint

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.bfloat16: ml_dtypes.bfloat16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
    torch.uint16: np.uint16,
    torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
    torch.complex64: np.complex64,
}


def _bytes(tensor: torch.Tensor) -> bytes:
    """The tensor's values in C order, as raw bytes (any dtype, conj/neg bits resolved)."""
    resolved = tensor.resolve_conj().resolve_neg().contiguous().reshape(-1)
    return resolved.view(torch.uint8).numpy().tobytes()


def _assert_bit_identical(read: dict, loaded: dict) -> None:
    assert read.keys() == loaded.keys()
    for name, tensor in loaded.items():
        array = read[name]
        assert isinstance(array, np.ndarray), name
        assert array.dtype == np.dtype(_NUMPY_DTYPES[tensor.dtype]), name
        assert array.shape == tuple(tensor.shape), name
        assert array.tobytes() == _bytes(tensor), name


def test_a_state_dict_reads_back_bit_identical_to_torch_load(tmp_path):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 10, generator=generator)
    shared = torch.randn(40, generator=generator)
    state = {
        "float32": weight,
        "float16": torch.randn(3, 5, generator=generator).half(),
        "bfloat16": torch.randn(7, generator=generator).bfloat16(),
        "int64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "bool": torch.randn(9, generator=generator) > 0,
        # a non-contiguous view: transposed, then every other row of the transpose
        "strided": weight.t()[::2],
        # two tensors over one storage (tied weights), one at an offset with its own shape
        "tied_a": shared,
        "tied_b": shared[8:32].view(4, 6),
        "scalar": torch.tensor(2.5),
        "empty": weight[:0],
        # an expanded (stride 0) view
        "expanded": torch.randn(3, 1, generator=generator).expand(3, 4),
        # dtypes torch saves over an untyped storage (`_rebuild_tensor_v3`)
        "uint16": torch.arange(0, 60000, 7000, dtype=torch.int32).to(torch.uint16),
        "float8": torch.randn(8, generator=generator).to(torch.float8_e4m3fn),
        # a lazily negated view (the tensor's metadata carries the neg bit)
        "negated": torch.randn(4, dtype=torch.complex64, generator=generator).conj().imag,
        "conjugated": torch.randn(4, dtype=torch.complex64, generator=generator).conj(),
    }
    assert not state["strided"].is_contiguous() and state["tied_b"].storage_offset() == 8
    assert state["negated"].is_neg() and state["conjugated"].is_conj()
    torch.save(state, tmp_path / "state.pt")
    _assert_bit_identical(
        read_torch_checkpoint(tmp_path / "state.pt"), torch.load(tmp_path / "state.pt", weights_only=True)
    )


def test_a_modules_state_dict_with_parameters_and_its_metadata(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 3, bias=False))
    module[2].weight = module[0].weight  # tied: one storage in the file
    state = module.state_dict()
    assert isinstance(state, collections.OrderedDict) and state._metadata  # pickled as the dict's state
    torch.save(state, tmp_path / "module.pt")
    # nn.Parameter objects themselves, as `torch.save(dict(module.named_parameters()))` writes them
    torch.save(dict(module.named_parameters()), tmp_path / "parameters.pt")
    for name in ("module.pt", "parameters.pt"):
        read = read_torch_checkpoint(tmp_path / name)
        assert type(read) is dict
        loaded = {k: v.detach() for k, v in torch.load(tmp_path / name, weights_only=True).items()}
        _assert_bit_identical(read, loaded)


def test_a_big_endian_file_is_byteswapped(tmp_path):
    values = torch.linspace(-3, 3, 7)
    buffer = io.BytesIO()
    torch.save({"w": values}, buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(tmp_path / "big.pt", "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in item:
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            target.writestr(item, data)
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "big.pt")["w"], values.numpy())


def _pickled_checkpoint(path, payload: bytes, storages: dict[str, bytes] | None = None):
    """A torch-format zip whose data.pkl is `payload`."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)


class _RunsCode:
    def __reduce__(self):
        return (__import__("os").system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _pickled_checkpoint(tmp_path / "evil.pt", pickle.dumps({"model": _RunsCode()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle posix\.system"):
        read_torch_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    # getattr-based gadgets, and a plain class named as an enum but called with arguments.
    _pickled_checkpoint(tmp_path / "gadget.pt", b"\x80\x02cbuiltins\ngetattr\nq\x00.")
    with pytest.raises(ValueError, match=r"refusing to unpickle builtins\.getattr"):
        read_torch_checkpoint(tmp_path / "gadget.pt")


def test_legacy_and_damaged_files_are_one_line_errors(tmp_path):
    torch.save({"model": {}}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="only torch's zip format"):
        read_torch_checkpoint(tmp_path / "legacy.pt")
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4)}, buffer)
    with zipfile.ZipFile(buffer) as source:
        records = {item: source.read(item) for item in source.namelist()}
    for name, keep in (("cut.pt", lambda item: "/data/" not in item), ("short.pt", lambda item: True)):
        with zipfile.ZipFile(tmp_path / name, "w") as target:
            for item, data in records.items():
                if keep(item):
                    target.writestr(item, data[:8] if "/data/" in item else data)
    with pytest.raises(ValueError, match="missing from the archive"):
        read_torch_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"storage 0 holds 8 bytes, fewer than its 4 elements of float32"):
        read_torch_checkpoint(tmp_path / "short.pt")


class _StorageRef:
    """Pickled by `_TensorPickler` as torch's id of storage "0": 4 float32 elements."""


class _Tensor:
    """Pickles as torch's `_rebuild_tensor_v2(storage, offset, size, stride, ...)` with any layout."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class _TensorPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _StorageRef) else None


def _tensor_file(path, tensor: _Tensor) -> None:
    buffer = io.BytesIO()
    _TensorPickler(buffer, protocol=2).dump({"w": tensor})
    _pickled_checkpoint(path, buffer.getvalue(), {"0": np.arange(4, dtype=np.float32).tobytes()})


def test_tensors_outside_their_storage_or_over_a_non_storage_are_refused(tmp_path):
    _tensor_file(tmp_path / "fits.pt", _Tensor(_StorageRef(), 1, (3,), (1,)))
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "fits.pt")["w"], [1.0, 2.0, 3.0])
    _tensor_file(tmp_path / "overrun.pt", _Tensor(_StorageRef(), 1, (2, 2), (2, 1)))
    with pytest.raises(ValueError, match=r"tensor of size \(2, 2\) at offset 1 overruns its storage \(4\)"):
        read_torch_checkpoint(tmp_path / "overrun.pt")
    _tensor_file(tmp_path / "negative.pt", _Tensor(_StorageRef(), 3, (2,), (-1,)))
    with pytest.raises(ValueError, match="bad tensor layout"):
        read_torch_checkpoint(tmp_path / "negative.pt")
    # A rebuilt [2, 2] tensor is not a storage: read as one, a row offset would pass the bounds check.
    _tensor_file(tmp_path / "nested.pt", _Tensor(_Tensor(_StorageRef(), 0, (2, 2), (2, 1)), 1, (4,), (1,)))
    with pytest.raises(ValueError, match="a tensor's storage is a ndarray, not a storage"):
        read_torch_checkpoint(tmp_path / "nested.pt")
