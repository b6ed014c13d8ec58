"""The CDI options (:class:`CdiConfig`), and the old home of the CDI/MIA drivers.

Deprecated names (kept importable): the drivers moved out of ``inference`` (which keeps the
statistics only). ``run_cdi`` and ``cdi_from_files`` are now :mod:`jaxmia.cdi`; ``evaluate_mia``
and ``mia_from_files`` :mod:`jaxmia.mia`; ``write_cdi_report`` and ``write_mia_report``
:mod:`jaxmia.report.outputs`; ``load_labels`` :mod:`jaxmia.fileio`. Import them from there.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Mapping

from jaxmia import config as typed
from jaxmia.inference import curves, stat_tests
from jaxmia.provenance import jsonable as _jsonable

PROTOCOLS = ("crossfit", "fixed_split")
ROW_ORDERS = ("id", "table")


@dataclass(frozen=True)
class CdiConfig:
    """Resolved options of :func:`run_cdi` (saved beside every report).

    Attributes:
      features: columns or groups (the tables' groups, :func:`jaxmia.inference.scoring.table_groups`);
        None = every column.
      test: ``"hybrid"`` (default) | ``"permutation"`` | ``"split"`` | ``"cdi_reference"``.
      alpha: decision level (reject when p ≤ alpha).
      permutations: B of the permutation test (also the permutation part of the hybrid).
      hybrid_weight: the share w of alpha given to the hybrid's permutation part: p = min(1, p_perm/w,
        p_tail/(1 − w)) (stat_tests.py).
      statistic: ``"mean_diff"`` | ``"welch_t"`` (permutation test).
      alternative: None (the test's default: one-sided for permutation and split, two-sided for
        cdi_reference), ``"two-sided"``, or ``"one-sided"`` (cdi_reference) / ``"greater"`` (split).
      seed: seeds every random choice (swaps, splits, pairing, curve resamples).
      protocol: ``"crossfit"`` (5-fold, default) or ``"fixed_split"`` (train ids below).
      train_ids_published, train_ids_unpublished: training rows of the fixed split.
      split_fraction: share of pairs that train the model in the split test.
      n_splits, C, penalize_intercept: the scoring model (docs/methods/cdi.md §5.1).
      solver: ``"newton"`` | ``"sklearn"``; None = sklearn for cdi_reference (exact reference parity),
        newton otherwise (the permutation test requires it).
      row_order: ``"id"`` or ``"table"``.
      curve, curve_test, curve_reps, curve_grid: the sample-count curve (curves.py).
    """

    features: str | tuple[str, ...] | None = None
    test: str = stat_tests.DEFAULT_TEST
    alpha: float = 0.01
    permutations: int = 1000
    hybrid_weight: float = stat_tests.HYBRID_WEIGHT
    statistic: str = "mean_diff"
    alternative: str | None = None
    seed: int = 0
    protocol: str = "crossfit"
    train_ids_published: tuple[str, ...] | None = None
    train_ids_unpublished: tuple[str, ...] | None = None
    split_fraction: float = 0.5
    n_splits: int = 5
    C: float = 1.0
    penalize_intercept: bool = True
    solver: str | None = None
    row_order: str = "id"
    curve: bool = True
    curve_test: str = "split"
    curve_reps: int = 1000
    curve_grid: tuple[int, ...] | None = None

    def __post_init__(self):
        typed.coerce_fields(self)  # the one parser (jaxmia.config): types, lists -> tuples

        def one_of(name, value, allowed):
            if value not in allowed:
                raise ValueError(f"config {name}={value!r}; expected one of {', '.join(map(str, allowed))}")

        one_of("test", self.test, stat_tests.TESTS)
        one_of("statistic", self.statistic, stat_tests.STATISTICS)
        one_of("protocol", self.protocol, PROTOCOLS)
        one_of("row_order", self.row_order, ROW_ORDERS)
        one_of("curve_test", self.curve_test, curves.CURVE_TESTS)
        if self.solver is not None:
            one_of("solver", self.solver, ("newton", "sklearn"))
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"config alpha={self.alpha}; expected a level in (0, 1)")
        if self.permutations < 1:
            raise ValueError(f"config permutations={self.permutations}; expected >= 1")
        if self.curve_reps < 1:
            raise ValueError(f"config curve_reps={self.curve_reps}; expected >= 1")
        if self.protocol == "fixed_split" and (self.train_ids_published is None or self.train_ids_unpublished is None):
            raise ValueError("config protocol='fixed_split' needs train_ids_published and train_ids_unpublished")
        if self.protocol == "crossfit" and (self.train_ids_published or self.train_ids_unpublished):
            raise ValueError("config train_ids_* are only used with protocol='fixed_split'")
        if self.test in ("permutation", "hybrid", "fixed_score") and self.alternative not in (None, "greater", "one-sided"):
            raise ValueError(
                f"config alternative={self.alternative!r}: the {self.test} test is one-sided (member direction)"
            )
        if not 0.0 < self.hybrid_weight < 1.0:
            raise ValueError(f"config hybrid_weight={self.hybrid_weight}; expected a share in (0, 1)")

    def to_dict(self) -> dict:
        return _jsonable(dataclasses.asdict(self))


def config_from_dict(values: Mapping, *, source: str = "CDI config") -> CdiConfig:
    """A :class:`CdiConfig` from a mapping (:func:`jaxmia.config.from_mapping`); an unknown key is an
    error naming it and its close matches (locked config, docs/methods/design.md §6)."""
    return typed.from_mapping(CdiConfig, values, source=source, what="CDI config")


@dataclass(frozen=True)
class MiaConfig:
    """Options of :func:`evaluate_mia` (``jaxmia mia --set mia.FIELD=VALUE``; written beside its report).

    Attributes:
      columns: the score columns to evaluate; None = every column.
      lower_is_member, higher_is_member: orientation of columns whose table meta does not give one.
      fpr_targets: the false-positive rates of the TPR@FPR read-outs.
    """

    columns: tuple[str, ...] | None = None
    lower_is_member: tuple[str, ...] = ()
    higher_is_member: tuple[str, ...] = ()
    fpr_targets: tuple[float, ...] = (0.01, 0.001)

    def __post_init__(self):
        typed.coerce_fields(self)
        if not self.fpr_targets or not all(0.0 < f < 1.0 for f in self.fpr_targets):
            raise ValueError(f"config fpr_targets={list(self.fpr_targets)}; expected rates in (0, 1)")



# Deprecated re-exports: name -> module that owns it now (resolved on first use, so importing this
# module never imports the drivers, which import CdiConfig from here).
_MOVED = {
    "run_cdi": "jaxmia.cdi",
    "cdi_from_files": "jaxmia.cdi",
    "evaluate_mia": "jaxmia.mia",
    "mia_from_files": "jaxmia.mia",
    "write_cdi_report": "jaxmia.report.outputs",
    "write_mia_report": "jaxmia.report.outputs",
    "load_labels": "jaxmia.fileio",
}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
