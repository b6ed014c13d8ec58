"""The blind baseline: can P and U be told apart without the model? (issue 16)

Das, Zhang & Tramèr ("Blind baselines beat membership inference attacks for foundation models",
2024) and Zhang, Das, Kamath & Tramèr ("Membership inference attacks cannot prove that a model was
trained on your data", SaTML 2025) show that member / non-member benchmarks are often separable by
model-free features, and then any membership score "detects" the shift. jaxmia runs the same scoring
model and the same calibrated test as the verdict (:func:`jaxmia.cdi.run_cdi`) on per-image
features that never touch the model:

* intensity: mean, standard deviation, 1st / 99th percentiles, share of near-black / near-white
  pixels, number of distinct 8-bit grey levels (a quantisation trace: recompressed or resized images
  have more);
* colour (RGB only): mean saturation (max − min over channels), R − G and B − G;
* sharpness: gradient energy and mean absolute gradient, Laplacian (high-frequency) energy and its
  ratio to the variance;
* spectrum: the share of the non-DC power in four radial frequency bands;
* JPEG traces: 8×8 blockiness (jumps across the 8-pixel grid over jumps elsewhere; 1 for images
  narrower than 16 px) and, from the files, the estimated JPEG quality;
* the files: stored width, height, bytes per pixel, format (JPEG / PNG / WEBP indicators)
  (:mod:`jaxmia.data.files`; only when both sides were read from files).

If the blind test rejects at α, the audit's verdict is "inconclusive: P and U differ without the
model", with the blind p-value and the features that separate the sets (per-feature AUC and a
two-sided Mann–Whitney p).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from jaxmia.table import FeatureTable

DESCRIPTIONS = {
    "px_mean": "mean brightness", "px_std": "contrast (pixel standard deviation)",
    "px_p01": "darkest tones (1st percentile)", "px_p99": "brightest tones (99th percentile)",
    "px_dark": "share of near-black pixels", "px_bright": "share of near-white pixels",
    "px_levels": "number of distinct grey levels (a compression / resizing trace)",
    "col_sat": "colour saturation", "col_rg": "red-green balance", "col_bg": "blue-green balance",
    "grad_energy": "sharpness (gradient energy)", "grad_abs": "edge strength (mean gradient)",
    "hf_energy": "fine detail (high-frequency energy)", "hf_ratio": "fine detail relative to contrast",
    "band_0": "share of coarse structure in the spectrum", "band_1": "share of low-mid frequencies",
    "band_2": "share of mid-high frequencies", "band_3": "share of the finest frequencies",
    "jpeg_blockiness": "JPEG 8x8 block edges",
    "file_width": "stored image width", "file_height": "stored image height",
    "file_bytes_per_pixel": "file size per pixel", "file_is_jpeg": "file format JPEG",
    "file_is_png": "file format PNG", "file_is_webp": "file format WEBP",
    "file_jpeg_quality": "JPEG quality of the files",
}
BANDS = (0.0, 0.25, 0.5, 0.75, 1.0 + 1e-9)


def pixel_features(images) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, (N, d) values) of the model-free pixel features of images (N, H, W, C) in [-1, 1]."""
    x = np.asarray(images, np.float64)
    if x.ndim != 4:
        raise ValueError(f"blind features: expected (N, H, W, C) images, got shape {x.shape}")
    n, h, w, c = x.shape
    if h < 3 or w < 3:
        raise ValueError(f"blind features need images of at least 3x3 pixels, got {h}x{w}")
    flat = x.reshape(n, -1)
    grey = x.mean(-1)
    cols = {
        "px_mean": flat.mean(1), "px_std": flat.std(1),
        "px_p01": np.quantile(flat, 0.01, axis=1), "px_p99": np.quantile(flat, 0.99, axis=1),
        "px_dark": (flat <= -0.98).mean(1), "px_bright": (flat >= 0.98).mean(1),
    }
    u8 = np.clip(np.round((flat + 1.0) * 127.5), 0, 255).astype(np.int64)
    cols["px_levels"] = np.array([np.unique(row).size for row in u8], np.float64) / min(256, flat.shape[1])
    if c == 3:
        cols["col_sat"] = (x.max(-1) - x.min(-1)).reshape(n, -1).mean(1)
        cols["col_rg"] = (x[..., 0] - x[..., 1]).reshape(n, -1).mean(1)
        cols["col_bg"] = (x[..., 2] - x[..., 1]).reshape(n, -1).mean(1)
    dx = np.diff(grey, axis=2)
    dy = np.diff(grey, axis=1)
    cols["grad_energy"] = (dx**2).mean((1, 2)) + (dy**2).mean((1, 2))
    cols["grad_abs"] = np.abs(dx).mean((1, 2)) + np.abs(dy).mean((1, 2))
    lap = (grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] + grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:]
           - 4.0 * grey[:, 1:-1, 1:-1])
    cols["hf_energy"] = (lap**2).mean((1, 2))
    cols["hf_ratio"] = cols["hf_energy"] / (grey.reshape(n, -1).var(1) + 1e-8)
    power = np.abs(np.fft.fft2(grey - grey.mean((1, 2), keepdims=True))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    radius = np.sqrt(fy**2 + fx**2) / np.sqrt(0.5)
    total = power.sum((1, 2)) + 1e-12
    for k in range(len(BANDS) - 1):
        ring = (radius > 0) & (radius >= BANDS[k]) & (radius < BANDS[k + 1])
        cols[f"band_{k}"] = power[:, ring].sum(1) / total
    if w >= 16:
        jumps = np.abs(dx)  # jump between column j and j + 1 at index j
        on_grid = np.zeros(w - 1, bool)
        on_grid[7::8] = True
        cols["jpeg_blockiness"] = jumps[:, :, on_grid].mean((1, 2)) / (jumps[:, :, ~on_grid].mean((1, 2)) + 1e-8)
    else:
        cols["jpeg_blockiness"] = np.ones(n)
    names = tuple(cols)
    return names, np.stack([cols[k] for k in names], axis=1)


def file_features(files) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, (N, d) values) from per-image file facts (:func:`jaxmia.data.files.file_facts`)."""
    names = ("file_width", "file_height", "file_bytes_per_pixel", "file_is_jpeg", "file_is_png", "file_is_webp",
             "file_jpeg_quality")
    rows = []
    for f in files:
        q = f.get("jpeg_quality")
        rows.append([f["width"], f["height"], f["bytes"] / max(1, f["width"] * f["height"]),
                     f["format"] == "JPEG", f["format"] == "PNG", f["format"] == "WEBP", 0.0 if q is None else q])
    return names, np.asarray(rows, np.float64).reshape(len(rows), len(names))


def blind_table(ids, images, files=None) -> FeatureTable:
    """The blind feature table of one set (file features only when ``files`` is given)."""
    names, values = pixel_features(images)
    if files is not None:
        fnames, fvalues = file_features(files)
        names, values = names + fnames, np.concatenate([values, fvalues], axis=1)
    return FeatureTable(np.asarray(ids, str), names, values, {"kind": "blind_features"})


def separating_features(p: FeatureTable, u: FeatureTable, *, alpha: float = 0.01, top: int = 5) -> list[dict]:
    """The features that tell P from U best: per-feature AUC (P positive), effect size, two-sided p.

    Effect = (mean_P − mean_U) / pooled standard deviation; p: Mann–Whitney two-sided;
    ``separates`` when p ≤ alpha / d (Bonferroni over the d features). Sorted by |AUC − 0.5|.
    """
    rows = []
    d = len(p.names)
    for k, name in enumerate(p.names):
        a, b = p.values[:, k], u.values[:, k]
        if np.ptp(np.concatenate([a, b])) == 0:
            continue
        mw = stats.mannwhitneyu(a, b, alternative="two-sided")
        sd = np.sqrt(0.5 * (a.var(ddof=1) + b.var(ddof=1)))
        rows.append({"feature": name, "description": DESCRIPTIONS.get(name, name),
                     "auc": float(mw.statistic / (a.size * b.size)),
                     "effect": float((a.mean() - b.mean()) / sd) if sd > 0 else float(np.sign(a.mean() - b.mean()) * np.inf),
                     "mean_published": float(a.mean()), "mean_unpublished": float(b.mean()),
                     "p_value": float(mw.pvalue), "separates": bool(mw.pvalue <= alpha / d)})
    rows.sort(key=lambda r: -abs(r["auc"] - 0.5))
    return rows[:top]


def mean_change(before: FeatureTable, after: FeatureTable) -> np.ndarray:
    """Mean change of each blind feature from ``before`` to ``after``, in the features' own units."""
    return after.values.mean(0) - before.values.mean(0)


def closest_processing(delta: np.ndarray, signatures: dict, scale: np.ndarray) -> list[dict]:
    """Known processings ranked by how close their effect is to the P − U shift ``delta``.

    ``delta`` and each signature are mean changes (:func:`mean_change`), divided here by ``scale``
    (U's per-feature standard deviation) so every feature counts in units of U's spread. Ranked by the
    Euclidean distance of the standardised vectors (strength matters: a resize round trip is a
    stronger low-pass than a mild blur); the cosine similarity of the directions is reported too.
    """
    unit = np.where(scale > 0, scale, 1.0)
    d = np.asarray(delta) / unit
    out = []
    for spec, sig in signatures.items():
        v = np.asarray(sig) / unit
        denom = np.linalg.norm(d) * np.linalg.norm(v)
        out.append({"processing": spec, "distance": float(np.linalg.norm(d - v)),
                    "similarity": float(d @ v / denom) if denom > 0 else 0.0})
    return sorted(out, key=lambda r: r["distance"])


def blind_test(p: FeatureTable, u: FeatureTable, cdi_config) -> dict:
    """The verdict's test on blind features: ``run_cdi`` with every blind column, no curve.

    Returns ``{"verdict", "separating", "features", "pairing"}`` (verdict: as ``run_cdi``'s).
    """
    from jaxmia.cdi import run_cdi

    cfg = dataclasses.replace(cdi_config, features=None, curve=False)
    res = run_cdi(p, u, cfg)
    return {"verdict": res["verdict"], "separating": separating_features(p, u, alpha=cfg.alpha),
            "features": res["features"], "pairing": res["pairing"]}
