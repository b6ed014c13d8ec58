"""Data: image folders, ``.npz`` arrays and the bundled sets (demo digits, RGB photo patches), as id-keyed datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jaxmia.data.arrays import read_npz, write_npz  # noqa: F401
from jaxmia.data.dataset import Batch, Dataset, iter_batches  # noqa: F401
from jaxmia.data.demo import DEMO_SETS, DEMO_TARGET, demo_split, digits  # noqa: F401
from jaxmia.data.folder import read_folder  # noqa: F401
from jaxmia.data.photos import PHOTO_SETS, photo_patches, rgb_split  # noqa: F401


def load_dataset(
    spec,
    *,
    image_shape: Optional[tuple] = None,
    resize: str = "refuse",
    on_error: str = "refuse",
) -> Dataset:
    """Loads ``spec``: an image folder, an ``.npz`` file, ``demo:members|nonmembers|all`` (digits) or
    ``rgb:members|nonmembers|all`` (photo patches of the bundled RGB target).

    Args:
      image_shape: (H, W, C) the model expects. Images are converted to C channels; sizes follow
        ``resize`` (folders) or must match exactly (arrays, bundled sets).
    """
    spec = str(spec)
    files = None
    if spec.startswith("demo:"):
        from jaxmia.data.demo import read_demo

        ids, images = read_demo(spec.split(":", 1)[1])
        cond = None
    elif spec.startswith("rgb:"):
        from jaxmia.data.photos import read_rgb

        ids, images = read_rgb(spec.split(":", 1)[1])
        cond = None
    elif spec.endswith(".npz"):
        ids, images, cond = read_npz(spec)
    elif Path(spec).is_dir():
        ids, images, files = read_folder(spec, image_shape, resize=resize, on_error=on_error, with_facts=True)
        cond = None
    elif Path(spec).exists():
        raise ValueError(f"{spec}: not an image folder or .npz file")
    else:
        raise FileNotFoundError(f"data not found: {spec}")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        h, w, c = image_shape
        raise ValueError(f"{spec}: images are {tuple(images.shape[1:])} (H, W, C) but the model takes {(h, w, c)}")
    return Dataset(ids, images, cond, spec, files)
