"""``.npz`` image arrays with ids; read without pickles.

Keys: ``images`` (N, H, W, C) or (N, H, W) — uint8 in 0..255, or float in [-1, 1];
``ids`` (N,) strings (required: ids key all randomness and joins); optional ``labels`` (N,) int
class labels or ``text_embeddings`` (N, L, D) used as the conditioning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmia.fileio import load_npz


def read_npz(path):
    """Returns (ids, images (N,H,W,C) float32 in [-1,1], cond or None)."""
    path = Path(path)
    arrays = load_npz(path, what="array file")
    for key in ("images", "ids"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (has {', '.join(sorted(arrays)) or 'nothing'})")
    images, ids = arrays["images"], arrays["ids"].astype(str).tolist()
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{path}: 'images' must be (N, H, W, C) or (N, H, W), got shape {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 127.5 - 1.0
    elif np.issubdtype(images.dtype, np.floating):
        images = images.astype(np.float32)
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{path}: 'images' holds NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"{path}: float images must lie in [-1, 1], found [{lo:.3g}, {hi:.3g}] (or store uint8)")
    else:
        raise ValueError(f"{path}: 'images' has dtype {images.dtype}; use uint8 or float")
    cond = None
    if "labels" in arrays and "text_embeddings" in arrays:
        raise ValueError(f"{path}: holds both 'labels' and 'text_embeddings'; keep one conditioning")
    if "labels" in arrays:
        cond = arrays["labels"].astype(np.int32)
    elif "text_embeddings" in arrays:
        cond = arrays["text_embeddings"].astype(np.float32)
    return ids, images, cond


def write_npz(path, ids, images, cond=None) -> Path:
    """Writes a jaxmia ``.npz`` (images as float32 in [-1, 1])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if cond is not None:
        extra["labels" if np.asarray(cond).ndim == 1 else "text_embeddings"] = np.asarray(cond)
    np.savez(path, ids=np.asarray(ids, dtype=str), images=np.asarray(images, np.float32), **extra)
    return path
