"""Degrade: inpainting masks as pure functions of (image shape, mask kind, ratio, key).

Convention: M = 1 on the KNOWN region and 0 on the hole, shape (H, W) float32, shared by all
channels. Every builder is jittable; shapes, kinds and ratios are static Python values, keys are
traced. "DRC-style (jaxmia recipe)", docs/methods/mia.md §4.2 "Tasks"; the mask families of "Model Will
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
    return _rect_known(height, width, ratio * height * width, key)


def _rect_known(height: int, width: int, area, key):
    """:func:`rect_mask` with a traced target ``area`` (vmappable over tasks)."""
    k_aspect, k_top, k_left = jax.random.split(key, 3)
    log_a = jax.random.uniform(k_aspect, (), minval=-math.log(RECT_MAX_ASPECT), maxval=math.log(RECT_MAX_ASPECT))
    h_min = jnp.maximum(1.0, jnp.ceil(area / width - 1e-6))
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

    The patches are taken in a random order (argsort of key-drawn uniforms) and the prefix whose total
    area is closest to ρ·H·W is the hole (at least one patch). With equal patches this is
    ``round(ρ·#patches)`` patches; in all cases the achieved area is within half a patch of ρ·H·W.
    """
    _check_ratio(ratio)
    cell, areas = patch_grid(height, width, patch_size)
    return _patch_known(cell, areas, ratio * height * width, key)


def _patch_known(cell: np.ndarray, areas: np.ndarray, target, key):
    """:func:`patch_mask` on a given grid with a traced target area (vmappable over tasks)."""
    order = jnp.argsort(jax.random.uniform(key, (areas.shape[0],)))  # a random order of the cells (one sort)
    cum = jnp.cumsum(jnp.asarray(areas)[order])
    count = 1 + jnp.argmin(jnp.abs(cum - target))  # prefix length, >= 1
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


def purpose_keys(root, purposes, id_hash=None):
    """Keys for several purposes at once, vectorised (one traced hash instead of one per purpose).

    Equal to ``jax.random.fold_in(root, purpose_word(p))`` without ``id_hash`` and to
    :func:`jaxmia.rng.key_for` ``(root, id_hash, p)`` with it.
    """
    words = jnp.asarray([rng.purpose_word(p) for p in purposes], jnp.uint32)

    def one(word):
        k = jax.random.fold_in(root, word)
        if id_hash is None:
            return k
        return jax.random.fold_in(jax.random.fold_in(k, id_hash[0]), id_hash[1])

    return jax.vmap(one)(words)


def mask_purpose(task: Task) -> str:
    return f"drc-mask:{task.name}"


def task_masks(cfg: DRCConfig, height: int, width: int, root, id_hash, user_mask=None) -> jnp.ndarray:
    """(R, H, W) masks of one image for the R tasks of ``cfg`` (jittable; ``id_hash`` is (2,) uint32).

    A task's mask key is ``fold_in(root, purpose_word("drc-mask:" + name))``, shared by all images,
    or :func:`jaxmia.rng.key_for` ``(root, id_hash, "drc-mask:" + name)`` under ``per_image_masks``.
    Random kinds are built vmapped over their tasks, so compile time does not grow with R.

    Args:
      user_mask: this image's (H, W) known-region mask for the ``user`` kind, else None.
    """
    task_list = tasks(cfg)
    out = [None] * len(task_list)
    for kind in cfg.kinds:
        idx = [i for i, t in enumerate(task_list) if t.kind == kind]
        if kind == "user":
            if user_mask is None:
                raise ValueError("mask kind 'user' needs a hole per image (pass holes=...)")
            out[idx[0]] = jnp.asarray(user_mask, jnp.float32)
            continue
        if kind == "center":
            for i in idx:
                out[i] = center_mask(height, width, task_list[i].ratio)
            continue
        keys = purpose_keys(root, [mask_purpose(task_list[i]) for i in idx],
                            id_hash if cfg.per_image_masks else None)
        targets = jnp.asarray([task_list[i].ratio * height * width for i in idx], jnp.float32)
        if kind == "rect":
            built = jax.vmap(lambda a, k: _rect_known(height, width, a, k))(targets, keys)
        else:
            cell, areas = patch_grid(height, width, cfg.patch_size)
            built = jax.vmap(lambda a, k: _patch_known(cell, areas, a, k))(targets, keys)
        for j, i in enumerate(idx):
            out[i] = built[j]
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
