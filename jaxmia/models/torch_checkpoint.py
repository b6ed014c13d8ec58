"""Reading PyTorch checkpoints (``torch.save`` files) without torch and without running their code.

The official releases of the models CDI audits (DiT ``*.pt``, U-ViT ``*.pth``, CompVis LDM
``model.ckpt``) are pickles. A pickle is a program: unpickling one with :mod:`pickle` runs any
callable it names (``os.system`` through ``__reduce__``). jaxmia reads them with a **restricted
unpickler** instead:

* torch's zip format only (``<archive>/data.pkl`` + one ``<archive>/data/<key>`` record per
  storage, torch >= 1.6): the pickle describes containers and tensor rebuilds; the tensor bytes
  are separate records, read here with NumPy;
* the pickle may name only these globals: ``collections.OrderedDict``, torch's storage classes
  (``torch.FloatStorage``, …, ``torch.UntypedStorage``), torch's dtypes, and the tensor/parameter
  rebuild functions (``torch._utils._rebuild_tensor_v2``/``_v3``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``, ``torch._tensor._rebuild_from_type_v2``). Each maps to a
  function **of this module** that builds a NumPy array; no torch object is ever created. Any other
  global is refused with :class:`UnsafeCheckpointError` naming it, before anything is called;
* ``BUILD`` (``__setstate__``) is allowed on dicts only (a state dict's ``_metadata``); every tensor
  view is bounds-checked against its storage.

Legacy (non-zip, torch < 1.6) pickles are refused unless the caller opts into
``torch.load(weights_only=True)`` (``allow_legacy=True``; needs torch), torch's own restricted loader.

References: torch ``serialization.py`` (``_save``/``_load``: the zip layout, ``persistent_id`` =
``("storage", storage_type, key, location, numel)``, the ``byteorder`` record) and
``_weights_only_unpickler.py`` (the globals torch itself allows).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import ml_dtypes
import numpy as np

# torch storage class name -> element dtype ("torch.FloatStorage" etc.; typed storages, torch < 2.x
# and torch.save of TypedStorage today).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}
# torch dtype name (``torch.float32``) -> NumPy dtype, for _rebuild_tensor_v3 and UntypedStorage.
TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
    "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickled object of a pre-1.6 torch.save file


# What allow_legacy=None means: off, unless a caller (``jaxmia convert --torch-legacy``) opted in.
_LEGACY_ALLOWED = contextvars.ContextVar("jaxmia_torch_legacy_allowed", default=False)


@contextlib.contextmanager
def legacy_pickles_allowed(allowed: bool = True):
    """Within the block, :func:`read_torch_checkpoint` calls that leave ``allow_legacy`` unset may read
    legacy (pre-zip) pickles with ``torch.load(weights_only=True)``: how ``--torch-legacy`` reaches
    converters without every converter taking the flag."""
    token = _LEGACY_ALLOWED.set(bool(allowed))
    try:
        yield
    finally:
        _LEGACY_ALLOWED.reset(token)


class UnsafeCheckpointError(ValueError):
    """The checkpoint asks for something other than tensors and plain containers."""


class _StorageType:
    """Stands for a torch storage class named in the pickle (never the class itself)."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES.get(name)  # None for UntypedStorage: bytes, typed by the rebuild


class _DType:
    """Stands for ``torch.<dtype>``."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(TORCH_DTYPES[name])


class _TensorType:
    """Stands for ``torch.Tensor`` / ``torch.nn.parameter.Parameter`` (only as _rebuild_from_type_v2's type)."""

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """One storage record: its bytes are read from the zip on first use."""

    def __init__(self, reader: "_Reader", key: str, storage_type: _StorageType, numel: int):
        self.reader, self.key, self.storage_type, self.numel = reader, key, storage_type, numel
        self._flat = None

    def flat(self, dtype: np.dtype) -> np.ndarray:
        if self._flat is None or self._flat.dtype != dtype:
            raw = self.reader.record(f"data/{self.key}")
            if len(raw) % dtype.itemsize:
                raise ValueError(f"{self.reader.source}: storage {self.key} has {len(raw)} bytes, not a multiple of "
                                 f"{dtype.name}'s {dtype.itemsize}")
            flat = np.frombuffer(raw, dtype=dtype.newbyteorder(self.reader.byteorder))
            self._flat = flat.astype(dtype.newbyteorder("="), copy=False)
        return self._flat


def _view(storage: _Storage, dtype: np.dtype, offset: int, size, stride, source: str) -> np.ndarray:
    """The tensor ``storage[offset:]`` viewed with ``size``/``stride`` (in elements), copied out.

    Every index the view can reach is checked to lie inside the storage first: a malformed file
    must not make ``as_strided`` read outside its buffer.
    """
    flat = storage.flat(dtype)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise ValueError(f"{source}: storage {storage.key}: invalid tensor view (offset {offset}, size {size}, "
                         f"stride {stride})")
    if 0 in size:
        return np.zeros(size, dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise ValueError(f"{source}: storage {storage.key}: the tensor view (offset {offset}, size {size}, stride "
                         f"{stride}) reaches element {last}, past the storage's {flat.size}")
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=tuple(s * dtype.itemsize for s in stride), writeable=False)
    return np.array(view, copy=True)


class _Reader(pickle._Unpickler):  # the pure-Python unpickler: its BUILD can be restricted
    """The restricted unpickler of one ``data.pkl`` (see the module docstring)."""

    def __init__(self, zf: zipfile.ZipFile, prefix: str, source: str, byteorder: str):
        self.zf, self.prefix, self.source, self.byteorder = zf, prefix, source, byteorder
        self.storages: dict[str, _Storage] = {}
        super().__init__(io.BytesIO(self.record("data.pkl")))
        self.dispatch = dict(self.dispatch)
        self.dispatch[pickle.BUILD[0]] = _Reader._load_build_restricted

    def record(self, name: str) -> bytes:
        try:
            return self.zf.read(self.prefix + name)
        except KeyError:
            raise ValueError(f"{self.source}: the torch archive has no record {self.prefix + name!r}") from None

    # -- what the pickle may name -------------------------------------------------------------
    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES or full in ("torch.UntypedStorage",
                                                                     "torch.storage.UntypedStorage"):
            return _StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return _DType(name)
        if full in ("torch.Tensor", "torch.nn.parameter.Parameter"):
            return _TensorType(full)
        rebuild = _REBUILDS.get(full)
        if rebuild is not None:
            return lambda *args: rebuild(self, *args)
        raise UnsafeCheckpointError(
            f"{self.source}: refused: the checkpoint asks for the global {full!r}; jaxmia reads only tensors and "
            f"plain containers (dict, OrderedDict, list, tuple, numbers, strings), and no code from the file runs")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeCheckpointError(f"{self.source}: refused: unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _Storage(self, key, storage_type, int(numel))
        return self.storages[key]

    def _load_build_restricted(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not (isinstance(inst, dict) and isinstance(state, dict)):
            self.stack.append(state)
            raise UnsafeCheckpointError(f"{self.source}: refused: BUILD (__setstate__) on a "
                                        f"{type(inst).__name__}; only a dict's attributes may be restored")
        # torch state dicts are OrderedDicts carrying a `_metadata` attribute (per-module versions);
        # it is plain data and jaxmia does not need it.


def _rebuild_tensor_v2(reader, storage, offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage) or storage.storage_type.dtype is None:
        raise UnsafeCheckpointError(f"{reader.source}: refused: _rebuild_tensor_v2 without a typed storage")
    return _view(storage, storage.storage_type.dtype, int(offset), size, stride, reader.source)


def _rebuild_tensor_v3(reader, storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(storage, _Storage) or not isinstance(dtype, _DType):
        raise UnsafeCheckpointError(f"{reader.source}: refused: _rebuild_tensor_v3 without a storage and a dtype")
    return _view(storage, dtype.dtype, int(offset), size, stride, reader.source)


def _rebuild_parameter(reader, data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, np.ndarray):
        raise UnsafeCheckpointError(f"{reader.source}: refused: a Parameter around a {type(data).__name__}")
    return data


def _rebuild_from_type_v2(reader, func, new_type, args, state):
    # torch._tensor._rebuild_from_type_v2(func, type, args, state): a Tensor/Parameter (sub)class with
    # attributes. Only jaxmia's own rebuilds and the two plain tensor types are accepted; the state
    # (Python attributes of the tensor object) is dropped.
    if not callable(func) or not isinstance(new_type, _TensorType) or not isinstance(args, tuple):
        raise UnsafeCheckpointError(f"{reader.source}: refused: _rebuild_from_type_v2 of a non-tensor type")
    return func(*args)


_REBUILDS = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
}


def _legacy_with_torch(path: Path):
    try:
        import torch  # noqa: F401  (optional: only for legacy files the user opted into)
    except ImportError:
        raise ValueError(f"{path}: a legacy (pre-zip) torch pickle; reading it needs torch "
                         f"(pip install torch) for torch.load(weights_only=True)") from None
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise UnsafeCheckpointError(f"{path}: torch.load(weights_only=True) refused the file "
                                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None

    def to_numpy(value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            return value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
        if isinstance(value, Mapping):
            return type(value)((k, to_numpy(v)) for k, v in value.items()) if isinstance(value, dict) else \
                {k: to_numpy(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(to_numpy(v) for v in value)
        return value

    return to_numpy(obj)


def read_torch_checkpoint(path, *, allow_legacy: bool | None = None) -> Any:
    """The object a ``torch.save`` file holds, with every tensor as a NumPy array (see the module docstring).

    Args:
      path: a torch zip checkpoint (``.pt``, ``.pth``, ``.ckpt``, ``.bin``).
      allow_legacy: read a pre-1.6 (non-zip) pickle with ``torch.load(weights_only=True)``; needs torch.
        None (default): as set by :func:`legacy_pickles_allowed` (off unless a caller opted in).

    Returns:
      dicts (``collections.OrderedDict`` for state dicts), lists, tuples, numbers and strings as
      pickled, tensors as NumPy arrays in their stored dtype (bfloat16 via ``ml_dtypes``).

    Raises:
      UnsafeCheckpointError: the pickle names a global other than tensors and containers (the
        global is named; nothing from the file has run).
      ValueError / FileNotFoundError: a missing, truncated or malformed file, a legacy pickle
        without ``allow_legacy``.
    """
    path = Path(path)
    if allow_legacy is None:
        allow_legacy = _LEGACY_ALLOWED.get()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):
        if allow_legacy:
            return _legacy_with_torch(path)
        legacy = False
        try:
            with open(path, "rb") as f:
                head = f.read(64)
            legacy = head[:1] == b"\x80" and _LEGACY_MAGIC.to_bytes(10, "little") in head
        except OSError:
            pass
        what = "a legacy (pre-1.6, non-zip) torch pickle" if legacy else "not a torch zip checkpoint"
        raise ValueError(f"{path}: {what}; jaxmia reads torch's zip format with its restricted reader. To read a "
                         f"legacy file with torch.load(weights_only=True) instead, pass --torch-legacy "
                         f"(allow_legacy=True; needs torch)")
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pkl) != 1:
                raise ValueError(f"{path}: a zip file but not a torch checkpoint (expected one <archive>/data.pkl, "
                                 f"found {len(pkl)})")
            prefix = pkl[0][: -len("data.pkl")]
            byteorder = "<"
            if prefix + "byteorder" in zf.namelist():
                mark = zf.read(prefix + "byteorder").strip()
                if mark not in (b"little", b"big"):
                    raise ValueError(f"{path}: unknown byteorder record {mark!r}")
                byteorder = "<" if mark == b"little" else ">"
            reader = _Reader(zf, prefix, str(path), byteorder)
            return reader.load()
    except (UnsafeCheckpointError, ValueError):
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct errors ...
        raise ValueError(f"{path}: unreadable torch checkpoint ({type(err).__name__}: {err})") from None


def flat_state_dict(obj: Any, *, source: str, key: str | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """A flat ``{name: array}`` state dict out of a loaded checkpoint.

    Args:
      obj: what :func:`read_torch_checkpoint` returned.
      source: the file, for messages.
      key: take ``obj[key]`` first (e.g. ``"state_dict"`` of a Lightning checkpoint, ``"ema"`` of a
        training checkpoint); absent keys are refused with the ones present.
      prefix: keep only names starting with it, with the prefix removed (``"model.diffusion_model."``).

    Raises:
      ValueError: not a mapping of strings to arrays, the key or prefix not found.
    """
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            present = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{source}: no {key!r} entry in the checkpoint (found: {present})")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ValueError(f"{source}: state dict key {name!r} is not a string")
        if prefix and not name.startswith(prefix):
            continue
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{source}: state dict entry {name!r} is a {type(value).__name__}, not a tensor")
        out[name[len(prefix):]] = value
    if prefix and not out:
        raise ValueError(f"{source}: no state dict key starts with {prefix!r}")
    return out
