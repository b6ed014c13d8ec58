"""``write_report``: an :class:`~jaxmia.report.sections.AuditReport` to files, once.

Writes, under ``out_dir``: ``cdi/`` (the CDI scores, score histogram, p-value curve and its
``report.json``), ``mia/`` (ROC plots and histograms, when single-image attacks ran),
``report.html`` (:func:`jaxmia.report.html.write_html_report`) and last ``report.json``
(:meth:`AuditReport.to_json` with the paths written).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jaxmia.report.html import write_html_report
from jaxmia.report.outputs import write_cdi_report, write_mia_report
from jaxmia.report.sections import AuditReport


def write_report(report: AuditReport, out_dir) -> dict:
    """Writes ``report.json``, ``report.html`` and the plots of ``report``; returns the JSON object."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"cdi": write_cdi_report(report.cdi.result, out / "cdi"),
               "mia": write_mia_report(report.mia.result, out / "mia") if report.mia.result else {},
               "html": str(out / "report.html")}
    write_html_report(report, outputs, out / "report.html")
    data = report.to_json(outputs)
    (out / "report.json").write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return data


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
