"""The labelled MIA driver: per-image scores and labels in, AUC / TPR@FPR / ROC per column out.

``evaluate_mia(table, labels, ...)`` computes AUC / TPR@FPR / oracle ASR per score column for a
labelled set (docs/methods/mia.md §2.3); the metrics are :mod:`jaxmia.inference.metrics`, the
output files (ROC plots, histograms, ``report.json``) :func:`jaxmia.report.write_mia_report`.
Labels file format (:func:`jaxmia.fileio.load_labels`, documented in docs/inference.md): a JSON
object mapping each image id to 1 (member) or 0 (non-member), e.g. ``{"img_0001": 1, "img_0002": 0}``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxmia.fileio import load_labels
from jaxmia.inference import metrics
from jaxmia.provenance import jsonable, stats_versions
from jaxmia.table import FeatureTable, load_table



def _orientation(name: str, table: FeatureTable, lower: set, higher: set) -> bool:
    if name in lower and name in higher:
        raise ValueError(f"column {name!r} is named both lower- and higher-is-member")
    if name in lower:
        return True
    if name in higher:
        return False
    meta_lower = set(table.meta.get("lower_is_member", []))
    meta_higher = set(table.meta.get("higher_is_member", []))
    if name in meta_lower:
        return True
    if name in meta_higher:
        return False
    # A direction comes from the signal's registration (carried in the table's metadata) or from
    # the user; a column name alone is never trusted to imply one.
    raise ValueError(
        f"orientation of score column {name!r} is unknown: say whether lower or higher means member "
        "(lower_is_member / higher_is_member, CLI --lower-is-member / --higher-is-member)"
    )


def evaluate_mia(
    table: FeatureTable,
    labels: Mapping[str, int],
    *,
    columns: Sequence[str] | None = None,
    lower_is_member: Sequence[str] = (),
    higher_is_member: Sequence[str] = (),
    fpr_targets: Sequence[float] = (0.01, 0.001),
) -> dict:
    """Per-column MIA metrics of labelled per-sample scores (docs/methods/mia.md §2.3).

    Args:
      table: per-sample scores (one column per attack), rows keyed by id.
      labels: id → 1 (member) / 0 (non-member). Every labelled id must be in the table; table rows
        without a label are left out and counted in the result.
      columns: the score columns to evaluate (default: all).
      lower_is_member, higher_is_member: orientation per column; otherwise the table's meta
        (``lower_is_member`` / ``higher_is_member`` lists, written from each signal's registration);
        an unknown orientation is an error.

    Returns:
      ``{"kind": "mia", "n_members", "n_nonmembers", "unlabelled_rows_ignored", "columns": {name:
      metrics.mia_metrics(...)}, "roc": {name: {"fpr", "tpr"}}, "fpr_targets"}``.
    """
    names = list(table.names) if columns is None else list(columns)
    missing_cols = [c for c in names if c not in table.names]
    if missing_cols:
        raise ValueError(f"score table lacks column(s) {', '.join(missing_cols)}; it has {', '.join(table.names)}")
    ids = [i for i in table.ids.tolist() if i in labels]
    missing = sorted(set(labels) - set(table.ids.tolist()))
    if missing:
        raise ValueError(f"labelled id(s) not in the score table: {', '.join(map(repr, missing[:5]))}")
    y = np.array([labels[i] for i in ids])
    sub = table.rows(ids)
    lower, higher = set(lower_is_member), set(higher_is_member)
    unknown = sorted((lower | higher) - set(table.names))
    if unknown:
        raise ValueError(f"orientation given for column(s) not in the table: {', '.join(unknown)}")
    out = {
        "kind": "mia",
        "n_members": int(y.sum()),
        "n_nonmembers": int((1 - y).sum()),
        "unlabelled_rows_ignored": int(len(table.ids) - len(ids)),
        "fpr_targets": list(fpr_targets),
        "columns": {},
        "roc": {},
    }
    for name in names:
        col = sub.column(name)
        if not np.isfinite(col).all():
            raise ValueError(f"score column {name!r} holds NaN or inf")
        low = _orientation(name, table, lower, higher)
        out["columns"][name] = metrics.mia_metrics(col, y, lower_is_member=low, fpr_targets=fpr_targets)
        roc = metrics.roc_curve_exact(col, y, lower_is_member=low)
        out["roc"][name] = {"fpr": roc.fpr.tolist(), "tpr": roc.tpr.tolist(), "n_neg": roc.n_neg}
        out["columns"][name]["scores_oriented"] = {
            "members": metrics.orient(col[y == 1], low).tolist(),
            "nonmembers": metrics.orient(col[y == 0], low).tolist(),
        }
    out["versions"] = stats_versions()
    return jsonable(out)


def mia_from_files(scores, labels, out_dir, **kwargs) -> dict:
    """Loads a score table and a labels file, runs :func:`evaluate_mia`, writes the report."""
    result = evaluate_mia(load_table(scores), load_labels(labels), **kwargs)
    result["inputs"] = {"scores": str(scores), "labels": str(labels)}
    from jaxmia.report.outputs import write_mia_report

    result["outputs"] = write_mia_report(result, out_dir)
    return result

