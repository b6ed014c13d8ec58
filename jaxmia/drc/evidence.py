"""Evidence images: original | degraded | restored | |difference| grids as PNG (PIL + NumPy).

The restored image is DRC's human-readable evidence ("Model Will Tell", Fu et al., arXiv
2403.08487): a member's hole comes back close to the original, a non-member's does not.

Layout (deterministic; all sizes in output pixels): panels are the image upscaled by an integer
``scale`` with nearest neighbour, separated and framed by ``PAD`` white pixels; each row may carry a
caption strip of ``CAPTION`` pixels above its panels. For n_rows × n_cols panels of an H×W image:
width = PAD + n_cols·(W·scale + PAD), height = PAD + n_rows·(caption + H·scale + PAD), and panel
(r, c) starts at x = PAD + c·(W·scale + PAD), y = PAD + r·(caption + H·scale + PAD) + caption.
Pixel values: u8 = round((x + 1)·127.5) clipped to 0..255; the degraded panel shows the hole at
0 (mid-grey), the difference panel maps |x − x̂| ∈ [0, 2] linearly to 0..255.
"""

from __future__ import annotations

import math
import re
import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 2
CAPTION = 14
MIN_PANEL = 128  # auto scale: panels are at least this many pixels on their longer side (readable in report.html)
COLUMNS = ("original", "degraded", "restored", "|difference|")


def to_uint8(x) -> np.ndarray:
    """[−1, 1] → uint8: round((x + 1)·127.5), clipped."""
    return np.clip(np.floor((np.asarray(x, np.float64) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


def auto_scale(height: int, width: int) -> int:
    """Integer nearest-neighbour upscaling so a panel's longer side is at least MIN_PANEL pixels."""
    return max(1, math.ceil(MIN_PANEL / max(height, width)))


def grid_size(height: int, width: int, n_rows: int, n_cols: int = 4, *, scale: int, caption: int) -> tuple:
    """(width, height) in pixels of a grid; see the module docstring."""
    return PAD + n_cols * (width * scale + PAD), PAD + n_rows * (caption + height * scale + PAD)


def panel_origin(row: int, col: int, height: int, width: int, *, scale: int, caption: int) -> tuple:
    """(x, y) of the top-left pixel of panel (row, col)."""
    return PAD + col * (width * scale + PAD), PAD + row * (caption + height * scale + PAD) + caption


def panels(image, mask, restored) -> list[np.ndarray]:
    """The four uint8 panels (H, W, C) of one restoration: original, degraded, restored, |diff|."""
    image = np.asarray(image, np.float32)
    restored = np.asarray(restored, np.float32)
    known = np.asarray(mask, np.float32)[..., None]
    degraded = image * known
    diff = np.abs(image - restored) - 1.0  # [0, 2] → [−1, 1] so to_uint8 maps it to 0..255
    return [to_uint8(p) for p in (image, degraded, restored, diff)]


def _mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise ValueError(f"evidence images need 1 (grey) or 3 (RGB) channels, got {channels}")


def _draw_grid(rows: Sequence[list], captions: Optional[Sequence[str]], path, scale: Optional[int]) -> Path:
    height, width, channels = rows[0][0].shape
    mode = _mode(channels)
    scale = auto_scale(height, width) if scale is None else int(scale)
    if scale < 1:
        raise ValueError(f"evidence scale must be >= 1, got {scale}")
    caption = CAPTION if captions else 0
    size = grid_size(height, width, len(rows), len(rows[0]), scale=scale, caption=caption)
    canvas = Image.new(mode, size, 255 if mode == "L" else (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            big = np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1)
            tile = Image.fromarray(big[..., 0] if mode == "L" else big, mode)
            canvas.paste(tile, panel_origin(r, c, height, width, scale=scale, caption=caption))
        if caption:
            x, y = panel_origin(r, 0, height, width, scale=scale, caption=caption)
            draw.text((x, y - caption + 1), captions[r], fill=0 if mode == "L" else (0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG", optimize=False)
    return path


def evidence_grid(image, masks, restored, path, *, row_labels: Optional[Sequence[str]] = None,
                  scale: Optional[int] = None) -> Path:
    """One PNG for one image: a row per task, columns original | degraded | restored | |difference|.

    Args:
      image: (H, W, C) in [−1, 1], C = 1 or 3.
      masks: (R, H, W) known-region masks, one per row.
      restored: (R, H, W, C) restorations.
      row_labels: optional caption per row (e.g. "center_r50  PSNR 23.1 dB").
      scale: nearest-neighbour upscaling (default :func:`auto_scale`).

    Returns the path written.
    """
    masks = np.asarray(masks)
    restored = np.asarray(restored)
    if masks.ndim == 2:
        masks, restored = masks[None], restored[None]
    if restored.shape[1:] != np.shape(image) or masks.shape != restored.shape[:3]:
        raise ValueError(f"evidence: image {np.shape(image)}, masks {masks.shape} and restorations "
                         f"{restored.shape} do not match")
    if row_labels is not None and len(row_labels) != len(masks):
        raise ValueError(f"evidence: {len(row_labels)} row labels for {len(masks)} rows")
    rows = [panels(image, m, x) for m, x in zip(masks, restored)]
    return _draw_grid(rows, row_labels, path, scale)


def summary_grid(images, masks, restored, captions: Sequence[str], path, *, scale: Optional[int] = None) -> Path:
    """One PNG with a row per image (e.g. the most member-like, then the most non-member-like).

    Args:
      images: (N, H, W, C); masks: (N, H, W); restored: (N, H, W, C); captions: one per row
        (id and score).
    """
    images, masks, restored = np.asarray(images), np.asarray(masks), np.asarray(restored)
    if not (len(images) == len(masks) == len(restored) == len(captions)) or len(images) == 0:
        raise ValueError(f"summary grid: {len(images)} images, {len(masks)} masks, {len(restored)} restorations "
                         f"and {len(captions)} captions; need the same non-zero number of each")
    rows = [panels(x, m, y) for x, m, y in zip(images, masks, restored)]
    return _draw_grid(rows, list(captions), path, scale)


def safe_filename(sample_id: str) -> str:
    """A file-system-safe name for an id, with a short hash so distinct ids never collide."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(sample_id)).strip("._")[:60] or "image"
    return f"{stem}-{hashlib.sha256(str(sample_id).encode()).hexdigest()[:8]}"
