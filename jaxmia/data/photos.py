"""The bundled RGB data: 32×32 colour patches of the three photographs installed packages ship.

Sources (read from the installed packages, never downloaded):

  * ``china``:  scikit-learn ``sklearn/datasets/images/china.jpg`` (427×640), CC BY 2.0, Flickr user
    danielbuechele (scikit-learn's ``datasets/images/README.txt``);
  * ``flower``: scikit-learn ``sklearn/datasets/images/flower.jpg`` (427×640), CC BY 2.0, Flickr user
    vultilion (same README);
  * ``hopper``: matplotlib ``mpl-data/sample_data/grace_hopper.jpg`` (600×512), a U.S. Navy
    photograph of Grace Hopper (public domain, work of the U.S. federal government).

Each photo is decoded to RGB uint8, cropped to a multiple of :data:`DOWNSCALE` and shrunk by
averaging :data:`DOWNSCALE`×:data:`DOWNSCALE` blocks (so a patch holds recognisable structure and
no interpolation invents detail), then cut into a non-overlapping grid of :data:`PATCH`×:data:`PATCH`
patches, the grid centred in the shrunk photo. Pixels map from 0..255 to [-1, 1] (``x / 127.5 - 1``).
Ids name the photo and the patch's grid cell, ``china-r02c05`` (row 2, column 5 of the grid).
china and flower (427×640, H×W) give 6×10 patches, hopper (600×512) 9×8: 192 in all.

The member / non-member split of the RGB target lives in its ``split.json`` (:func:`photo_split`
draws it: the same fraction of each photo's patches are members, so both sides see every photo).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

import numpy as np

from jaxmia.fileio import read_json
from jaxmia.models.layout import RGB_TARGET

PATCH = 32
DOWNSCALE = 2
PHOTO_SETS = ("members", "nonmembers", "all")
# name -> (package, path inside the package, licence / provenance)
PHOTO_SOURCES = {
    "china": ("sklearn", "datasets/images/china.jpg",
              "CC BY 2.0, danielbuechele on Flickr (scikit-learn datasets/images/README.txt)"),
    "flower": ("sklearn", "datasets/images/flower.jpg",
               "CC BY 2.0, vultilion on Flickr (scikit-learn datasets/images/README.txt)"),
    "hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
               "public domain, U.S. Navy photograph of Grace Hopper (matplotlib sample data)"),
}


def photo_path(name: str) -> Path:
    """The installed file of photo ``name`` (a missing package or file is an error naming it)."""
    if name not in PHOTO_SOURCES:
        raise ValueError(f"unknown photo {name!r}; known: {', '.join(PHOTO_SOURCES)}")
    package, rel, _ = PHOTO_SOURCES[name]
    module = importlib.import_module(package)
    path = Path(module.__file__).resolve().parent / rel
    if not path.is_file():
        raise FileNotFoundError(f"{path}: photo {name!r} is missing from the installed {package}")
    return path


def read_photo(name: str) -> np.ndarray:
    """Photo ``name`` as decoded (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(photo_path(name)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def shrink(pixels: np.ndarray, factor: int = DOWNSCALE) -> np.ndarray:
    """(H, W, C) -> (H // f, W // f, C) float32: the mean of each f×f block (bottom/right remainder cropped)."""
    h, w, c = pixels.shape
    h, w = h - h % factor, w - w % factor
    blocks = pixels[:h, :w].astype(np.float32).reshape(h // factor, factor, w // factor, factor, c)
    return blocks.mean(axis=(1, 3))


def grid_patches(image: np.ndarray, size: int = PATCH):
    """Non-overlapping size×size patches of a grid centred in ``image``: (cells [(row, col)], (N, size, size, C))."""
    h, w, _ = image.shape
    rows, cols = h // size, w // size
    top, left = (h - rows * size) // 2, (w - cols * size) // 2
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    patches = np.stack([image[top + r * size: top + (r + 1) * size, left + c * size: left + (c + 1) * size]
                        for r, c in cells])
    return cells, patches


@functools.lru_cache(maxsize=2)
def photo_patches(size: int = PATCH, factor: int = DOWNSCALE):
    """(ids, images (N, size, size, 3) float32 in [-1, 1], sources (N,) photo names), photos in
    :data:`PHOTO_SOURCES` order, patches row-major within a photo."""
    ids, images, sources = [], [], []
    for name in PHOTO_SOURCES:
        cells, patches = grid_patches(shrink(read_photo(name), factor), size)
        ids += [f"{name}-r{r:02d}c{c:02d}" for r, c in cells]
        images.append(patches / 127.5 - 1.0)
        sources += [name] * len(cells)
    return ids, np.concatenate(images).astype(np.float32), np.array(sources)


def patches_digest(images: np.ndarray) -> str:
    """SHA-256 of the patches as float32 bytes: pins the decoded pixels a target was trained on."""
    return hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes()).hexdigest()


def photo_split(member_fraction: float, seed: int, size: int = PATCH, factor: int = DOWNSCALE) -> tuple[list, list]:
    """A seeded member / non-member split, balanced: round(fraction × n) members from each photo."""
    if not 0 < member_fraction < 1:
        raise ValueError(f"member_fraction must be in (0, 1), got {member_fraction}")
    ids, _, sources = photo_patches(size, factor)
    rng = np.random.default_rng(seed)
    members, nonmembers = [], []
    for name in PHOTO_SOURCES:
        rows = np.flatnonzero(sources == name)
        order = rows[rng.permutation(len(rows))]
        k = int(round(member_fraction * len(rows)))
        members += [ids[i] for i in order[:k]]
        nonmembers += [ids[i] for i in order[k:]]
    return sorted(members), sorted(nonmembers)


def rgb_split(target: Path = RGB_TARGET) -> dict:
    """The RGB target's ``split.json``."""
    path = Path(target) / "split.json"
    if not path.is_file():
        raise FileNotFoundError(f"RGB target split not found: {path} (retrain with scripts/train_rgb_target.py)")
    return read_json(path, what="RGB target split")


def read_rgb(name: str, target: Path = RGB_TARGET):
    """(ids, images) of ``rgb:members``, ``rgb:nonmembers`` or ``rgb:all``.

    The patches are checked against the digest in the target's ``split.json``: photos that decode
    differently from those the target was trained on are refused, not silently used.
    """
    if name not in PHOTO_SETS:
        raise ValueError(f"unknown RGB set 'rgb:{name}'; known: {', '.join('rgb:' + s for s in PHOTO_SETS)}")
    split = rgb_split(target)
    ids, images, _ = photo_patches(int(split["size"]), int(split["downscale"]))
    digest = patches_digest(images)
    if digest != split["patches_sha256"]:
        raise ValueError(f"{Path(target) / 'split.json'}: patches_sha256 {split['patches_sha256'][:16]}... but the "
                         f"installed photos give {digest[:16]}... (the photos or their JPEG decoder changed)")
    wanted = ids if name == "all" else split[name]
    where = {i: k for k, i in enumerate(ids)}
    return list(wanted), images[[where[i] for i in wanted]]
