"""Read PyTorch checkpoint files (`torch.save`) into numpy, without torch and without running code in them.

A `.pt` file is a pickle, and unpickling can call any importable function (`os.system` included). This reader
unpickles through an allowlist: the unpickler resolves every class or function a pickle names through
`RestrictedUnpickler.find_class`, which hands out only

* tensors and storages: torch's tensor rebuild functions (``torch._utils._rebuild_tensor_v2`` and kin) and
  storage types, replaced by our own functions that build numpy arrays (torch is never imported);
* plain containers and scalars: dict, list, tuple, set, ``collections.OrderedDict`` / ``defaultdict`` (of a
  plain factory), int, float, str, bytes (``_codecs.encode`` of latin-1 text, as protocol 2 writes bytes);
* ``argparse.Namespace`` (fairseq's ``args`` and, in OFA checkpoints, ``cfg["model"]``);
* numpy arrays, dtypes and scalars of non-object dtypes (fairseq's meters sometimes hold them);
* omegaconf containers (``DictConfig``, ``ListConfig``, their nodes and metadata) as stand-in classes defined
  here, which only record their pickled state and are turned into plain dicts and lists afterwards; omegaconf
  is never imported. ``typing.Any`` / ``Dict`` / ``List``… appear in their metadata and are admitted as
  symbols; classes under ``fairseq.`` (dataclass types named in that metadata) become inert references
  that refuse to be called or instantiated.

Anything else is refused when the pickle *names* it, before it can be called: `UnsafeCheckpointError` names
the module and the class or function. Tensor views are bounds-checked against their storage.

Both of torch's file formats are read: the zip archive (torch >= 1.6: ``<name>/data.pkl`` plus one file per
storage under ``<name>/data/``) and the legacy single-stream format (magic number, protocol and system-info
pickles, the object pickle, then the storages in order). Tensors come back as numpy arrays of their own dtype
(float16 stays float16, bfloat16 is ``ml_dtypes.bfloat16``); nothing is upcast here.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import codecs
import collections
import io
import pickle
import struct
import typing
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint; the message names the file (and the key or class)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The pickle names a class or function outside the allowlist; nothing of it was called."""


# --------------------------------------------------------------------------------------------------------
# Tensors and storages
# --------------------------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}  # fmt: skip


class _StorageType:
    """What `torch.HalfStorage` etc. resolve to: a marker carrying the numpy dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _TorchDtype:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_TORCH_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageRef:
    """A storage named by a persistent id; its bytes are read after the pickle (`_materialize`)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class LazyTensor:
    """A tensor of the pickle, before its storage bytes are attached: (storage, offset, size, stride)."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        if not isinstance(storage, _StorageRef):
            raise pickle.UnpicklingError(f"tensor rebuild: expected a storage, got {type(storage).__name__}")
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(n) for n in size)
        self.stride = tuple(int(n) for n in stride)
        if len(self.size) != len(self.stride) or self.offset < 0 or min(self.size, default=0) < 0:
            raise pickle.UnpicklingError(
                f"tensor rebuild: bad geometry {self.offset=} {self.size} {self.stride}"
            )

    def to_numpy(self, storage: np.ndarray, where: str) -> np.ndarray:
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, storage.dtype)
        if min(self.stride, default=0) < 0:
            raise CheckpointError(f"{where}: negative stride {self.stride}")
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if last >= storage.size:  # a view reaching outside its storage: never read past the buffer
            raise CheckpointError(
                f"{where}: a tensor of size {self.size} (offset {self.offset}, stride {self.stride}) reaches "
                f"element {last}, but its storage {self.storage.key!r} has {storage.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            storage[self.offset :],
            shape=self.size,
            strides=tuple(s * storage.itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, copy=True, order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> LazyTensor:
    """torch._utils._rebuild_tensor(_v2)(storage, offset, size, stride[, requires_grad, hooks, metadata])."""
    return LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None) -> Any:
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> Any:
    if not isinstance(new_type, _TensorType):
        raise pickle.UnpicklingError(f"_rebuild_from_type_v2: type {new_type!r} is not a tensor type")
    return func(*args)


class _TensorType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------------------------
# omegaconf stand-ins (state recorded, converted to plain data by `plain_data`)
# --------------------------------------------------------------------------------------------------------


class _OmegaObject:
    """An omegaconf object as pickled: `DictConfig`/`ListConfig` keep `_content`, nodes keep `_val`."""

    omega_name = "omegaconf object"

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"{self.omega_name}: expected a dict state, got {type(state).__name__}"
            )
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.omega_name} stand-in>"


def _omega_class(name: str) -> type:
    return type(name.rsplit(".", 1)[-1], (_OmegaObject,), {"omega_name": name})


_OMEGA_NAMES = [
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    *(
        f"omegaconf.nodes.{n}"
        for n in (
            "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "BytesNode",
            "PathNode", "ValueNode", "InterpolationResultNode",
        )
    ),
]  # fmt: skip
_OMEGA_CLASSES = {name: _omega_class(name) for name in _OMEGA_NAMES}


class _InertReference:
    """Base of the inert stand-ins for classes under `fairseq.`: referenced as data, never instantiated."""

    qualified_name = "fairseq class"

    def __new__(cls, *args: Any, **kwargs: Any):
        raise UnsafeCheckpointError(
            f"refused to instantiate {cls.qualified_name}: checkpoint classes from fairseq are not loaded"
        )


def _inert_reference(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[-1], (_InertReference,), {"qualified_name": qualified})


# --------------------------------------------------------------------------------------------------------
# The allowlist
# --------------------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes: only str -> latin-1 bytes."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("iso8859-1", "latin-1"):
        raise UnsafeCheckpointError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


_PLAIN_FACTORIES = (None, dict, list, set, int, float, str, collections.OrderedDict)


def _defaultdict(factory=None, *items) -> collections.defaultdict:
    if factory not in _PLAIN_FACTORIES:
        raise UnsafeCheckpointError(f"refused collections.defaultdict with the factory {factory!r}")
    return collections.defaultdict(factory, *items)


def _numpy_reconstruct(subtype, shape, dtype) -> np.ndarray:
    if subtype is not np.ndarray:
        raise UnsafeCheckpointError(f"refused numpy array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_dtype(spec, align=False, copy=False) -> np.dtype:
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise UnsafeCheckpointError(f"refused numpy object dtype {dtype!r}")
    return dtype


def _numpy_scalar(dtype, data=None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafeCheckpointError(f"refused numpy scalar of dtype {dtype!r}")
    return np.frombuffer(data, dtype, count=1)[0]


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str", "bytes")
_BUILTINS += ("bytearray", "bool", "slice")
_TYPING = ("Any", "Dict", "List", "Tuple", "Optional", "Union", "Sequence", "Mapping", "Set", "Callable")

ALLOWED: dict[tuple[str, str], Any] = {("builtins", name): getattr(builtins, name) for name in _BUILTINS}
ALLOWED.update(
    {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): _defaultdict,
        ("_codecs", "encode"): _latin1_encode,
        ("argparse", "Namespace"): argparse.Namespace,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorType("torch.Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorType("torch.nn.Parameter"),
        ("torch", "Size"): tuple,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numpy_dtype,
    }
)
ALLOWED.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})
ALLOWED.update({("torch", name): _TorchDtype(name) for name in _TORCH_DTYPES})
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED[(_module, "_reconstruct")] = _numpy_reconstruct
    ALLOWED[(_module, "scalar")] = _numpy_scalar
ALLOWED.update({("typing", name): getattr(typing, name) for name in _TYPING})
ALLOWED.update({tuple(name.rsplit(".", 1)): cls for name, cls in _OMEGA_CLASSES.items()})


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` admits only `ALLOWED` (and inert `fairseq.` references), and
    whose persistent ids are torch storages."""

    def __init__(self, file: Any, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names of protocol <= 2 pickles
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "fairseq" or module.startswith("fairseq."):
            return _inert_reference(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"{self.source}: refused to load {module}.{name}: a checkpoint may hold only tensors, plain "
            "containers, argparse.Namespace and omegaconf configs; nothing was imported or run"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
            raise pickle.UnpicklingError(f"{self.source}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType | _TorchDtype):
            raise pickle.UnpicklingError(f"{self.source}: storage of unknown type {storage_type!r}")
        dtype = storage_type.dtype
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, dtype, int(numel))
        return self.storages[key]


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> Any:
    """The object a `torch.save`d file holds, tensors as numpy arrays. Raises `CheckpointError` (naming the
    file) for anything that is not a readable torch checkpoint, `UnsafeCheckpointError` for refused content."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":  # a zip archive's first entry, but no readable directory
                raise CheckpointError(
                    f"{path}: not a readable PyTorch checkpoint: a zip archive without its central directory "
                    "(truncated or corrupt)"
                )
            file.seek(0)
            return _load_legacy(path, file)
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error, KeyError) as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from None
    except (ValueError, TypeError, AttributeError, IndexError, OverflowError, MemoryError) as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})"
        ) from None


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(
                f"{path}: a zip file but not a torch checkpoint (expected one <name>/data.pkl, found {len(pickles)})"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), str(path))
        result = unpickler.load()

        def read(ref: _StorageRef) -> np.ndarray:
            name = f"{prefix}data/{ref.key}"
            if name not in names:
                raise CheckpointError(f"{path}: storage {name!r} is missing from the archive")
            return _storage_array(archive.read(name), ref, byteorder, f"{path}: storage {name!r}")

        return _materialize(result, read, str(path))


def _storage_array(data: bytes, ref: _StorageRef, byteorder: str, where: str) -> np.ndarray:
    expected = ref.numel * ref.dtype.itemsize
    if len(data) < expected:
        raise CheckpointError(f"{where}: {len(data)} bytes, expected {expected} (truncated)")
    array = np.frombuffer(data, ref.dtype, count=ref.numel)
    if byteorder == "big" and ref.dtype.itemsize > 1:
        array = array.byteswap()
    return array


def _load_legacy(path: Path, file: Any) -> Any:
    """torch's pre-1.6 format: magic, protocol, sys_info, the object, the storage keys, then the storages."""
    head = file.read(2)
    file.seek(0)
    if len(head) < 2 or head[0] != 0x80:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch pickle)"
        )

    def small_pickle() -> Any:
        return RestrictedUnpickler(file, str(path)).load()

    if small_pickle() != LEGACY_MAGIC:
        raise CheckpointError(f"{path}: a pickle, but not a PyTorch checkpoint (no torch magic number)")
    protocol = small_pickle()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"{path}: legacy torch protocol {protocol!r} is not supported")
    sys_info = small_pickle()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    unpickler = RestrictedUnpickler(file, str(path))
    result = unpickler.load()
    keys = small_pickle()
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        key = str(key)
        ref = unpickler.storages.get(key)
        if ref is None:
            raise CheckpointError(f"{path}: storage {key!r} is listed but never used")
        header = file.read(8)
        if len(header) < 8:
            raise CheckpointError(f"{path}: storage {key!r} is truncated")
        numel = struct.unpack("<q" if little else ">q", header)[0]
        ref.numel = numel
        data = file.read(numel * ref.dtype.itemsize)
        arrays[key] = _storage_array(data, ref, "little" if little else "big", f"{path}: storage {key!r}")

    def read(ref: _StorageRef) -> np.ndarray:
        if ref.key not in arrays:
            raise CheckpointError(f"{path}: storage {ref.key!r} is missing")
        return arrays[ref.key]

    return _materialize(result, read, str(path))


def _materialize(obj: Any, read: Callable[[_StorageRef], np.ndarray], source: str) -> Any:
    """Replace every LazyTensor in the object tree by its numpy array (storages read once each)."""
    cache: dict[str, np.ndarray] = {}
    done: dict[int, Any] = {}

    def array_of(tensor: LazyTensor, where: str) -> np.ndarray:
        key = tensor.storage.key
        if key not in cache:
            cache[key] = read(tensor.storage)
        return tensor.to_numpy(cache[key], where)

    def walk(node: Any, where: str) -> Any:
        if id(node) in done:
            return done[id(node)]
        if isinstance(node, dict | list | argparse.Namespace | _OmegaObject):
            done[id(node)] = node  # updated in place; marked first, since configs hold cycles (`_parent`)
        if isinstance(node, LazyTensor):
            result = array_of(node, where)
        elif isinstance(node, dict):
            result = node
            for key in list(node):
                node[key] = walk(node[key], f"{where}[{key!r}]")
        elif isinstance(node, list):
            result = node
            for i, item in enumerate(node):
                node[i] = walk(item, f"{where}[{i}]")
        elif isinstance(node, tuple):
            result = tuple(walk(item, f"{where}[{i}]") for i, item in enumerate(node))
        elif isinstance(node, argparse.Namespace | _OmegaObject):
            target = node.__dict__ if isinstance(node, argparse.Namespace) else node.state
            for key in list(target):
                target[key] = walk(target[key], f"{where}.{key}")
            result = node
        else:
            result = node
        done[id(node)] = result
        return result

    return walk(obj, source)


# --------------------------------------------------------------------------------------------------------
# Plain data
# --------------------------------------------------------------------------------------------------------


def plain_data(node: Any) -> Any:
    """omegaconf stand-ins -> plain dicts / lists / values (recursively); `argparse.Namespace` objects are
    kept (their attributes converted). A missing value ``???`` stays the string; interpolations stay text."""
    if isinstance(node, _OmegaObject):
        name = node.omega_name.rsplit(".", 1)[-1]
        if name in ("DictConfig", "ListConfig"):
            content = node.state.get("_content")
            if isinstance(content, dict):
                return {key: plain_data(value) for key, value in content.items()}
            if isinstance(content, list | tuple):
                return [plain_data(value) for value in content]
            return content  # None, "???" or an interpolation string
        if "_val" in node.state:
            return plain_data(node.state["_val"])
        return {key: plain_data(value) for key, value in node.state.items()}
    if isinstance(node, dict):
        return (
            type(node)((key, plain_data(value)) for key, value in node.items())
            if isinstance(node, collections.OrderedDict)
            else {key: plain_data(value) for key, value in node.items()}
        )
    if isinstance(node, list):
        return [plain_data(value) for value in node]
    if isinstance(node, tuple):
        return tuple(plain_data(value) for value in node)
    if isinstance(node, argparse.Namespace):
        return argparse.Namespace(**{key: plain_data(value) for key, value in vars(node).items()})
    return node
