"""torch's file format (`torch.save` since torch 1.6), read without torch: fairseq's `.pt` files and
transformers' `pytorch_model.bin`.

A file is a zip archive: one pickle `<prefix>/data.pkl` holding the saved object, whose tensors
point at raw storages `<prefix>/data/<key>` (in the byte order `<prefix>/byteorder` names, little
endian without one). The pickle is read by `_RestrictedUnpickler`, which admits only torch's tensor
rebuild functions, storage types and dtypes, and the plain-data classes checkpoints pickle
(`argparse.Namespace`, OmegaConf's containers, nodes and metadata, enums, `collections.OrderedDict`,
builtin containers), the latter mapped to dicts and lists. Any other global is refused with a
one-line error naming it, and nothing a pickle names is ever called. Pre-1.6 torch files (tar or
bare pickle) are refused.

Tensors become NumPy arrays as torch's `_rebuild_tensor_v2` / `_v3` build them: the storage's
elements from `storage_offset` with `size` and `stride` (both in elements), copied out contiguous,
with the conj/neg bits of the tensor's metadata applied. A storage is read once and keeps the dtype
of its first reference, as torch's loader does; tensors sharing it (tied weights, slices of one
buffer) each get their own copy of their part. Every size a tensor names is checked against its
storage before anything is copied (`_rebuild_tensor`, `_Archive.storage`).

Reading costs memory bounded by the file's size on disk (`_Budget`): the bytes its storages and its
pickle decompress to, and the arrays copied out of them, may each total at most `_EXPANSION` times
the file's size, checked before anything is decompressed or copied (a zip bomb, or a stride-0 tensor
whose logical size is far beyond its storage, is refused in one line). Objects the pickle shares
(memo references) stay shared when converted to plain data, never expanded into a tree; plain data
that contains itself or nests deeper than `_MAX_DEPTH` is refused. The functions a pickle names are
wrapped afresh for each reference (`_Admitted`), so pickle's BUILD can't set attributes on ours.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import io
import math
import os
import pathlib
import pickle
import re
import sys
import tarfile
import zipfile
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

# torch's storage classes (`torch.save` names a tensor's storage by its dtype's legacy class; an
# `UntypedStorage` is bytes, its tensors carry their dtype, `_rebuild_tensor_v3`).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}
# The dtypes torch saves over an UntypedStorage (`torch.storage._new_dtypes`) that NumPy or ml_dtypes hold.
_TORCH_DTYPES = {
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}


# What one file may expand to, as a multiple of its size on disk, for its decompressed members and
# again for the arrays built from them. torch stores members uncompressed (1x) and copies a tied
# weight once per tensor that uses it (2x for a pair).
_EXPANSION = 4
# How deeply plain data may nest (a fairseq checkpoint's hydra config: under 10 levels).
_MAX_DEPTH = 100


class _Budget:
    """Bytes one read may still decompress or copy out (`_EXPANSION` times the file's size each)."""

    def __init__(self, file_size: int):
        self._file_size = file_size
        self._left = {"decompressed": _EXPANSION * file_size, "copied": _EXPANSION * file_size}

    def take(self, kind: str, nbytes: int, what: str) -> None:
        """Counts `nbytes` more of `kind` ("decompressed" or "copied"); raises UnpicklingError past the bound."""
        if nbytes > self._left[kind]:
            raise pickle.UnpicklingError(
                f"{what} would take {nbytes} bytes ({kind}), more than a file of {self._file_size} bytes may "
                f"expand to ({_EXPANSION}x its size): refused"
            )
        self._left[kind] -= nbytes


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    """One storage of the archive: `elements` 1-D, of the dtype its first reference named; `budget`:
    the read's bound on what tensors copy out of it."""

    elements: np.ndarray
    budget: _Budget


@dataclasses.dataclass(frozen=True)
class _DType:
    """A torch dtype named in a pickle (`_rebuild_tensor_v3`'s argument)."""

    dtype: np.dtype


class _Record:
    """A plain-data object (Namespace, OmegaConf container, node or metadata): its pickled state only.
    One subclass per admitted class (`_plain_class`), so pickle's NEWOBJ and REDUCE build it
    without running anything of the original class."""

    kind = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        # A dict, or (dict or None, slots dict) for classes with __slots__.
        if isinstance(state, tuple):
            state = {k: v for part in state if isinstance(part, dict) for k, v in part.items()}
        self.state = state


_RECORD_CLASSES: dict[str, type[_Record]] = {}


def _plain_class(kind: str) -> type[_Record]:
    if kind not in _RECORD_CLASSES:
        _RECORD_CLASSES[kind] = type(kind.rsplit(".", 1)[-1], (_Record,), {"kind": kind})
    return _RECORD_CLASSES[kind]


class _OrderedDict(dict):
    """`collections.OrderedDict` (a module's `state_dict()`): its items. The attributes it pickles
    (torch's `_metadata`: the modules' versions) are not read."""

    def __setstate__(self, state: Any) -> None:
        del state


@dataclasses.dataclass(frozen=True)
class _TypeName:
    """A class named only as a type in metadata, or an enum whose members are rebuilt from their
    value (fairseq's ChoiceEnum fields): calling it with one plain value gives that value."""

    name: str

    def __call__(self, *args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], str | int | float | bool | type(None)):
            return args[0]
        raise pickle.UnpicklingError(f"refusing to build {self.name} from {args!r}: only enum values are read")


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, metadata: Any = None, dtype: np.dtype | None = None
) -> np.ndarray:
    """A strided view of `storage` (of its own dtype, or of `dtype` over its bytes), copied, as
    torch's `Tensor.set_(storage, offset, size, stride)` sees it: bounds are checked only for
    tensors with elements. `metadata`'s conj and neg bits are applied to the copy."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    elements = storage.elements
    if dtype is not None:
        elements = elements.view(np.uint8)
        elements = elements[: elements.size - elements.size % dtype.itemsize].view(dtype)
    offset, size, stride = int(offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in (*size, *stride)) or offset < 0:
        raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, elements.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= elements.size:
        raise pickle.UnpicklingError(f"tensor of size {size} at offset {offset} overruns its storage ({elements.size})")
    # Before the copy: a stride-0 view of one element may name any logical size.
    storage.budget.take("copied", math.prod(size) * elements.itemsize, f"tensor of size {size}")
    view = np.lib.stride_tricks.as_strided(
        elements[offset:], shape=size, strides=[s * elements.itemsize for s in stride], writeable=False
    )
    array = np.array(view)
    metadata = metadata if isinstance(metadata, dict) else {}
    if metadata.get("conj"):
        array = np.conj(array)
    if metadata.get("neg"):
        array = np.negative(array)
    return array


def _rebuild_tensor_v2(
    storage: _Storage, offset: int, size: tuple, stride: tuple, requires_grad: Any, hooks: Any, metadata: Any = None
) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v2`: a tensor of its storage's dtype."""
    del requires_grad, hooks
    return _rebuild_tensor(storage, offset, size, stride, metadata)


def _rebuild_tensor_v3(
    storage: _Storage,
    offset: int,
    size: tuple,
    stride: tuple,
    requires_grad: Any,
    hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> np.ndarray:
    """`torch._utils._rebuild_tensor_v3`: a tensor of `dtype` over an untyped storage's bytes."""
    del requires_grad, hooks
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError(f"refusing a tensor of dtype {dtype!r}")
    return _rebuild_tensor(storage, offset, size, stride, metadata, dtype.dtype)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    """`torch._utils._rebuild_parameter(_with_state)`: an `nn.Parameter` is its data."""
    return data


def _rebuild_from_type(function: Callable, new_type: Any, args: tuple, state: Any) -> Any:
    """`torch._tensor._rebuild_from_type_v2`: the tensor `function` rebuilds (an admitted rebuild function)."""
    del new_type, state
    if getattr(function, "function", None) not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter):
        raise pickle.UnpicklingError(f"refusing to rebuild a tensor through {function!r}")
    return function(*args)


class _Admitted:
    """An admitted function, as `find_class` hands it to the pickle: a new wrapper per reference, whose
    state can't be set (pickle's BUILD would otherwise set attributes on our module's function for the
    rest of the process)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable):
        self.function = function

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)

    def __repr__(self) -> str:
        return f"<{self.function.__name__}>"

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set the state of {self.function.__name__} (pickle's BUILD)")


def _reconstructor(cls: Any, base: Any, state: Any) -> _Record:
    """`copyreg._reconstructor` (how protocols 0/1 pickle plain objects): only admitted classes."""
    del base, state
    if not (isinstance(cls, type) and issubclass(cls, _Record)):
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return cls.__new__(cls)


def _subscript(generic: Any, item: Any) -> _TypeName:
    """`operator.getitem` as `typing.Optional[int]` pickles: only on a type name."""
    if not isinstance(generic, _TypeName):
        raise pickle.UnpicklingError(f"refusing operator.getitem on {generic!r}")
    return _TypeName(f"{generic.name}[{item!r}]")


def _type_of(value: Any) -> _TypeName:
    """`builtins.type(None)`, as `NoneType` pickles."""
    if value is not None:
        raise pickle.UnpicklingError(f"refusing builtins.type({value!r})")
    return _TypeName("NoneType")


def _defaultdict(default_factory: Any = None, *_: Any) -> dict:
    """`collections.defaultdict` (OmegaConf's metadata): a plain dict; its factory is never called."""
    del default_factory
    return {}


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode`, as protocol 2 pickles bytes; only the latin-1 codec."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    """`numpy.core.multiarray.scalar` (logged metrics): numeric dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"refusing a NumPy scalar of {dtype!r}")
    return np.frombuffer(data, dtype)[0].item()


def _numpy_dtype(name: str, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(name, align, copy)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object dtype")
    return dtype


_FUNCTIONS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _latin1,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("collections", "OrderedDict"): _OrderedDict,
    ("collections", "defaultdict"): _defaultdict,
    ("operator", "getitem"): _subscript,
    ("builtins", "type"): _type_of,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
_PLAIN_CLASSES = {
    ("argparse", "Namespace"),
    ("omegaconf.dictconfig", "DictConfig"),
    ("omegaconf.listconfig", "ListConfig"),
    ("omegaconf.base", "ContainerMetadata"),
    ("omegaconf.base", "Metadata"),
    *(
        ("omegaconf.nodes", node)
        for node in (
            "AnyNode",
            "StringNode",
            "IntegerNode",
            "FloatNode",
            "BooleanNode",
            "EnumNode",
            "PathNode",
            "BytesNode",
            "ValueNode",
        )
    ),
}
# Modules whose classes may appear as types in OmegaConf metadata or as enums (values only).
_TYPE_MODULES = re.compile(r"^(typing|enum|fairseq(\..+)?)$")
_BUILTIN_TYPES = ("str", "int", "float", "bool", "bytes", "object")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a torch file's data.pkl: tensors, storages and plain data only (module docstring)."""

    def __init__(self, file: io.BytesIO, read_storage: Callable[[str, np.dtype, int], _Storage]):
        super().__init__(file, encoding="utf-8")
        self._read_storage = read_storage

    def find_class(self, module: str, name: str) -> Any:
        # torch pickles with protocol 2, which spells builtins the Python 2 way (`__builtin__.long`).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _FUNCTIONS:
            admitted = _FUNCTIONS[(module, name)]
            return admitted if isinstance(admitted, type) else _Admitted(admitted)
        if (module, name) in _PLAIN_CLASSES:
            return _plain_class(f"{module}.{name}")
        if (module == "torch" and name in _STORAGE_DTYPES) or (module, name) == ("torch.storage", "UntypedStorage"):
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        if module == "torch" and name in _TORCH_DTYPES:
            return _DType(np.dtype(_TORCH_DTYPES[name]))
        if module == "torch" and name == "Tensor":
            return _TypeName(f"torch.{name}")
        if module == "torch.nn.parameter" and name == "Parameter":
            return _TypeName(f"{module}.{name}")
        if (_TYPE_MODULES.match(module) and name[:1].isupper() and "." not in name) or (
            module == "builtins" and name in _BUILTIN_TYPES
        ):
            return _TypeName(f"{module}.{name}")
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only tensors and plain data are read")

    def persistent_load(self, pid: Any) -> _Storage:
        # torch.save's id of a storage: ("storage", storage type, key, location, elements).
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise pickle.UnpicklingError(f"unknown storage {pid!r}")
        return self._read_storage(key, storage_type.dtype, numel)


class _Archive:
    """The storages of one torch zip archive, each read once (`storage`)."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, budget: _Budget):
        self._archive, self._prefix, self._budget = archive, prefix, budget
        self._names = set(archive.namelist())
        byteorder = self._read("byteorder").decode() if f"{prefix}byteorder" in self._names else "little"
        if byteorder not in ("little", "big"):
            raise pickle.UnpicklingError(f"unknown byte order {byteorder!r}")
        self._swap = byteorder != sys.byteorder
        self._storages: dict[str, _Storage] = {}

    def _read(self, name: str) -> bytes:
        """Member `name`'s bytes, once its declared size fits the budget (zipfile reads no more than it
        declares, and checks its CRC)."""
        info = self._archive.getinfo(self._prefix + name)
        self._budget.take("decompressed", info.file_size, self._prefix + name)
        return self._archive.read(info)

    def read_pickle(self) -> bytes:
        """The archive's `data.pkl`."""
        return self._read("data.pkl")

    def storage(self, key: str, dtype: np.dtype, numel: int) -> _Storage:
        """`numel` elements of `dtype` from `data/<key>`; a key read before keeps its first dtype (torch's loader)."""
        if key not in self._storages:
            if f"{self._prefix}data/{key}" not in self._names:
                raise pickle.UnpicklingError(f"storage {key} missing from the archive")
            data = self._read(f"data/{key}")
            if numel < 0 or len(data) < numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {len(data)} bytes, fewer than its {numel} elements of {dtype}"
                )
            array = np.frombuffer(data, dtype, count=numel)
            # As torch: swapped by the storage's element size (an untyped storage's bytes stay as they are).
            self._storages[key] = _Storage(array.byteswap() if self._swap else array, self._budget)
        return self._storages[key]


def _plain(value: Any) -> Any:
    """Records -> dicts (Namespace: its attributes; DictConfig: its content), nodes -> their values.

    An object the pickle shares is converted once and stays shared (a DAG is never expanded into a
    tree); data that contains itself, or nests deeper than `_MAX_DEPTH`, raises UnpicklingError."""
    converted: dict[int, Any] = {}
    open_ids: set[int] = set()

    def convert(value: Any, depth: int) -> Any:
        if not isinstance(value, _Record | dict | list | tuple):
            return value
        if id(value) in converted:
            return converted[id(value)]
        if id(value) in open_ids:
            raise pickle.UnpicklingError(f"the pickle holds a {type(value).__name__} that contains itself")
        if depth > _MAX_DEPTH:
            raise pickle.UnpicklingError(f"the pickle's data nests deeper than {_MAX_DEPTH} levels")
        open_ids.add(id(value))
        if isinstance(value, _Record):
            state = value.state if isinstance(value.state, dict) else {}
            if value.kind == "argparse.Namespace":
                result: Any = {k: convert(v, depth + 1) for k, v in state.items()}
            elif value.kind.endswith("Metadata"):
                result = None
            else:
                result = convert(state.get("_content", state.get("_val")), depth + 1)
        elif isinstance(value, dict):
            result = {k: convert(v, depth + 1) for k, v in value.items()}
        else:
            result = type(value)(convert(v, depth + 1) for v in value)
        open_ids.discard(id(value))
        converted[id(value)] = result
        return result

    return convert(value, 0)


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The dict a `torch.save`d file holds (a fairseq `.pt`, a `pytorch_model.bin`), tensors as NumPy
    arrays and plain data as dicts and lists, read without torch (module docstring). Raises a
    ValueError naming the problem (a refused global, a legacy torch file, a damaged archive)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    budget = _Budget(path.stat().st_size)
    if not zipfile.is_zipfile(path):
        legacy = "a tar archive" if tarfile.is_tarfile(path) else "not a zip archive"
        raise ValueError(
            f"{path}: {legacy}; only torch's zip format (torch >= 1.6) is read: re-save it with "
            "torch.save(torch.load(path, weights_only=False), path) where you trust it"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise ValueError(f"expected one */data.pkl in torch's zip format, found {pickles}")
            prefix = pickles[0][: -len("data.pkl")]
            storages = _Archive(archive, prefix, budget)
            data = storages.read_pickle()
            state = _plain(_RestrictedUnpickler(io.BytesIO(data), storages.storage).load())
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path}: a damaged zip archive ({error})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state
