"""Degrade: inpainting masks as pure functions of (image shape, mask kind, ratio, key).

Convention: M = 1 on the KNOWN region and 0 on the hole, shape (H, W) float32, shared by all
channels. Every builder is jittable; shapes, kinds and ratios are static Python values, keys are
traced. "DRC-style (jaxmia recipe)", mia-methods.md §4.2 "Tasks"; the mask families of "Model Will
Tell" (Fu et al., arXiv 2403.08487) are only partly published, so the families below are jaxmia's.

Every built-in hole is non-empty (at least one pixel, one row of a rectangle, one patch), so the
hole metrics are always defined.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import rng
from jaxmia.drc.config import DRCConfig, Task, tasks

RECT_MAX_ASPECT = 3.0  # random rectangles: height/width drawn log-uniformly in [1/3, 3]

MASK_BUILDERS: dict[str, Callable] = {}


def _register(kind: str):
    def deco(fn):
        MASK_BUILDERS[kind] = fn
        return fn

    return deco


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return int(math.floor(x + 0.5))


@_register("center")
def center_mask(height: int, width: int, ratio: float, key=None) -> jnp.ndarray:
    """Centre hole of side ``round(√ρ·H)`` × ``round(√ρ·W)`` (a square on square images).

    The key is unused: the centre square is the same for every draw.
    """
    del key
    _check_ratio(ratio)
    side_h = min(height, max(1, _round(math.sqrt(ratio) * height)))
    side_w = min(width, max(1, _round(math.sqrt(ratio) * width)))
    top, left = (height - side_h) // 2, (width - side_w) // 2
    known = np.ones((height, width), np.float32)
    known[top:top + side_h, left:left + side_w] = 0.0
    return jnp.asarray(known)


@_register("rect")
def rect_mask(height: int, width: int, ratio: float, key) -> jnp.ndarray:
    """One rectangular hole of area ≈ ρ·H·W; aspect ratio and position drawn from ``key``.

    The height h is ``round(√(ρHW·a))`` for a log-uniform aspect a = h/w in [1/3, 3], clipped to
    [⌈ρH⌉, H] so that the width ``round(ρHW/h)`` fits; the achieved area is within h/2 pixels of
    ρHW. The top-left corner is uniform over the positions that keep the hole inside the image.
    """
    _check_ratio(ratio)
    k_aspect, k_top, k_left = jax.random.split(key, 3)
    area = ratio * height * width
    log_a = jax.random.uniform(k_aspect, (), minval=-math.log(RECT_MAX_ASPECT), maxval=math.log(RECT_MAX_ASPECT))
    h_min = max(1, math.ceil(area / width - 1e-9))
    h = jnp.clip(jnp.floor(jnp.sqrt(area * jnp.exp(log_a)) + 0.5), h_min, height).astype(jnp.int32)
    w = jnp.clip(jnp.floor(area / h + 0.5), 1, width).astype(jnp.int32)
    top = jnp.floor(jax.random.uniform(k_top, ()) * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(jax.random.uniform(k_left, ()) * (width - w + 1)).astype(jnp.int32)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    hole = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return 1.0 - hole.astype(jnp.float32)


def patch_size_for(height: int, width: int, patch_size: Optional[int] = None) -> int:
    """The patch side: ``patch_size`` if given, else 4 px at 32 px scaled with min(H, W)."""
    if patch_size is not None:
        return int(patch_size)
    return max(1, _round(4 * min(height, width) / 32))


def patch_grid(height: int, width: int, patch_size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The patch grid: (H, W) int cell index of every pixel and the (n,) cell areas.

    The image is cut into ``round(H/p)`` row bands and ``round(W/p)`` column bands whose edges are
    ``round(i·H/bands)``: exactly p×p patches when p divides the size, and bands one pixel apart
    otherwise (odd or non-square sizes), so the whole image is covered.
    """
    p = patch_size_for(height, width, patch_size)
    edges = []
    for size in (height, width):
        bands = max(1, _round(size / p))
        edges.append(np.array([_round(i * size / bands) for i in range(bands + 1)]))
    row_band = np.searchsorted(edges[0], np.arange(height), side="right") - 1
    col_band = np.searchsorted(edges[1], np.arange(width), side="right") - 1
    n_cols = len(edges[1]) - 1
    cell = row_band[:, None] * n_cols + col_band[None, :]
    areas = np.bincount(cell.ravel(), minlength=(len(edges[0]) - 1) * n_cols)
    return cell.astype(np.int32), areas.astype(np.float32)


@_register("patches")
def patch_mask(height: int, width: int, ratio: float, key, *, patch_size: Optional[int] = None) -> jnp.ndarray:
    """Random grid patches covering ≈ ρ of the image, chosen by ``key``.

    The patches are taken in a random order (a key-drawn permutation) and the prefix whose total
    area is closest to ρ·H·W is the hole (at least one patch). With equal patches this is
    ``round(ρ·#patches)`` patches; in all cases the achieved area is within half a patch of ρ·H·W.
    """
    _check_ratio(ratio)
    cell, areas = patch_grid(height, width, patch_size)
    n = areas.shape[0]
    order = jax.random.permutation(key, n)
    cum = jnp.cumsum(jnp.asarray(areas)[order])
    count = 1 + jnp.argmin(jnp.abs(cum - ratio * height * width))  # prefix length, >= 1
    rank = jnp.argsort(order)  # rank[c]: position of cell c in the random order
    hole = rank[jnp.asarray(cell)] < count
    return 1.0 - hole.astype(jnp.float32)


def make_mask(height: int, width: int, kind: str, ratio: float, key, *, patch_size: Optional[int] = None):
    """The known-region mask M (H, W) of a built-in ``kind`` (``center``, ``rect``, ``patches``)."""
    if kind not in MASK_BUILDERS:
        known = ", ".join(MASK_BUILDERS)
        raise ValueError(f"unknown mask kind {kind!r}; built-in kinds: {known} (and 'user', given per image)")
    if kind == "patches":
        return patch_mask(height, width, ratio, key, patch_size=patch_size)
    return MASK_BUILDERS[kind](height, width, ratio, key)


def hole_fraction(mask) -> jnp.ndarray:
    """Fraction of pixels in the hole, 1 − mean(M)."""
    return 1.0 - jnp.mean(mask)


def mask_key(root, task: Task, id_hash=None):
    """The key of a task's mask: shared by all images, or folded with the image id when given."""
    purpose = f"drc-mask:{task.name}"
    if id_hash is None:
        return jax.random.fold_in(root, rng.purpose_word(purpose))
    return rng.key_for(root, id_hash, purpose)


def task_masks(cfg: DRCConfig, height: int, width: int, root, id_hash, user_mask=None) -> jnp.ndarray:
    """(R, H, W) masks of one image for the R tasks of ``cfg`` (jittable; ``id_hash`` is (2,) uint32).

    Args:
      user_mask: this image's (H, W) known-region mask for the ``user`` kind, else None.
    """
    out = []
    for task in tasks(cfg):
        if task.kind == "user":
            if user_mask is None:
                raise ValueError("mask kind 'user' needs a hole per image (pass holes=...)")
            out.append(jnp.asarray(user_mask, jnp.float32))
            continue
        key = mask_key(root, task, id_hash if cfg.per_image_masks else None)
        out.append(make_mask(height, width, task.kind, task.ratio, key, patch_size=cfg.patch_size))
    return jnp.stack(out)


def user_masks(holes, ids, height: int, width: int, *, source: str = "holes") -> np.ndarray:
    """(N, H, W) float32 known-region masks from user-supplied holes (host side, NumPy).

    ``holes`` is one of: an (N, H, W) array that is 1/True ON THE HOLE (e.g. a face region), an
    (N, 4) int array of boxes ``(top, left, height, width)`` of the hole, or one (H, W) array or
    (4,) box shared by all N images. Every hole must be non-empty and inside the image; a bad one is
    an error naming its image id.
    """
    holes = np.asarray(holes)
    n = len(ids)
    if holes.shape in ((height, width), (4,)):
        holes = np.broadcast_to(holes, (n,) + holes.shape)
    if holes.shape == (n, 4):
        if not np.issubdtype(holes.dtype, np.integer):
            raise ValueError(f"{source}: boxes must be integers (top, left, height, width), got {holes.dtype}")
        out = np.ones((n, height, width), np.float32)
        for i, (top, left, h, w) in enumerate(holes.tolist()):
            if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
                raise ValueError(f"{source}: box {(top, left, h, w)} of image {ids[i]!r} is empty or outside "
                                 f"the {height}x{width} image")
            out[i, top:top + h, left:left + w] = 0.0
        return out
    if holes.shape != (n, height, width):
        raise ValueError(f"{source}: expected ({n}, {height}, {width}) hole arrays or ({n}, 4) boxes, "
                         f"got shape {holes.shape}")
    values = holes.astype(np.float64)
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(f"{source}: hole arrays must hold only 0/1 (1 = hole)")
    empty = [ids[i] for i in range(n) if not values[i].any()]
    if empty:
        raise ValueError(f"{source}: empty hole for image(s) {', '.join(map(repr, empty[:5]))}")
    return (1.0 - values).astype(np.float32)


def _check_ratio(ratio: float) -> None:
    if not (0.0 < float(ratio) < 1.0):
        raise ValueError(f"hole ratio must lie in (0, 1), got {ratio!r}")
