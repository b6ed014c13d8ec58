"""Compare: image metrics on the hole region, data range [−1, 1] (docs/methods/mia.md §4.2 "Compare").

Per-example functions on (H, W, C) images and an (H, W) known-region mask M (1 known, 0 hole);
callers vmap them. Raw values are returned (MSE is lower = member); :data:`ORIENTATION` and
:func:`orient` give the per-task scores oriented higher = member (−MSE, PSNR, SSIM, cosine).

An empty hole (nothing to restore) counts as a perfect restoration: MSE 0, PSNR 100 dB, SSIM 1.
Built-in masks never have an empty hole (:mod:`jaxmia.drc.masks`).

The ``model`` metric (:func:`model_distance`) is the distance between the target denoiser's outputs
on the original and on the restoration at a small t with one fixed noise: jaxmia's semantic compare
that needs no outside weights.

Note: "Model Will Tell" (Fu et al., arXiv 2403.08487) compares semantic embeddings (CLIP, a face
encoder), which jaxmia neither bundles nor downloads; pass a local ``embed_fn`` to
:func:`jaxmia.drc.run_drc` for the cosine score. The pixel metrics are jaxmia's defaults.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxmia import schedule as sched

DATA_RANGE = 2.0  # images live in [−1, 1]
PSNR_CAP_DB = 100.0
SSIM_K1, SSIM_K2 = 0.01, 0.03

# +1: higher = member as computed; −1: lower = member (negate before any metric).
ORIENTATION = {"mse": -1.0, "mse_full": -1.0, "psnr": 1.0, "ssim": 1.0, "model": -1.0, "cos": 1.0}


def orient(values, metric: str):
    """Per-task scores oriented higher = member (docs/methods/mia.md §1, "Orientation")."""
    if metric not in ORIENTATION:
        raise ValueError(f"unknown DRC metric {metric!r}; known: {', '.join(ORIENTATION)}")
    return ORIENTATION[metric] * values


def _hole(mask, x):
    return (1.0 - jnp.asarray(mask, x.dtype))[..., None]


def masked_mse(x, y, mask):
    """Σ(1−M)(x−y)² / (C·Σ(1−M)): the mean squared error over hole pixels and channels."""
    hole = _hole(mask, x)
    denom = x.shape[-1] * jnp.sum(hole)
    total = jnp.sum(hole * (x - y) ** 2)
    return jnp.where(denom > 0, total / jnp.maximum(denom, 1.0), 0.0)


def full_mse(x, y):
    """Whole-image MSE (the known region contributes zeros after an exact paste)."""
    return jnp.mean((x - y) ** 2)


def psnr(mse):
    """10·log10(L²/MSE) with L = 2, capped at 100 dB (MSE ≤ 4e-10, including MSE = 0)."""
    floor = DATA_RANGE**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    return 10.0 * jnp.log10(DATA_RANGE**2 / jnp.maximum(mse, floor))


def ssim_window_for(height: int, width: int, window: int = 11, sigma: float = 1.5) -> tuple[int, float]:
    """The Gaussian window actually used on an H×W image: (size, σ).

    Rule for small images: the window never exceeds the image. Its size becomes the largest odd
    number ≤ min(H, W) when that is smaller than ``window``, and σ shrinks in proportion
    (σ·size/window), so the window is still truncated at the same multiple of σ.
    """
    limit = min(height, width)
    limit = limit if limit % 2 == 1 else limit - 1
    size = min(int(window), max(limit, 1))
    return size, float(sigma) * size / int(window)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps exp(−k²/2σ²), k = −r..r, r = size // 2."""
    r = size // 2
    taps = np.exp(-0.5 * (np.arange(-r, r + 1, dtype=np.float64) / sigma) ** 2)
    return (taps / taps.sum()).astype(np.float32)


def _blur(x, taps):
    """Separable 'same' Gaussian filter over H and W with half-sample symmetric padding
    (scipy.ndimage's ``mode="reflect"``)."""
    r = len(taps) // 2
    if r == 0:
        return x
    height, width = x.shape[:2]
    xp = jnp.pad(x, ((r, r), (0, 0), (0, 0)), mode="symmetric")
    x = sum(float(taps[k]) * xp[k:k + height] for k in range(len(taps)))
    xp = jnp.pad(x, ((0, 0), (r, r), (0, 0)), mode="symmetric")
    return sum(float(taps[k]) * xp[:, k:k + width] for k in range(len(taps)))


def ssim_map(x, y, *, window: int = 11, sigma: float = 1.5):
    """Per-pixel, per-channel SSIM (Wang et al., IEEE TIP 2004, Eq. 13) with a Gaussian window.

    K1 = 0.01, K2 = 0.03, L = 2; population (not sample) covariances, as skimage's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``. The map keeps the
    image size (symmetric padding), so it can be averaged over any region.
    """
    size, sig = ssim_window_for(x.shape[0], x.shape[1], window, sigma)
    taps = gaussian_window(size, sig)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    # One blur of the five stacked moments (x, y, x², y², xy) keeps the compiled graph small.
    moments = _blur(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), taps)
    mu_x, mu_y, ex2, ey2, exy = jnp.split(moments, 5, axis=-1)
    var_x, var_y, cov = ex2 - mu_x**2, ey2 - mu_y**2, exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def masked_ssim(x, y, mask, *, window: int = 11, sigma: float = 1.5):
    """The SSIM map averaged over hole pixels and channels (1 for an empty hole)."""
    hole = jnp.broadcast_to(_hole(mask, x), x.shape)
    smap = ssim_map(x, y, window=window, sigma=sigma)
    denom = jnp.sum(hole)
    return jnp.where(denom > 0, jnp.sum(hole * smap) / jnp.maximum(denom, 1.0), 1.0)


def model_distance(eps_x, denoiser, y, t, noise, cond=None):
    """The ``model`` metric: mean over elements of (ε̂_θ(q(x0, t, ε), t) − ε̂_θ(q(x̂, t, ε), t))².

    The target's own denoiser as the feature extractor ("compare" in the model's view, no outside
    weights): both images are noised to the same small t with the SAME ε, so the distance is the
    change of the network's output that the restoration x̂ causes. ``eps_x`` is the original's
    ε̂ (computed once per image by the caller). Lower = member. Images in the denoiser's space.
    """
    t = jnp.asarray(t, jnp.int32)
    eps_y = denoiser.eps(sched.q_sample(denoiser.schedule, y, t, noise), t, cond)
    return jnp.mean((eps_x - eps_y) ** 2)


def compare(x, y, mask, metrics=("mse", "psnr", "ssim"), *, window: int = 11, sigma: float = 1.5) -> dict:
    """The requested pixel metrics of one restoration ``y`` of ``x`` under mask M (raw orientation)."""
    out = {}
    mse = masked_mse(x, y, mask)
    for name in metrics:
        if name == "mse":
            out[name] = mse
        elif name == "mse_full":
            out[name] = full_mse(x, y)
        elif name == "psnr":
            out[name] = psnr(mse)
        elif name == "ssim":
            out[name] = masked_ssim(x, y, mask, window=window, sigma=sigma)
        elif name == "model":
            continue  # needs the denoiser: :func:`model_distance`, computed by the caller
        else:
            raise ValueError(f"metric {name!r} is not a pixel metric; known: mse, mse_full, psnr, ssim")
    return out


def cosine_similarity(u, v) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays (host side, NumPy)."""
    u = np.asarray(u, np.float64).reshape(len(u), -1)
    v = np.asarray(v, np.float64).reshape(len(v), -1)
    if u.shape != v.shape:
        raise ValueError(f"embed_fn returned embeddings of different shapes {u.shape} and {v.shape}")
    nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    if np.any(nu == 0) or np.any(nv == 0) or not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
        raise ValueError("embed_fn returned a zero or non-finite embedding; cosine similarity is undefined")
    return np.sum(u * v, axis=1) / (nu * nv)

