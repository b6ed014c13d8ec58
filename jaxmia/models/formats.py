"""The file formats of a model folder, without torch and without pickles (docs/methods/models.md §3).

* ``diffusion_pytorch_model.safetensors`` (PyTorch names and layouts; bfloat16 decoded by hand) or a
  sharded ``diffusion_pytorch_model.safetensors.index.json``;
* ``diffusion_flax_model.msgpack`` (Flax serialisation of the parameter tree);
* pickles (``.bin``, ``.pt``, ``.ckpt``, ``.pkl``) are refused: jaxmia never unpickles;
* writes are atomic (a temporary file in the same folder, then ``os.replace``);
* :func:`weights_digest`: the SHA-256 identity of a parameter tree, recorded in every output.

Which class a folder holds and how its tree is shaped is :mod:`jaxmia.models.loading`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import serialization, traverse_util

from jaxmia.fileio import read_json

CONFIG_NAME = "config.json"
FLAX_WEIGHTS_NAME = "diffusion_flax_model.msgpack"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# The diffusers release whose Flax classes read diffusion_flax_model.msgpack (the last with Flax).
DIFFUSERS_FORMAT_VERSION = "0.39.0"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Reads a safetensors file into NumPy without torch; bfloat16 tensors come back as float32.

    ``safetensors.numpy`` has no bfloat16, so those tensors are decoded from the raw bytes
    (bfloat16 is the upper half of a float32).
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        out = {}
        bf16 = {k: v for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"}
        if len(bf16) < len([k for k in header if k != "__metadata__"]):
            with safe_open(str(path), framework="np") as f:
                for name in f.keys():
                    if name not in bf16:
                        out[name] = f.get_tensor(name)
        if bf16:
            raw = np.memmap(path, dtype=np.uint8, mode="r")
            base = 8 + header_len
            for name, info in bf16.items():
                start, end = info["data_offsets"]
                bits = np.frombuffer(raw[base + start: base + end].tobytes(), "<u2").astype(np.uint32) << 16
                out[name] = bits.view(np.float32).reshape(info["shape"])
    except Exception as err:  # OSError, JSON errors, safetensors' own SafetensorError, bad offsets ...
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    return out


def read_sharded_safetensors(index_path: Path) -> dict[str, np.ndarray]:
    index = read_json(index_path, what="safetensors index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: no 'weight_map' object")
    out = {}
    for shard in sorted(set(weight_map.values())):
        out.update(read_safetensors(index_path.parent / shard))
    return out



def refuse_pickles(folder: Path) -> None:
    """Raises for a folder without jaxmia-readable weights: naming its pickle file, else what it holds."""
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder / pickles[0]}: a pickle file; jaxmia never unpickles. Re-save the weights as safetensors "
            f"(diffusers: model.save_pretrained(dir, safe_serialization=True)) or as Flax msgpack")
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise FileNotFoundError(f"{folder}: no weights ({FLAX_WEIGHTS_NAME} or {SAFETENSORS_NAME}); found {found}")



def read_msgpack(path: Path) -> dict:
    """A Flax ``msgpack_serialize``d parameter tree (NumPy leaves); a corrupt file is refused by name."""
    path = Path(path)
    try:
        return serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types for corrupt input
        raise ValueError(f"{path}: not a valid Flax msgpack file ({type(err).__name__}: {err})") from None


def write_msgpack(path: Path, params) -> None:
    atomic_write(Path(path), serialization.msgpack_serialize(jax.device_get(params)))


def write_json(path: Path, data) -> None:
    """Sorted, indented JSON with a final newline, written atomically."""
    atomic_write(Path(path), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder, so a reader never sees half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise



def weights_digest(params) -> str:
    """SHA-256 over the parameter leaves sorted by path: name, dtype, shape and little-endian bytes."""
    digest = hashlib.sha256()
    flat = traverse_util.flatten_dict(jax.device_get(params))
    for path in sorted(flat, key=lambda p: "/".join(map(str, p))):
        array = np.asarray(flat[path])
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
        digest.update(f"{'/'.join(map(str, path))}\0{array.dtype.name}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()



def require_empty_folder(dst: Path) -> None:
    """Conversions write into a new or empty folder only, so nothing stale is mixed in."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst}: the destination exists and is not an empty folder; choose a new one")

