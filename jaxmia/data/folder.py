"""Image folders: png, jpg, webp (and bmp), RGB or greyscale, converted to the model's channels.

Size rule (``resize``):
  * ``"refuse"`` (default): every image must already be H×W; a different size is an error that
    names the file.
  * ``"resize"``: resize so the shorter side is the target size (bicubic), then centre-crop to H×W.
Unreadable or corrupt files are listed by name and refused (``on_error="refuse"``, default) or
skipped with a warning that lists them (``on_error="skip"``). With ``with_facts`` the reader also
returns what each file says about itself (format, stored size, JPEG quality: :mod:`jaxmia.data.files`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from jaxmia.data.files import file_facts

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RESIZE_RULES = ("refuse", "resize")
ERROR_RULES = ("refuse", "skip")


def _to_channels(img: Image.Image, channels: int) -> Image.Image:
    if channels == 1:
        return img.convert("L")
    if channels == 3:
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # alpha over white
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")
    raise ValueError(f"image folders can feed models with 1 or 3 channels, not {channels}")


def _resize_and_crop(img: Image.Image, h: int, w: int) -> Image.Image:
    scale = max(h / img.height, w / img.width)
    size = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
    img = img.resize(size, Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def read_folder(
    folder,
    image_shape: Optional[tuple] = None,
    *,
    resize: str = "refuse",
    on_error: str = "refuse",
    with_facts: bool = False,
):
    """Reads every image below ``folder`` (sorted, recursive).

    Args:
      image_shape: (H, W, C) the model expects; None infers it from the first readable image.
      with_facts: also return one :func:`jaxmia.data.files.file_facts` dict per image.

    Returns:
      (ids, images) with ids the paths relative to ``folder`` and images (N, H, W, C) in [-1, 1];
      (ids, images, facts) with ``with_facts``.
    """
    folder = Path(folder)
    if resize not in RESIZE_RULES:
        raise ValueError(f"resize must be one of {RESIZE_RULES}, got {resize!r}")
    if on_error not in ERROR_RULES:
        raise ValueError(f"on_error must be one of {ERROR_RULES}, got {on_error!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")

    ids, arrays, bad, wrong_size, facts = [], [], [], [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                fact = file_facts(path, img)
                if image_shape is None:
                    channels = 1 if img.mode in ("L", "LA", "I", "I;16", "F", "1") else 3
                    image_shape = (img.height, img.width, channels)
                h, w, c = image_shape
                img = _to_channels(img, c)
                if (img.height, img.width) != (h, w):
                    if resize == "refuse":
                        wrong_size.append(f"{path.relative_to(folder)} ({img.width}x{img.height})")
                        continue
                    img = _resize_and_crop(img, h, w)
                arr = np.asarray(img, dtype=np.float32).reshape(h, w, c)
        except (OSError, SyntaxError, ValueError) as err:
            bad.append(f"{path.relative_to(folder)} ({type(err).__name__})")
            continue
        ids.append(path.relative_to(folder).as_posix())
        arrays.append(arr / 127.5 - 1.0)
        facts.append(fact)

    if wrong_size:
        h, w, _ = image_shape
        raise ValueError(
            f"{folder}: {len(wrong_size)} image(s) are not {w}x{h}: {', '.join(wrong_size[:5])}"
            f"{' ...' if len(wrong_size) > 5 else ''} (use resize='resize' / --resize to resize and centre-crop)"
        )
    if bad:
        listing = ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
        if on_error == "refuse":
            raise ValueError(f"{folder}: {len(bad)} unreadable image(s): {listing} (use on_error='skip' to skip them)")
        print(f"jaxmia: warning: skipped {len(bad)} unreadable image(s) in {folder}: {listing}", file=sys.stderr)
    if not arrays:
        raise ValueError(f"{folder}: no readable images")
    if with_facts:
        return ids, np.stack(arrays), facts
    return ids, np.stack(arrays)
