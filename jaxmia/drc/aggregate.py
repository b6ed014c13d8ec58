"""Aggregate per-task DRC scores into one membership score per image (NumPy only).

Two aggregations (docs/methods/mia.md §4.2 "Aggregate across tasks"), both fitted on a NAMED
calibration split of non-members whose ids must be disjoint from the evaluation ids (§2.5):

* **mean z-score**: z_τ = (s_τ − μ_τ)/σ_τ averaged over the R tasks, μ_τ and σ_τ the mean and
  (population) standard deviation of the calibration non-members' scores for task τ;
* **agree number**: A = Σ_τ 1[s_τ > θ_τ], θ_τ the ``agree_quantile`` (default 0.9) of the
  calibration scores of task τ (NumPy's default linear interpolation). "Model Will Tell" (Fu et al.,
  arXiv 2403.08487) votes across restoration tasks; the threshold rule is jaxmia's.

Without a calibration split, :func:`drc_score` is the label-free per-image score ``jaxmia drc``
writes as its ``drc_score`` column: each task's oriented score standardised across the EVALUATED
data, z_τ = (s_τ − mean_i s_τ)/std_i s_τ, averaged over tasks (fitted on nothing labelled; only
the rank order across the evaluated images means anything).

The decision "member when A ≥ k" is reported with precision and recall for every k = 0..R.
Scores s_τ are oriented higher = member (:func:`jaxmia.drc.metrics.orient`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from jaxmia.drc.metrics import ORIENTATION, orient


@dataclass(frozen=True)
class DRCCalibration:
    """What is fitted on the calibration non-members, per task.

    Attributes:
      ids: the calibration ids (kept to refuse any overlap with evaluation ids).
      task_names: the R task names, in column order.
      mu, sigma: (R,) mean and standard deviation of the calibration scores.
      theta: (R,) agree thresholds, the ``agree_quantile`` of the calibration scores.
      agree_quantile: the quantile used for ``theta``.
      name: the calibration split's name (recorded in reports).
    """

    ids: tuple
    task_names: tuple
    mu: np.ndarray
    sigma: np.ndarray
    theta: np.ndarray
    agree_quantile: float
    name: str = "calibration"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "n": len(self.ids),
            "task_names": list(self.task_names),
            "mu": self.mu.tolist(),
            "sigma": self.sigma.tolist(),
            "theta": self.theta.tolist(),
            "agree_quantile": self.agree_quantile,
        }


def check_disjoint(calibration_ids: Sequence[str], evaluation_ids: Sequence[str], *, name: str = "calibration"):
    """Refuses evaluation ids that also appear in the calibration split (docs/methods/mia.md §2.5)."""
    overlap = sorted(set(map(str, calibration_ids)) & set(map(str, evaluation_ids)))
    if overlap:
        shown = ", ".join(map(repr, overlap[:5])) + (" ..." if len(overlap) > 5 else "")
        raise ValueError(f"{name} split and evaluation ids overlap in {len(overlap)} id(s): {shown}; "
                         "thresholds must be fitted on images that are not evaluated")


def _scores_2d(scores, n_tasks: Optional[int] = None, what: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or (n_tasks is not None and scores.shape[1] != n_tasks):
        want = f"(N, {n_tasks})" if n_tasks is not None else "(N, R)"
        raise ValueError(f"{what}: expected a {want} array, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{what}: holds non-finite values")
    return scores


def fit_calibration(scores, ids: Sequence[str], task_names: Sequence[str], *, agree_quantile: float = 0.9,
                    name: str = "calibration") -> DRCCalibration:
    """Fits μ_τ, σ_τ and θ_τ on calibration NON-member scores (N_cal, R), oriented higher = member."""
    scores = _scores_2d(scores, len(task_names), f"{name} scores")
    if len(ids) != scores.shape[0]:
        raise ValueError(f"{name}: {len(ids)} ids for {scores.shape[0]} score rows")
    if len(set(map(str, ids))) != len(ids):
        raise ValueError(f"{name}: duplicate ids")
    if scores.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 non-members, got {scores.shape[0]}")
    if not 0.0 < agree_quantile < 1.0:
        raise ValueError(f"agree_quantile must lie in (0, 1), got {agree_quantile!r}")
    sigma = scores.std(axis=0)
    flat = [task_names[i] for i in np.flatnonzero(sigma == 0)]
    if flat:
        raise ValueError(f"{name}: constant scores for task(s) {', '.join(flat)}; the z-score is undefined")
    return DRCCalibration(
        ids=tuple(map(str, ids)),
        task_names=tuple(task_names),
        mu=scores.mean(axis=0),
        sigma=sigma,
        theta=np.quantile(scores, agree_quantile, axis=0),
        agree_quantile=float(agree_quantile),
        name=name,
    )


def mean_z_score(scores, calibration: DRCCalibration) -> np.ndarray:
    """(N,) mean over tasks of (s_τ − μ_τ)/σ_τ."""
    scores = _scores_2d(scores, len(calibration.task_names))
    return ((scores - calibration.mu) / calibration.sigma).mean(axis=1)


def drc_score(scores, calibration: Optional[DRCCalibration] = None) -> np.ndarray:
    """(N,) one DRC score per image, higher = member, from (N, R) oriented per-task scores.

    Without ``calibration``: the mean over tasks of each task's z-score across the N rows given
    (population std; label-free). With it: :func:`mean_z_score` against the calibration non-members.
    A task whose scores are constant across the rows is an error naming its column index.
    """
    if calibration is not None:
        return mean_z_score(scores, calibration)
    scores = _scores_2d(scores)
    if scores.shape[0] < 2:
        raise ValueError(f"drc_score: needs at least 2 images to standardise, got {scores.shape[0]}")
    sigma = scores.std(axis=0)
    flat = np.flatnonzero(sigma == 0)
    if flat.size:
        raise ValueError(f"drc_score: constant scores for task column(s) {flat.tolist()}; the z-score is undefined")
    return ((scores - scores.mean(axis=0)) / sigma).mean(axis=1)


def agree_number(scores, theta) -> np.ndarray:
    """(N,) int A = Σ_τ 1[s_τ > θ_τ]: how many tasks call the image a member."""
    theta = np.asarray(theta, np.float64)
    scores = _scores_2d(scores, theta.shape[0])
    return np.sum(scores > theta[None, :], axis=1).astype(np.int64)


def agree_rank_score(agree, mean_z) -> np.ndarray:
    """A single score ranking by A first and breaking ties by the mean z: A + ½ + arctan(z)/π."""
    return np.asarray(agree, np.float64) + 0.5 + np.arctan(np.asarray(mean_z, np.float64)) / np.pi


def decision_curve(agree, is_member, n_tasks: int) -> dict:
    """Precision and recall of "member when A ≥ k" for k = 0..R.

    Precision is NaN where nothing is predicted a member (0/0), never a made-up value.
    """
    agree = np.asarray(agree)
    is_member = np.asarray(is_member, bool)
    if agree.shape != is_member.shape:
        raise ValueError(f"agree {agree.shape} and is_member {is_member.shape} differ in shape")
    ks = np.arange(n_tasks + 1)
    predicted = agree[None, :] >= ks[:, None]
    tp = np.sum(predicted & is_member[None, :], axis=1)
    n_pred = predicted.sum(axis=1)
    n_pos = int(is_member.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), np.nan)
        recall = tp / n_pos if n_pos else np.full(len(ks), np.nan)
    return {"k": ks, "precision": precision, "recall": recall, "n_predicted": n_pred, "true_positives": tp}


def task_columns(table, metric: str, task_names: Optional[Sequence[str]] = None) -> list[str]:
    """The table's DRC column names ``drc_{metric}_{task}`` in task order."""
    if metric not in ORIENTATION:
        raise ValueError(f"unknown DRC metric {metric!r}; known: {', '.join(ORIENTATION)}")
    if task_names is None:
        task_names = table.meta.get("drc", {}).get("task_names")
        if not task_names:
            prefix = f"drc_{metric}_"
            task_names = [n[len(prefix):] for n in table.names if n.startswith(prefix)]
    cols = [f"drc_{metric}_{t}" for t in task_names]
    missing = [c for c in cols if c not in table.names]
    if missing or not cols:
        raise ValueError(f"feature table has no DRC column(s) {', '.join(missing) or f'drc_{metric}_*'}")
    return cols


def aggregate_table(table, calibration_ids: Sequence[str], evaluation_ids: Optional[Sequence[str]] = None, *,
                    metric: Optional[str] = None, agree_quantile: Optional[float] = None, is_member=None,
                    calibration_name: str = "calibration") -> dict:
    """Mean z-score and agree number of the evaluation rows of a DRC feature table.

    Args:
      table: a :class:`~jaxmia.table.FeatureTable` with ``drc_{metric}_{task}`` columns.
      calibration_ids: the named calibration split: NON-members used to fit μ, σ and θ.
      evaluation_ids: the rows to score (default: every row not in the calibration split).
        Any overlap with ``calibration_ids`` is an error naming the shared ids.
      metric, agree_quantile: default to the ``score_metric`` and ``agree_quantile`` of the
        :class:`~jaxmia.drc.DRCConfig` recorded in the table's sidecar (``psnr`` and 0.9 when the
        table records none).
      is_member: optional (N_eval,) bool labels of the evaluation rows, for the decision curve.

    Returns:
      dict with ``ids``, ``mean_z``, ``agree``, ``agree_score`` (the A-then-z ranking score),
      ``calibration`` (:class:`DRCCalibration`) and, with labels, ``decision_curve``.
    """
    recorded = table.meta.get("drc", {}).get("config", {})
    metric = metric or recorded.get("score_metric", "psnr")
    agree_quantile = agree_quantile if agree_quantile is not None else recorded.get("agree_quantile", 0.9)
    calibration_ids = [str(i) for i in calibration_ids]
    if evaluation_ids is None:
        cal = set(calibration_ids)
        evaluation_ids = [i for i in table.ids.tolist() if i not in cal]
    evaluation_ids = [str(i) for i in evaluation_ids]
    check_disjoint(calibration_ids, evaluation_ids, name=calibration_name)
    cols = task_columns(table, metric)
    task_names = [c[len(f"drc_{metric}_"):] for c in cols]
    cal_scores = orient(table.rows(calibration_ids).select(cols).values, metric)
    eval_scores = orient(table.rows(evaluation_ids).select(cols).values, metric)
    calibration = fit_calibration(cal_scores, calibration_ids, task_names, agree_quantile=agree_quantile,
                                  name=calibration_name)
    mean_z = mean_z_score(eval_scores, calibration)
    agree = agree_number(eval_scores, calibration.theta)
    out = {
        "ids": evaluation_ids,
        "metric": metric,
        "scores": eval_scores,
        "mean_z": mean_z,
        "agree": agree,
        "agree_score": agree_rank_score(agree, mean_z),
        "calibration": calibration,
    }
    if is_member is not None:
        out["decision_curve"] = decision_curve(agree, is_member, len(task_names))
    return out
