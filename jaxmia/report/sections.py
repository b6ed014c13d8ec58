"""The audit report as typed sections, built once from the stages' return values.

:func:`jaxmia.audit.run_audit` fills one :class:`AuditReport` from what each stage returned (the
loaded sets, :func:`jaxmia.cdi.run_cdi`, the shift checks, the null calibration,
:func:`jaxmia.mia.evaluate_mia`, :func:`jaxmia.drc.run_drc`, the conclusion) and hands it to
:func:`jaxmia.report.write_report`, which writes ``report.json``, ``report.html`` and the plots.
``AuditReport.to_json(outputs)`` is the ``report.json`` object (its keys and values are the
contract of that file); the HTML reads the same sections, plus the DRC images' per-image scores,
which live in ``drc/<side>/drc_scores.npz`` rather than in ``report.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from jaxmia.table import FeatureTable

SIDES = ("published", "unpublished")


@dataclass(frozen=True)
class DataSide:
    """One image set as audited: where it came from and how many images were used."""

    source: str
    n: int


@dataclass(frozen=True)
class ModelInfo:
    source: str  # the model path given, or "in-memory Denoiser"
    digest: str
    sample_shape: tuple


@dataclass(frozen=True)
class RunInfo:
    """Run, model and data: what was audited, with which config and seed."""

    model: ModelInfo
    published: DataSide
    unpublished: DataSide
    config: dict  # the resolved AuditConfig (also config.json)
    seed: int
    duplicates: dict  # jaxmia.data.duplicates.check_published_unpublished's record
    captions: Optional[dict] = None  # {side: caption info} for a text-conditional model


@dataclass(frozen=True)
class FeatureSection:
    """The feature columns the scoring model used and how P's and U's rows were paired."""

    names: tuple
    pairing: dict


@dataclass(frozen=True)
class CdiSection:
    """The verdict's test: :func:`jaxmia.cdi.run_cdi`'s result (scores included, for the plots)."""

    result: dict
    null_calibration: Optional[dict] = None  # innocent splits of U (curves.null_calibration)

    @property
    def verdict(self) -> dict:
        return self.result["verdict"]

    @property
    def curve(self) -> Optional[dict]:
        return self.result.get("curve")

    @property
    def samples_needed(self):
        return (self.curve or {}).get("samples_needed")


@dataclass(frozen=True)
class MiaSection:
    """Single-image attacks as context: :func:`jaxmia.mia.evaluate_mia`'s result (or empty)."""

    result: dict = field(default_factory=dict)

    def context(self) -> dict:
        """Per-attack metrics without the per-image scores (``report.json``'s ``mia_context``)."""
        return {k: {m: v for m, v in col.items() if m != "scores_oriented"}
                for k, col in (self.result.get("columns") or {}).items()}


@dataclass(frozen=True)
class DrcImage:
    """One evidence image: its id, DRC score (mean over tasks of the score metric) and grid PNG."""

    id: str
    score: float
    task_scores: dict  # column name -> raw value
    rank: str  # "member-like" or "non-member-like" within its side's run
    path: str  # the evidence grid (rows: tasks; columns: original | masked | restored | error)


@dataclass(frozen=True)
class DrcSide:
    images: tuple  # DrcImage, most member-like first, then the most non-member-like
    summary: Optional[str]
    mean: Optional[float]  # mean score-metric value over this side's DRC images and tasks

    @property
    def most_member_like(self) -> Optional[DrcImage]:
        return next((i for i in self.images if i.rank == "member-like"), None)

    @property
    def most_nonmember_like(self) -> Optional[DrcImage]:
        return next((i for i in self.images if i.rank == "non-member-like"), None)


@dataclass(frozen=True)
class DrcEvidence:
    """Degrade-restore-compare evidence of a few images of each side (:func:`jaxmia.drc.run_drc`)."""

    metric: str
    published: DrcSide
    unpublished: DrcSide
    embedder: Optional[dict] = None
    restoration: Optional[str] = None  # which restoration ran (jaxmia.drc.config.RESTORE_ABOUT), one line

    @property
    def higher_is_member(self) -> bool:
        from jaxmia.drc.metrics import ORIENTATION  # imported here: jaxmia.report stays JAX-free to import

        return ORIENTATION[self.metric] > 0

    def side(self, name: str) -> DrcSide:
        return {"published": self.published, "unpublished": self.unpublished}[name]

    def to_json(self) -> dict:
        out = {side: {"evidence": [i.path for i in self.side(side).images], "summary": self.side(side).summary,
                      "mean_" + self.metric: self.side(side).mean} for side in SIDES}
        out["metric"] = self.metric
        if self.embedder is not None:
            out["embedder"] = self.embedder
        if self.restoration is not None:
            out["restoration"] = self.restoration
        return out


def drc_side(result: dict, metric: str) -> DrcSide:
    """A :class:`DrcSide` from :func:`jaxmia.drc.run_drc`'s return value (its ``scores`` table)."""
    table: FeatureTable = result["scores"]
    cols = [c for c in table.names if c.startswith(f"drc_{metric}_")]
    values = table.select(cols).values if cols else np.zeros((len(table.ids), 0))
    row = {i: k for k, i in enumerate(table.ids.tolist())}
    chosen = [(i, "member-like") for i in result["member_like"]] + \
             [(i, "non-member-like") for i in result["nonmember_like"]]
    if len(chosen) != len(result["evidence"]):
        raise ValueError(f"run_drc returned {len(result['evidence'])} evidence images for {len(chosen)} chosen ids")
    images = tuple(
        DrcImage(id=i, score=float(values[row[i]].mean()) if cols else float("nan"),
                 task_scores={c: float(v) for c, v in zip(cols, values[row[i]])}, rank=rank, path=path)
        for (i, rank), path in zip(chosen, result["evidence"]))
    return DrcSide(images=images, summary=result.get("summary"), mean=float(values.mean()) if cols else None)


@dataclass(frozen=True)
class Conclusion:
    """Trained / no evidence / inconclusive, with the reasons in plain words."""

    status: str  # "trained" | "no_evidence" | "inconclusive"
    headline: str
    summary: str
    reasons: list
    caveats: list
    p_value: float
    p_text: str
    model_test_rejects: bool
    shift_checks_passed: Optional[bool]


@dataclass(frozen=True)
class Timings:
    stages_s: dict  # stage -> seconds (rounded to 0.01 s in report.json)
    compile: dict  # jaxmia.compile_cache.since(...): seconds of those timings spent compiling


@dataclass(frozen=True)
class AuditReport:
    """Everything an audit found, by section; ``to_json`` is ``report.json``."""

    run: RunInfo
    features: FeatureSection
    cdi: CdiSection
    mia: MiaSection
    shift: Optional[dict]  # jaxmia.audit.run._shift_checks: blind test, files, sensitivity (None: off)
    drc: Optional[DrcEvidence]
    conclusion: Conclusion
    timings: Timings
    versions: dict

    def to_json(self, outputs: dict) -> dict:
        """The ``report.json`` object; ``outputs``: the paths :func:`jaxmia.report.write_report` wrote."""
        run = self.run
        return {
            "kind": "audit",
            "conclusion": asdict(self.conclusion),
            "verdict": self.cdi.verdict,
            "summary": self.conclusion.summary,
            "shift": self.shift,
            "samples_needed": self.cdi.samples_needed,
            "curve": self.cdi.curve,
            "null_calibration": self.cdi.null_calibration,
            "features": list(self.features.names),
            "pairing": self.features.pairing,
            "mia_context": self.mia.context(),
            "drc": None if self.drc is None else self.drc.to_json(),
            "captions": run.captions,
            "data_checks": {"duplicates": run.duplicates},
            "published": asdict(run.published),
            "unpublished": asdict(run.unpublished),
            "model": {"source": run.model.source, "digest": run.model.digest,
                      "sample_shape": list(run.model.sample_shape)},
            "config": run.config,
            "seed": run.seed,
            "versions": self.versions,
            "timings_s": {k: round(v, 2) for k, v in self.timings.stages_s.items()},
            "compile": self.timings.compile,
            "outputs": outputs,
        }
