"""Membership-inference metrics from labelled per-sample scores (docs/methods/mia.md §2.3–§2.4).

Conventions (jaxmia's, [D]):

* members are the **positive** class; every metric reads *higher = member*. Attacks whose raw score is
  lower for members (loss, SecMI, PIA, PIAN, ...) pass ``lower_is_member=True`` and are negated first;
* the ROC is **exact**: scores sorted descending, every *distinct* score one vertex (tied scores
  enter together), from (0, 0) to (1, 1);
* AUC is the Mann–Whitney probability that a random member outscores a random non-member, ties ½
  (equal to the trapezoidal area under the exact ROC);
* TPR@x is the largest TPR over vertices with FPR ≤ x. It rests on only ⌊x·n_neg⌋ false positives,
  so results carry n_neg and that count, and are flagged when it is below 10;
* ASR is the best balanced accuracy ``max (1 + TPR − FPR)/2`` over vertices. It picks its threshold
  on the evaluation labels (an *oracle* threshold) and is labelled so.

Parity switches (``tpr_at_fpr(convention=...)``, docs/methods/mia.md §2.4):

* ``"secmi"`` (``jinhaoduan/SecMI``, ``mia_evals/secmia.py::roc``): 2000 thresholds
  ``arange(min, max, (max − min)/2000)`` on the lower-is-member score, member iff score ≤ threshold;
  TPR at the grid FPR **closest** to x (first on ties);
* ``"pia"`` (``kong13661/PIA``, ``DDPM/attack.py``): exact ROC, ``tpr[(fpr < x).sum() − 1]``, the
  vertex with the **largest FPR < x**;
* ``"cdi"`` (CDI ``experiments/mia.py``): scores max-normalised (``s/max`` if higher = member, else
  ``1 − s/max``), sklearn's ``roc_curve`` (with its default ``drop_intermediate=True``),
  ``tpr[(fpr < x).sum()]``, the **first vertex with FPR ≥ x** (which can exceed the budget). Like
  the reference, the max-normalisation reverses the ranking when every score is negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONVENTIONS = ("exact", "secmi", "pia", "cdi")
FEW_FALSE_POSITIVES = 10  # flag TPR@x values resolved by fewer false positives than this


@dataclass(frozen=True)
class RocCurve:
    """An ROC curve: vertices (fpr, tpr) at score thresholds (``score ≥ threshold`` ⇒ "member")."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_pos: int
    n_neg: int
    false_positives: np.ndarray  # count of non-members above each threshold
    true_positives: np.ndarray


def _check(scores, labels, where: str):
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{where}: {scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError(f"{where}: scores hold NaN or inf")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{where}: labels must be 0 (non-member) or 1 (member)")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"{where}: need members and non-members, got {n_pos} and {n_neg}")
    return scores, labels, n_pos, n_neg


def orient(scores, lower_is_member: bool = False) -> np.ndarray:
    """Scores as *higher = member* (negated when the raw score is lower for members)."""
    scores = np.asarray(scores, np.float64)
    return -scores if lower_is_member else scores


def _vertices(scores, labels, drop_intermediate=False):
    """Cumulative (fps, tps, thresholds) at every distinct score, descending (sklearn's recursion)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    thresholds = s[last_of_tie]
    if drop_intermediate and fps.size > 2:
        # sklearn.metrics.roc_curve: drop vertices collinear with both neighbours.
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    return np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, thresholds]


def roc_curve_exact(scores, labels, *, lower_is_member: bool = False, drop_intermediate: bool = False) -> RocCurve:
    """The exact ROC (docs/methods/mia.md §2.3): one vertex per distinct score, ties together.

    Equal to ``sklearn.metrics.roc_curve(labels, oriented, drop_intermediate=...)``.
    """
    scores, labels, n_pos, n_neg = _check(scores, labels, "roc")
    fps, tps, thr = _vertices(orient(scores, lower_is_member), labels, drop_intermediate)
    return RocCurve(fps / n_neg, tps / n_pos, thr, n_pos, n_neg, fps, tps)


def auc(scores, labels, *, lower_is_member: bool = False) -> float:
    """Mann–Whitney AUC: P(member score > non-member score) + ½·P(tie)."""
    scores, labels, n_pos, n_neg = _check(scores, labels, "auc")
    ranks = stats.rankdata(orient(scores, lower_is_member))  # average ranks: ties count ½
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def asr_oracle(scores, labels, *, lower_is_member: bool = False) -> float:
    """Best balanced accuracy ``max (1 + TPR − FPR)/2`` over thresholds chosen on these labels."""
    roc = roc_curve_exact(scores, labels, lower_is_member=lower_is_member)
    return float(((1.0 + roc.tpr - roc.fpr) / 2.0).max())


def secmi_grid_roc(scores, labels, *, lower_is_member: bool = False, n_points: int = 2000):
    """SecMI's thresholded ROC (``mia_evals/secmia.py::roc``): (fpr, tpr, thresholds) on its grid.

    The score is taken lower = member (as SecMI's distances are): ``member ⇔ raw ≤ threshold``, with
    thresholds ``arange(min, max, (max − min)/n_points)`` over both groups' scores.
    """
    scores, labels, n_pos, n_neg = _check(scores, labels, "secmi roc")
    raw = -orient(scores, lower_is_member)  # lower = member
    lo, hi = raw.min(), raw.max()
    if hi == lo:
        raise ValueError("secmi roc: all scores are equal")
    thresholds = np.arange(lo, hi, (hi - lo) / n_points)
    member = np.sort(raw[labels])
    other = np.sort(raw[~labels])
    tpr = np.searchsorted(member, thresholds, side="right") / n_pos
    fpr = np.searchsorted(other, thresholds, side="right") / n_neg
    return fpr, tpr, thresholds


def tpr_at_fpr(
    scores,
    labels,
    fpr: float,
    *,
    convention: str = "exact",
    lower_is_member: bool = False,
    n_points: int = 2000,
) -> float:
    """TPR at a false-positive budget, under jaxmia's or an upstream code's convention.

    Args:
      scores, labels: per-sample scores and 0/1 labels (1 = member).
      fpr: the budget x (e.g. 0.01).
      convention: ``"exact"`` (default: max TPR over exact-ROC vertices with FPR ≤ x), ``"secmi"``,
        ``"pia"`` or ``"cdi"`` (module docstring).
      lower_is_member: the raw score is lower for members.
      n_points: SecMI's grid size.

    References:
      docs/methods/mia.md §2.3 (exact), §2.4 (the upstream formulas).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown TPR@FPR convention {convention!r}; known: {', '.join(CONVENTIONS)}")
    if not 0.0 < fpr <= 1.0:
        raise ValueError(f"FPR budget must be in (0, 1], got {fpr}")
    if convention == "exact":
        roc = roc_curve_exact(scores, labels, lower_is_member=lower_is_member)
        ok = roc.false_positives <= fpr * roc.n_neg * (1 + 1e-12)
        return float(roc.tpr[ok].max())
    if convention == "pia":
        roc = roc_curve_exact(scores, labels, lower_is_member=lower_is_member)
        return float(roc.tpr[(roc.fpr < fpr).sum() - 1])
    if convention == "secmi":
        grid_fpr, grid_tpr, _ = secmi_grid_roc(scores, labels, lower_is_member=lower_is_member, n_points=n_points)
        return float(grid_tpr[np.argmin(np.abs(grid_fpr - fpr))])
    scores, labels, n_pos, n_neg = _check(scores, labels, "tpr_at_fpr")
    top = scores.max()
    if top == 0:
        raise ValueError("cdi convention: the scores' maximum is 0, so they cannot be max-normalised")
    normalised = 1.0 - scores / top if lower_is_member else scores / top
    fps, tps, _ = _vertices(normalised, labels, drop_intermediate=True)
    fpr_v, tpr_v = fps / n_neg, tps / n_pos
    return float(tpr_v[min((fpr_v < fpr).sum(), fpr_v.size - 1)])


def mia_metrics(
    scores,
    labels,
    *,
    lower_is_member: bool = False,
    fpr_targets: Sequence[float] = (0.01, 0.001),
) -> dict:
    """AUC, oracle ASR and TPR@FPR (exact) with the counts that resolve them (docs/methods/mia.md §2.3).

    Returns a JSON-ready dict: ``n_pos``, ``n_neg``, ``auc``, ``asr_oracle`` (and a note that its
    threshold saw the labels), and ``tpr_at_fpr``: for each budget x, ``tpr``, the achieved ``fpr``,
    ``false_positives`` at that vertex, ``false_positives_allowed`` = ⌊x·n_neg⌋ and
    ``few_false_positives`` (fewer than 10 allowed: the value is noisy).
    """
    roc = roc_curve_exact(scores, labels, lower_is_member=lower_is_member)
    out = {
        "n_pos": roc.n_pos,
        "n_neg": roc.n_neg,
        "lower_is_member": bool(lower_is_member),
        "auc": auc(scores, labels, lower_is_member=lower_is_member),
        "asr_oracle": float(((1.0 + roc.tpr - roc.fpr) / 2.0).max()),
        "asr_note": "best balanced accuracy with a threshold chosen on the evaluation labels (oracle)",
        "tpr_at_fpr": {},
    }
    for x in fpr_targets:
        ok = np.flatnonzero(roc.false_positives <= x * roc.n_neg * (1 + 1e-12))
        best = ok[np.argmax(roc.tpr[ok])]
        allowed = int(np.floor(x * roc.n_neg * (1 + 1e-12)))
        out["tpr_at_fpr"][f"{x:g}"] = {
            "tpr": float(roc.tpr[best]),
            "fpr": float(roc.fpr[best]),
            "false_positives": int(roc.false_positives[best]),
            "false_positives_allowed": allowed,
            "n_neg": roc.n_neg,
            "few_false_positives": allowed < FEW_FALSE_POSITIVES,
        }
    return out
