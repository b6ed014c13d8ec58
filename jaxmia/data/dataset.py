"""In-memory datasets with stable ids, and fixed-shape batches (pad + mask, docs/methods/design.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np

from jaxmia import rng


@dataclass(frozen=True)
class Dataset:
    """Images with stable string ids.

    Attributes:
      ids: one unique string id per image (used for keys and joins, never positions).
      images: (N, H, W, C) float32 in [-1, 1], NHWC.
      cond: per-image conditioning or None: (N,) int class labels, or (N, L, D) text embeddings.
      source: where the images came from (a path or ``demo:...``), for reports and errors.
      files: per-image file facts (:func:`jaxmia.data.files.file_facts`) for images read from files,
        aligned with ``ids``; None for arrays and demo sets.
    """

    ids: list
    images: np.ndarray
    cond: Optional[np.ndarray] = None
    source: str = ""
    files: Optional[tuple] = None

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.ndim != 4:
            raise ValueError(f"{self.source or 'dataset'}: images must be (N, H, W, C), got shape {images.shape}")
        if len(self.ids) != images.shape[0]:
            raise ValueError(f"{self.source or 'dataset'}: {len(self.ids)} ids for {images.shape[0]} images")
        if self.cond is not None and len(self.cond) != images.shape[0]:
            raise ValueError(f"{self.source or 'dataset'}: {len(self.cond)} conditions for {images.shape[0]} images")
        if self.files is not None and len(self.files) != images.shape[0]:
            raise ValueError(f"{self.source or 'dataset'}: {len(self.files)} file records for {images.shape[0]} images")
        rng.check_unique_ids(self.ids, source=self.source or "dataset")
        if self.files is not None:
            object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "ids", [str(i) for i in self.ids])
        object.__setattr__(self, "images", images.astype(np.float32, copy=False))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def subset(self, ids) -> "Dataset":
        """The images with these ids, in this order (an unknown id is an error naming it)."""
        where = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"{self.source}: unknown id(s) {', '.join(map(repr, missing[:5]))}")
        order = np.array([where[i] for i in ids], dtype=np.int64)
        cond = None if self.cond is None else self.cond[order]
        files = None if self.files is None else tuple(self.files[k] for k in order)
        return Dataset(list(ids), self.images[order], cond, self.source, files)

    def take(self, n: int, *, seed: int = 0) -> "Dataset":
        """A seeded random sample of ``n`` images (without replacement)."""
        if n > len(self):
            raise ValueError(f"{self.source}: asked for {n} images, only {len(self)} available")
        order = np.random.default_rng(seed).permutation(len(self))[:n]
        return self.subset([self.ids[i] for i in order])


@dataclass(frozen=True)
class Batch:
    """A fixed-size batch; rows with ``mask == False`` are padding and never reach a result."""

    ids: list
    id_hash: np.ndarray  # (B, 2) uint32
    x: np.ndarray  # (B, H, W, C)
    cond: Optional[np.ndarray]
    mask: np.ndarray  # (B,) bool


def iter_batches(dataset: Dataset, batch_size: int, start: int = 0, ids=None) -> Iterator[Batch]:
    """Fixed-shape batches of ``dataset`` from row ``start`` (or of the rows ``ids``).

    The last batch is padded by repeating its last real row, so every batch has the same shape and
    nothing recompiles.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if ids is None:
        rows = np.arange(start, len(dataset))
    else:
        where = {i: k for k, i in enumerate(dataset.ids)}
        rows = np.array([where[i] for i in ids], dtype=np.int64)
    hashes = rng.id_hashes(dataset.ids)
    for lo in range(0, len(rows), batch_size):
        real = rows[lo:lo + batch_size]
        pad = batch_size - len(real)
        idx = np.concatenate([real, np.full(pad, real[-1])]) if pad else real
        mask = np.arange(batch_size) < len(real)
        yield Batch(
            ids=[dataset.ids[i] for i in real] + [""] * pad,
            id_hash=hashes[idx],
            x=dataset.images[idx],
            cond=None if dataset.cond is None else dataset.cond[idx],
            mask=mask,
        )
