"""The bundled demo data: scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits).

Digits are upsampled to 16×16 by pixel replication (each pixel becomes a 2×2 block, so no
interpolation invents detail) and mapped from 0..16 to [-1, 1]. Ids are ``digits-NNNN``, the row
of ``load_digits``. The member / non-member split of the demo target lives in its ``split.json``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from jaxmia.models.layout import DEMO_TARGET  # noqa: F401  (re-exported: jaxmia.data.DEMO_TARGET)

DEMO_SIZE = 8
DEMO_SETS = ("members", "nonmembers", "all")


@functools.lru_cache(maxsize=4)
def digits(size: int = DEMO_SIZE):
    """(ids, images (1797, size, size, 1) float32 in [-1, 1], labels (1797,) int)."""
    from sklearn.datasets import load_digits  # ships its csv inside the wheel; no download

    bunch = load_digits()
    if size % 8:
        raise ValueError(f"demo digits are 8x8; size must be a multiple of 8, got {size}")
    rep = size // 8
    images = bunch.images.astype(np.float32)
    images = np.repeat(np.repeat(images, rep, axis=1), rep, axis=2)
    images = images / 8.0 - 1.0
    ids = [f"digits-{i:04d}" for i in range(len(images))]
    return ids, images[..., None], bunch.target.astype(np.int32)


def demo_split(target: Path = DEMO_TARGET) -> dict:
    path = Path(target) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"demo split not found: {path} (retrain with scripts/train_demo_target.py)")
    return json.loads(path.read_text())


def read_demo(name: str):
    """(ids, images) of ``demo:members``, ``demo:nonmembers`` or ``demo:all``."""
    if name not in DEMO_SETS:
        raise ValueError(f"unknown demo set 'demo:{name}'; known: {', '.join('demo:' + s for s in DEMO_SETS)}")
    split = demo_split()
    ids, images, _ = digits(int(split.get("size", DEMO_SIZE)))
    wanted = ids if name == "all" else split[name]
    where = {i: k for k, i in enumerate(ids)}
    return list(wanted), images[[where[i] for i in wanted]]
