"""DRC compare metrics against independent NumPy / SciPy re-derivations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxmia.drc import metrics as D


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", prev)


def _pair(rng, shape):
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
    return x, y


def _hole_mask(h, w):
    m = np.ones((h, w), np.float32)
    m[h // 4: h // 4 + h // 2, 1: w - 2] = 0
    return m


def ssim_map_scipy(x, y, size=11, sigma=1.5):
    """Independent SSIM map: scipy.ndimage.gaussian_filter (mode 'reflect') per channel."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    x, y = x.astype(np.float64), y.astype(np.float64)

    def g(a):
        return ndimage.gaussian_filter(a, sigma=(sigma, sigma, 0), mode="reflect", radius=(size // 2, size // 2, 0))

    mx, my = g(x), g(y)
    vx, vy, cxy = g(x * x) - mx**2, g(y * y) - my**2, g(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


@pytest.mark.parametrize("shape", [(16, 16, 3), (12, 9, 1)])
def test_masked_metrics_match_numpy(rng, shape):
    h, w, c = shape
    x, y = _pair(rng, shape)
    m = _hole_mask(h, w)
    out = jax.jit(lambda a, b, k: D.compare(a, b, k, ("mse", "mse_full", "psnr", "ssim"), window=7))(x, y, m)
    hole = (1 - m)[..., None]
    mse = np.sum(hole * (x.astype(np.float64) - y) ** 2) / (c * hole.sum())
    np.testing.assert_allclose(out["mse"], mse, rtol=1e-5)
    np.testing.assert_allclose(out["mse_full"], np.mean((x.astype(np.float64) - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(out["psnr"], 10 * np.log10(4 / mse), rtol=1e-5)
    size, sigma = D.ssim_window_for(h, w, 7, 1.5)
    smap = ssim_map_scipy(x, y, size, sigma)
    expected = np.sum(np.broadcast_to(hole, smap.shape) * smap) / (c * hole.sum())
    np.testing.assert_allclose(out["ssim"], expected, rtol=1e-4, atol=1e-5)


def test_ssim_map_default_window_vs_scipy_and_skimage_convention(rng):
    x, y = _pair(rng, (24, 20, 3))
    ours = np.asarray(jax.jit(D.ssim_map)(x, y))
    np.testing.assert_allclose(ours, ssim_map_scipy(x, y, 11, 1.5), rtol=1e-4, atol=1e-5)
    assert D.ssim_window_for(24, 20) == (11, 1.5)


def test_ssim_identity_psnr_cap_and_empty_hole(rng):
    x, _ = _pair(rng, (9, 9, 1))
    m = _hole_mask(9, 9)
    np.testing.assert_allclose(D.masked_ssim(x, x, m), 1.0, atol=1e-6)
    assert float(D.masked_mse(x, x, m)) == 0.0
    assert float(D.psnr(0.0)) == pytest.approx(100.0)
    assert float(D.psnr(1e-12)) == pytest.approx(100.0)  # capped below MSE = 4e-10
    assert float(D.psnr(4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(D.psnr(4e-8)) == pytest.approx(80.0, rel=1e-5)
    ones = np.ones((9, 9), np.float32)  # empty hole: a perfect restoration by convention
    assert float(D.masked_mse(x, -x, ones)) == 0.0 and float(D.masked_ssim(x, -x, ones)) == 1.0


def test_small_image_window_rule():
    assert D.ssim_window_for(8, 8) == (7, 1.5 * 7 / 11)
    assert D.ssim_window_for(5, 9) == (5, 1.5 * 5 / 11)
    assert D.ssim_window_for(32, 32, 7) == (7, 1.5)
    x = jnp.linspace(-1, 1, 4 * 6).reshape(4, 6, 1)
    smap = D.ssim_map(x, x * 0.5)  # window 3×3 on a 4×6 image; no error, finite
    assert smap.shape == (4, 6, 1) and bool(jnp.all(jnp.isfinite(smap)))
    np.testing.assert_allclose(smap, ssim_map_scipy(np.asarray(x), np.asarray(x) * 0.5, 3, 1.5 * 3 / 11),
                               rtol=1e-4, atol=1e-5)


def test_orientation_and_cosine(rng):
    assert float(D.orient(jnp.float32(2.0), "mse")) == -2.0
    assert float(D.orient(jnp.float32(2.0), "ssim")) == 2.0
    with pytest.raises(ValueError, match="unknown DRC metric"):
        D.orient(1.0, "lpips")
    u, v = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    expected = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(u, v)]
    np.testing.assert_allclose(D.cosine_similarity(u, v), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="zero or non-finite"):
        D.cosine_similarity(np.zeros((1, 3)), np.ones((1, 3)))
