"""DRC evidence PNGs: size, colour mode, exact original panel, determinism."""

import numpy as np
import pytest
from PIL import Image

from jaxmia.drc import evidence as E


def _expected_size(h, w, rows, scale, caption):
    return (2 + 4 * (w * scale + 2), 2 + rows * (caption + h * scale + 2))


def _panel(png, row, col, h, w, scale, caption):
    x, y = 2 + col * (w * scale + 2), 2 + row * (caption + h * scale + 2) + caption
    return png[y:y + h * scale, x:x + w * scale]


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 10, 3)])
def test_evidence_grid_panels(tmp_path, rng, shape):
    h, w, c = shape
    image = rng.uniform(-1, 1, shape).astype(np.float32)
    masks = np.ones((2, h, w), np.float32)
    masks[0, 2:5, 2:5] = 0
    masks[1, :3, :] = 0
    restored = np.where(masks[..., None] > 0, image, -image)
    labels = ["center_r10  psnr 12.3", "patches_r30  psnr 8.1"]
    path = E.evidence_grid(image, masks, restored, tmp_path / "a.png", row_labels=labels)
    scale = E.auto_scale(h, w)
    assert scale == -(-128 // max(h, w)) and max(h, w) * scale >= E.MIN_PANEL == 128
    png = Image.open(path)
    assert png.mode == ("L" if c == 1 else "RGB")
    assert png.size == _expected_size(h, w, 2, scale, E.CAPTION)
    arr = np.asarray(png)
    arr = arr[..., None] if c == 1 else arr
    u8 = np.clip(np.floor((image.astype(np.float64) + 1) * 127.5 + 0.5), 0, 255).astype(np.uint8)
    big = np.repeat(np.repeat(u8, scale, 0), scale, 1)
    for row in range(2):
        np.testing.assert_array_equal(_panel(arr, row, 0, h, w, scale, E.CAPTION), big)  # original
    # Degraded: mid-grey (128) in the hole; |difference|: 0 where known, |2x|/2·255 in the hole.
    degraded = _panel(arr, 0, 1, h, w, scale, E.CAPTION)
    assert np.all(degraded[2 * scale:5 * scale, 2 * scale:5 * scale] == 128)
    diff = _panel(arr, 1, 3, h, w, scale, E.CAPTION)
    assert np.all(diff[3 * scale:] == 0)
    expected = np.clip(np.floor(np.abs(2.0 * image[:3].astype(np.float64)) * 127.5 + 0.5), 0, 255)
    np.testing.assert_array_equal(diff[:3 * scale:scale, ::scale], expected)
    # Deterministic bytes.
    again = E.evidence_grid(image, masks, restored, tmp_path / "b.png", row_labels=labels)
    assert path.read_bytes() == again.read_bytes()


def test_summary_grid_and_errors(tmp_path, rng):
    images = rng.uniform(-1, 1, (3, 5, 7, 3)).astype(np.float32)
    masks = np.ones((3, 5, 7), np.float32)
    masks[:, 1:3, 2:5] = 0
    path = E.summary_grid(images, masks, images, ["a 1.0", "b 0.5", "c 0.1"], tmp_path / "s.png", scale=2)
    png = np.asarray(Image.open(path))
    assert png.shape[:2][::-1] == _expected_size(5, 7, 3, 2, E.CAPTION)
    u8 = E.to_uint8(images[2])
    np.testing.assert_array_equal(_panel(png, 2, 0, 5, 7, 2, E.CAPTION), np.repeat(np.repeat(u8, 2, 0), 2, 1))
    with pytest.raises(ValueError, match="channels"):
        E.evidence_grid(np.zeros((4, 4, 2)), np.ones((4, 4)), np.zeros((4, 4, 2)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="same non-zero number"):
        E.summary_grid(images, masks, images, ["only one"], tmp_path / "y.png")
    assert E.safe_filename("a/b c") != E.safe_filename("a_b c") and "/" not in E.safe_filename("a/b")
