"""Reading user files safely: `.npz` arrays without pickles, labels files, and file digests for provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def load_npz(path, *, what: str = "array file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (a ``.npy`` file: ``{"array": ...}``), read with ``allow_pickle=False``.

    A missing file, a pickled object or an unreadable archive is refused with one line naming
    ``path`` (``what`` says what the file was meant to be).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        if path.suffix == ".npy":
            return {"array": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path}: holds pickled objects; jaxmia never unpickles (store plain arrays)") from None
        raise ValueError(f"{path}: unreadable .npz ({err})") from None
    except Exception as err:  # zipfile.BadZipFile, EOFError, ...
        raise ValueError(f"{path}: unreadable .npz ({type(err).__name__}: {err})") from None


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path, *, what: str = "JSON file") -> dict:
    """A JSON object from ``path``; a missing file, invalid JSON or a non-object is refused naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_labels(path) -> dict[str, int]:
    """Reads a labels file: a JSON object mapping each image id to 1 (member) or 0 (non-member).

    One format (docs/inference.md), e.g. ``{"img_0001": 1, "img_0002": 0}``; read by ``jaxmia mia``
    (:func:`jaxmia.mia.mia_from_files`) and :func:`jaxmia.data.cifar10.split_feature_table`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels file not found: {path}")
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON labels file ({err})") from None
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping id to 0/1")
    bad = [k for k, v in labels.items() if v not in (0, 1) or isinstance(v, float) and v not in (0.0, 1.0)]
    if bad:
        raise ValueError(f"{path}: label of id {bad[0]!r} is {labels[bad[0]]!r}; labels must be 0 or 1")
    return {str(k): int(v) for k, v in labels.items()}

