"""Mild image processing of the kind publishing applies: blur, JPEG, a resize round trip, brightness.

Each processing is one pure function of an image batch (N, H, W, C) float in [-1, 1] and one
parameter, registered under a short name; a spec string ``"name:param"`` selects it (``"blur:0.6"``,
``"jpeg:75"``, ``"resize:0.5"``, ``"brightness:0.04"``). They are what the processing-sensitivity
check applies to half of U (:mod:`jaxmia.shift.sensitivity`): a model that finds blurred images
easier to denoise would call them "members" (issue 16: σ = 0.6 px made an innocent pair look 100%
guilty).

* ``blur:σ`` Gaussian blur, σ in pixels (``scipy.ndimage.gaussian_filter``, reflected borders);
* ``jpeg:q`` JPEG round trip at Pillow/IJG quality q (images quantised to 8 bits first, as any file is);
* ``resize:f`` bicubic resize to round(f·H) × round(f·W) and back (float precision, Pillow mode ``F``);
* ``brightness:δ`` add δ (on the [-1, 1] scale: δ = 0.04 is 5 of 255 grey levels), clipped.
"""

from __future__ import annotations

import io
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage


class Processing(NamedTuple):
    fn: Callable[[np.ndarray, float], np.ndarray]
    default: float
    words: str  # plain words for reports, with {p} for the parameter


def _blur(images, sigma):
    if sigma <= 0:
        raise ValueError(f"blur: sigma must be > 0 px, got {sigma}")
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="reflect")


def to_uint8(images) -> np.ndarray:
    """[-1, 1] floats → 0..255 uint8 (rounded), as an image file stores them."""
    return np.clip(np.round((np.asarray(images, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _pil(image_u8):
    return Image.fromarray(image_u8[..., 0] if image_u8.shape[-1] == 1 else image_u8)


def _jpeg(images, quality):
    q = int(round(quality))
    if not 1 <= q <= 100:
        raise ValueError(f"jpeg: quality must be in 1..100, got {quality}")
    out = []
    for img in to_uint8(images):
        buf = io.BytesIO()
        _pil(img).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as decoded:
            out.append(np.asarray(decoded, np.float32).reshape(img.shape))
    return np.stack(out) / 127.5 - 1.0


def _resize(images, factor):
    if not 0 < factor < 1:
        raise ValueError(f"resize: factor must be in (0, 1), got {factor}")
    n, h, w, c = images.shape
    small = (max(1, round(factor * w)), max(1, round(factor * h)))
    out = np.empty_like(images, dtype=np.float32)
    for i in range(n):
        for k in range(c):
            ch = Image.fromarray(np.asarray(images[i, :, :, k], np.float32), mode="F")
            out[i, :, :, k] = np.asarray(ch.resize(small, Image.BICUBIC).resize((w, h), Image.BICUBIC))
    return out


def _brightness(images, delta):
    return images + delta


PROCESSINGS = {
    "blur": Processing(_blur, 0.6, "a Gaussian blur of {p} px"),
    "jpeg": Processing(_jpeg, 75, "JPEG compression at quality {p}"),
    "resize": Processing(_resize, 0.5, "a resize to {p}x and back"),
    "brightness": Processing(_brightness, 0.04, "a brightness change of {p} (on the -1..1 scale)"),
}

DEFAULT_SENSITIVITY = ("blur:0.6", "jpeg:90", "jpeg:75", "jpeg:50", "resize:0.5", "brightness:0.04")


def parse_processing(spec: str) -> tuple[str, float]:
    """``"blur:0.6"`` → ``("blur", 0.6)``; ``"blur"`` uses the default parameter."""
    name, _, param = str(spec).partition(":")
    if name not in PROCESSINGS:
        raise ValueError(f"unknown processing {spec!r}; known: {', '.join(PROCESSINGS)} (as name:parameter)")
    try:
        value = float(param) if param else float(PROCESSINGS[name].default)
    except ValueError:
        raise ValueError(f"processing {spec!r}: parameter {param!r} is not a number") from None
    return name, value


def describe_processing(spec: str) -> str:
    name, value = parse_processing(spec)
    return PROCESSINGS[name].words.format(p=f"{value:g}")


def apply_processing(spec: str, images) -> np.ndarray:
    """The processed batch (N, H, W, C) float32 in [-1, 1]."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"processing {spec!r}: expected (N, H, W, C) images, got shape {images.shape}")
    name, value = parse_processing(spec)
    return np.clip(PROCESSINGS[name].fn(images, value), -1.0, 1.0).astype(np.float32)
