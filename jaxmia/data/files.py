"""Per-image file facts: what the file itself says about how an image was made (issue 16).

Two sets that differ in format, stored size or JPEG quality differ without any model, and a
membership test will pick that difference up (blurred, recompressed or resized images are easier to
denoise). :func:`file_facts` records, for each image file as read:

  ``format`` (``PNG``, ``JPEG``, ``WEBP``, ``BMP``), ``width`` and ``height`` as stored (before any
  resize), ``mode`` (``L``, ``RGB``, ...), ``bytes`` (file size) and, for JPEGs, ``jpeg_quality``: the
  IJG quality 1..100 whose scaled luminance table is closest to the file's (exact, ``jpeg_table_error``
  0, for files written by libjpeg / Pillow / most tools), else None.

The IJG scaling (libjpeg ``jcparam.c``, ``jpeg_quality_scaling``): scale = 5000/q for q < 50, else
200 − 2q; each entry of the standard table (ITU-T T.81 Annex K, Table K.1) becomes
clip(⌊(entry·scale + 50)/100⌋, 1, 255).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# ITU-T T.81 Table K.1, natural (row-major) order, as Pillow reports ``Image.quantization``.
STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.int64)


@functools.lru_cache(maxsize=1)
def ijg_luminance_tables() -> np.ndarray:
    """(100, 64): the IJG luminance table of quality 1..100 (row q − 1)."""
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    return np.clip((STD_LUMINANCE[None] * scale[:, None] + 50) // 100, 1, 255)


def estimate_jpeg_quality(luminance_table) -> tuple[int, float]:
    """(quality, mean absolute table error) of the IJG quality closest to a 64-entry luminance table."""
    table = np.asarray(luminance_table, np.int64).ravel()
    if table.size != 64:
        raise ValueError(f"a JPEG quantisation table has 64 entries, got {table.size}")
    err = np.abs(ijg_luminance_tables() - table[None]).mean(1)
    best = int(np.argmin(err))
    return best + 1, float(err[best])


def file_facts(path, img) -> dict:
    """Facts of one opened image file ``img`` (a PIL image) at ``path``."""
    facts = {"format": str(img.format or Path(path).suffix.lstrip(".").upper()), "width": int(img.width),
             "height": int(img.height), "mode": str(img.mode), "bytes": int(Path(path).stat().st_size),
             "jpeg_quality": None, "jpeg_table_error": None}
    tables = getattr(img, "quantization", None)
    if facts["format"] == "JPEG" and tables:
        facts["jpeg_quality"], facts["jpeg_table_error"] = estimate_jpeg_quality(tables[min(tables)])
    return facts
