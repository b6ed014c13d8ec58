"""Report figures (matplotlib, Agg backend): ROC curves, p-value vs sample count, score histograms.

Every function writes one PNG and returns its path. The log-log ROC follows the LiRA convention
(docs/methods/mia.md §2.6: both axes from 1/n_neg (or 1e-5) to 1, with the chance diagonal); the p-value
plot follows the paper's Figure 2 (docs/methods/cdi.md §7: log-log, mean p with a band, lines at 0.05 and 0.01).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_roc_curves(curves: Mapping[str, object], path, *, loglog: bool = True, title: str = "ROC") -> Path:
    """ROC curves of several attacks on one figure, with the chance diagonal.

    Args:
      curves: name → :class:`jaxmia.inference.metrics.RocCurve` (or any object with ``fpr``, ``tpr``
        and ``n_neg``), or name → ``(fpr, tpr)``.
      path: the PNG to write.
      loglog: log axes from min(1/n_neg) (at least 1e-5) to 1; zero rates are drawn at that floor.
    """
    if not curves:
        raise ValueError("plot_roc_curves: no curve to draw")
    fig, ax = _pyplot().subplots(figsize=(4.8, 4.5))
    n_negs = [getattr(c, "n_neg", None) for c in curves.values()]
    floor = max(1e-5, min((1.0 / n for n in n_negs if n), default=1e-5)) if loglog else 0.0
    for name, curve in curves.items():
        fpr, tpr = (curve.fpr, curve.tpr) if hasattr(curve, "fpr") else curve
        fpr = np.asarray(fpr, float)
        tpr = np.asarray(tpr, float)
        if loglog:
            fpr, tpr = np.maximum(fpr, floor), np.maximum(tpr, floor)
        ax.plot(fpr, tpr, label=name, lw=1.4, drawstyle="steps-post" if loglog else "default")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_pvalue_curve(
    curves: Mapping[str, object], path, *, alphas: Sequence[float] = (0.05, 0.01), title: str = ""
) -> Path:
    """Mean p (with its band) against the number of samples per side, log-log, α lines dashed.

    Args:
      curves: name → :class:`jaxmia.inference.curves.CurveResult` or its ``to_dict()``.
    """
    if not curves:
        raise ValueError("plot_pvalue_curve: no curve to draw")
    fig, ax = _pyplot().subplots(figsize=(5.2, 4.0))
    for name, curve in curves.items():
        c = curve if isinstance(curve, dict) else curve.to_dict()
        ns = np.asarray(c["ns"], float)
        mean_p = np.maximum(np.asarray(c["mean_p"], float), 1e-300)
        band = np.maximum(np.asarray(c["mean_p_band"], float), 1e-300)
        line = ax.plot(ns, mean_p, marker="o", ms=3, label=f"{name} (mean p)")[0]
        ax.fill_between(ns, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.2)
        ax.plot(ns, np.maximum(np.asarray(c["median_p"], float), 1e-300), ls=":", color=line.get_color(),
                label=f"{name} (median p)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for a in alphas:
        ax.axhline(a, color="grey", ls="--", lw=0.8)
        ax.text(0.01, a, f"α = {a:g}", va="bottom", fontsize=7, color="grey", transform=ax.get_yaxis_transform())
    ax.set_xlabel("number of samples in Q_sus (per side)")
    ax.set_ylabel("p-value")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_score_histograms(
    scores_p, scores_u, path, *, labels=("published (P)", "unpublished (U)"), title: str = "scores"
) -> Path:
    """Overlaid histograms of the P and U membership scores, on shared bins."""
    scores_p = np.asarray(scores_p, float)
    scores_u = np.asarray(scores_u, float)
    if scores_p.size == 0 or scores_u.size == 0:
        raise ValueError("plot_score_histograms: both groups need scores")
    both = np.concatenate([scores_p, scores_u])
    bins = np.histogram_bin_edges(both, bins=min(50, max(10, int(np.sqrt(both.size)))))
    fig, ax = _pyplot().subplots(figsize=(5.0, 3.6))
    ax.hist(scores_p, bins=bins, alpha=0.55, density=True, label=f"{labels[0]}, n={scores_p.size}")
    ax.hist(scores_u, bins=bins, alpha=0.55, density=True, label=f"{labels[1]}, n={scores_u.size}")
    ax.set_xlabel("score (higher = more member-like)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
