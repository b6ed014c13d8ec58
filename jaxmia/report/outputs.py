"""The CDI and MIA output folders: scores as feature tables, plots and each stage's ``report.json``.

``write_cdi_report`` writes a :func:`jaxmia.cdi.run_cdi` result, ``write_mia_report`` a
:func:`jaxmia.mia.evaluate_mia` result; both return the paths they wrote (the audit's
``report.json`` lists them under ``outputs``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxmia.inference import plots
from jaxmia.table import FeatureTable, save_table


def write_cdi_report(result: dict, out_dir) -> dict:
    """Writes ``report.json``, the scores as feature tables and the plots; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for side in ("published", "unpublished"):
        s = result["scores"][side]
        table = FeatureTable(np.asarray(s["ids"], str), ("cdi_score",), np.asarray(s["scores"], float)[:, None],
                             {"kind": "cdi_scores", "side": side, "config": result["config"],
                              "higher_is_member": ["cdi_score"]})
        paths[f"scores_{side}"] = str(save_table(table, out / f"scores_{side}.npz"))
    paths["score_histogram"] = str(
        plots.plot_score_histograms(
            result["scores"]["published"]["scores"], result["scores"]["unpublished"]["scores"],
            out / "score_histogram.png", title=f"CDI scores ({result['verdict']['method']} test)",
        )
    )
    curve = result.get("curve")
    if curve and "ns" in curve:
        paths["pvalue_curve"] = str(
            plots.plot_pvalue_curve({curve["test"]: curve}, out / "pvalue_curve.png", title="p-value vs sample count")
        )
    report = {k: v for k, v in result.items() if k != "scores"}
    report["outputs"] = paths
    (out / "report.json").write_text(json.dumps(report, indent=2))
    paths["report"] = str(out / "report.json")
    return paths




def write_mia_report(result: dict, out_dir) -> dict:
    """Writes ``report.json``, log-log and linear ROC plots and one score histogram per column."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    class _Curve:
        def __init__(self, c):
            self.fpr, self.tpr, self.n_neg = np.asarray(c["fpr"]), np.asarray(c["tpr"]), c["n_neg"]

    rocs = {name: _Curve(c) for name, c in result["roc"].items()}
    paths = {
        "roc_loglog": str(plots.plot_roc_curves(rocs, out / "roc_loglog.png", loglog=True, title="ROC (log-log)")),
        "roc_linear": str(plots.plot_roc_curves(rocs, out / "roc_linear.png", loglog=False, title="ROC")),
    }
    report = {k: v for k, v in result.items() if k != "roc"}
    report["columns"] = {}
    for name, m in result["columns"].items():
        s = m["scores_oriented"]
        paths[f"hist_{name}"] = str(
            plots.plot_score_histograms(s["members"], s["nonmembers"], out / f"hist_{name}.png",
                                        labels=("members", "non-members"), title=name)
        )
        report["columns"][name] = {k: v for k, v in m.items() if k != "scores_oriented"}
    report["outputs"] = paths
    (out / "report.json").write_text(json.dumps(report, indent=2))
    paths["report"] = str(out / "report.json")
    return paths


