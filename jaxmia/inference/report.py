"""Drivers: feature tables in, verdict and evidence out (``run_cdi``, ``evaluate_mia``).

``run_cdi(p_table, u_table, config)`` is the dataset-inference audit of docs/methods/cdi.md §5–§7:

1. select the feature columns (by name or group) and check both tables carry them, finite;
2. pair the rows: sorted by id (``row_order="id"``, the default; ``"table"`` keeps file order, which
   is what the reference's KFold saw); if P and U differ in size, each side is subsampled to the
   smaller size with a seeded generator (``np.random.default_rng([seed, side, 3])``) and the report
   says so;
3. score and test (``config.test``: ``"hybrid"`` (default: the permutation test with a sign-flip tail
   bound for strong evidence, calibrated by construction), ``"permutation"``, ``"split"``,
   ``"cdi_reference"``; see :mod:`jaxmia.inference.stat_tests`), or, with
   ``protocol="fixed_split"``, fit once on given training ids and test the other rows (§5.2);
4. optionally, the sample-count curve (:mod:`jaxmia.inference.curves`).

``evaluate_mia(table, labels, ...)`` computes AUC / TPR@FPR / oracle ASR per score column for a labelled
set (docs/methods/mia.md §2.3). Labels file format (one format, documented in docs/inference.md): a JSON
object mapping each image id to 1 (member) or 0 (non-member), e.g. ``{"img_0001": 1, "img_0002": 0}``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from jaxmia import config as typed
from jaxmia.inference import curves, metrics, plots, scoring, stat_tests
from jaxmia.table import FeatureTable, load_table, save_table

PROTOCOLS = ("crossfit", "fixed_split")
ROW_ORDERS = ("id", "table")


@dataclass(frozen=True)
class CdiConfig:
    """Resolved options of :func:`run_cdi` (saved beside every report).

    Attributes:
      features: columns or groups (:data:`jaxmia.inference.scoring.FEATURE_GROUPS`); None = every column.
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
        if self.test in ("permutation", "hybrid") and self.alternative not in (None, "greater", "one-sided"):
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


# ---- input checks and pairing ---------------------------------------------------------------------


def _select(table: FeatureTable, names: Sequence[str], side: str) -> FeatureTable:
    missing = [n for n in names if n not in table.names]
    if missing:
        raise ValueError(f"{side} feature table lacks column(s) {', '.join(missing)}")
    sub = table.select(names)
    bad = ~np.isfinite(sub.values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"{side} feature table holds {int(bad.sum())} NaN/inf value(s), e.g. column {names[cols[0]]!r} "
            f"of id {str(sub.ids[rows[0]])!r}"
        )
    return sub


def _resolve_columns(p_table: FeatureTable, u_table: FeatureTable, features) -> tuple[str, ...]:
    if features is None and set(p_table.names) != set(u_table.names):
        only_p = sorted(set(p_table.names) - set(u_table.names))
        only_u = sorted(set(u_table.names) - set(p_table.names))
        raise ValueError(
            "published and unpublished feature tables have different columns "
            f"(only in published: {only_p or '-'}; only in unpublished: {only_u or '-'})"
        )
    names = scoring.resolve_features(features, p_table.names)
    scoring.resolve_features(list(names), u_table.names)  # same error text if U lacks any
    return names


def _ordered(table: FeatureTable, row_order: str) -> FeatureTable:
    if row_order == "table":
        return table
    return table.rows(sorted(table.ids.tolist()))


def _pair(p: FeatureTable, u: FeatureTable, seed: int) -> tuple[FeatureTable, FeatureTable, dict]:
    n = min(len(p.ids), len(u.ids))
    info = {"n_published": len(p.ids), "n_unpublished": len(u.ids), "n_pairs": n, "subsampled": False}
    if len(p.ids) == len(u.ids):
        return p, u, info
    sides = []
    for k, t in enumerate((p, u)):
        keep = np.sort(stat_tests.rng_for([seed, k], stat_tests._PAIRING).permutation(len(t.ids))[:n])
        sides.append(t.rows(t.ids[keep].tolist()))
    info.update(
        subsampled=True,
        note=f"P has {len(p.ids)} rows and U {len(u.ids)}: the paired protocol used {n} rows of each, "
        f"drawn with np.random.default_rng([seed, side, 3]) (seed={seed}); the other rows were not used",
    )
    return sides[0], sides[1], info


# ---- the audit ---------------------------------------------------------------------------------------


def run_cdi(p_table: FeatureTable, u_table: FeatureTable, config: CdiConfig | None = None) -> dict:
    """CDI dataset inference: does the model treat P as members? (docs/methods/cdi.md §5–§7)

    Args:
      p_table: features of the published (suspect) set P.
      u_table: features of the unpublished set U (known non-members, same distribution).
      config: a :class:`CdiConfig` (default options if None).

    Returns:
      A JSON-ready dict: ``verdict`` (p-value, how it was obtained, statistic, direction, n per side,
      decision at alpha), ``features``, ``pairing``, ``scores`` (ids and scores of the tested rows),
      ``curve`` (or None), ``config``, ``versions``, ``timings_s``.

    Raises:
      ValueError: naming the problem: mismatched columns, NaN/inf, unknown ids, too few samples.
    """
    config = config or CdiConfig()
    t0 = time.perf_counter()
    names = _resolve_columns(p_table, u_table, config.features)
    p = _ordered(_select(p_table, names, "published"), config.row_order)
    u = _ordered(_select(u_table, names, "unpublished"), config.row_order)
    timings = {}
    if config.protocol == "crossfit":
        p, u, pairing = _pair(p, u, config.seed)
        scored = _crossfit_test(p.values, u.values, config)
        ids_p, ids_u = p.ids[scored.rows_p], u.ids[scored.rows_u]
    else:
        scored, ids_p, ids_u, pairing = _fixed_split_test(p, u, config)
    timings["test"] = time.perf_counter() - t0
    verdict = scored.result.to_dict()
    p_text = stat_tests.format_p(scored.result.p_value, scored.result.log10_p)
    verdict["decision"] = (
        f"p = {p_text} <= alpha = {config.alpha:g}: the model treats P as more member-like "
        "than U (evidence that P was used in training)"
        if scored.result.reject
        else f"p = {p_text} > alpha = {config.alpha:g}: "
        "no significant evidence that P was used in training"
    )
    curve = None
    t1 = time.perf_counter()
    if config.curve:
        curve = _curve(p, u, scored, config)
    timings["curve"] = time.perf_counter() - t1
    return _jsonable(
        {
            "kind": "cdi",
            "verdict": verdict,
            "features": list(names),
            "pairing": pairing,
            "scores": {
                "published": {"ids": ids_p.tolist(), "scores": scored.scores_p.tolist()},
                "unpublished": {"ids": ids_u.tolist(), "scores": scored.scores_u.tolist()},
            },
            "curve": curve,
            "config": config.to_dict(),
            "versions": _versions(),
            "timings_s": timings,
        }
    )


def _crossfit_test(xp, xu, config: CdiConfig) -> stat_tests.ScoredResult:
    common = dict(C=config.C, penalize_intercept=config.penalize_intercept, alpha=config.alpha)
    if config.test in ("permutation", "hybrid") and config.solver == "sklearn":
        raise ValueError(
            f"config solver='sklearn' is not available for the {config.test} test (it refits with the Newton solver)"
        )
    if config.test == "hybrid":
        return stat_tests.hybrid_test(
            xp, xu, permutations=config.permutations, statistic=config.statistic, weight=config.hybrid_weight,
            split_fraction=config.split_fraction, seed=config.seed, n_splits=config.n_splits, **common,
        )
    if config.test == "permutation":
        return stat_tests.permutation_test(
            xp, xu, permutations=config.permutations, statistic=config.statistic, seed=config.seed,
            n_splits=config.n_splits, **common,
        )
    if config.test == "split":
        return stat_tests.split_test(
            xp, xu, train_fraction=config.split_fraction, alternative=_split_alternative(config.alternative),
            seed=config.seed, **common,
        )
    return stat_tests.reference_test(
        xp, xu, alternative=config.alternative or "two-sided", solver=config.solver or "sklearn",
        n_splits=config.n_splits, **common,
    )


def _split_alternative(alternative):
    if alternative in (None, "greater", "one-sided"):
        return "greater"
    if alternative == "two-sided":
        return "two-sided"
    raise ValueError(f"config alternative={alternative!r}; expected one-sided or two-sided")


def _fixed_split_test(p: FeatureTable, u: FeatureTable, config: CdiConfig):
    """docs/methods/cdi.md §5.2: fit on the given training ids, test every other row."""
    sides = []
    for table, train_ids, side in (
        (p, config.train_ids_published, "published"),
        (u, config.train_ids_unpublished, "unpublished"),
    ):
        train_ids = [str(i) for i in train_ids]
        missing = sorted(set(train_ids) - set(table.ids.tolist()))
        if missing:
            raise ValueError(f"{side} training id(s) not in the feature table: {', '.join(map(repr, missing[:5]))}")
        is_train = np.isin(table.ids, train_ids)
        if is_train.all():
            raise ValueError(f"fixed split: every {side} row is a training row; none is left to test")
        sides.append((table.values[is_train], table.values[~is_train], table.ids[~is_train]))
    (tp, ep, ids_p), (tu, eu, ids_u) = sides
    solver = config.solver or ("sklearn" if config.test == "cdi_reference" else "newton")
    sp, su = scoring.fixed_split_scores(
        tp, tu, ep, eu, C=config.C, penalize_intercept=config.penalize_intercept, solver=solver
    )
    if config.test == "hybrid":
        result = stat_tests.scores_hybrid_test(
            sp, su, permutations=config.permutations, statistic=config.statistic, weight=config.hybrid_weight,
            seed=config.seed, alpha=config.alpha,
        )
    elif config.test == "permutation":
        result = stat_tests.scores_permutation_test(
            sp, su, permutations=config.permutations, statistic=config.statistic, seed=config.seed, alpha=config.alpha
        )
    else:
        alternative = (
            _split_alternative(config.alternative)
            if config.test == "split"
            else stat_tests._reference_alternative(config.alternative or "two-sided")
        )
        t, df, pv = stat_tests.welch_test(sp, su, alternative)
        result = stat_tests.InferenceResult(
            p_value=float(pv), method=config.test, statistic=float(t), statistic_name="welch_t",
            alternative=alternative, is_correct_order=bool(t > 0), n_p=sp.size, n_u=su.size, alpha=config.alpha,
            reject=bool(pv <= config.alpha), df=float(df),
            note="fixed split: model fitted on the given training ids; Welch's test on the other rows"
            + ("" if config.test == "split" else " (reference sidedness)"),
        )
    pairing = {
        "protocol": "fixed_split",
        "n_train_published": int(tp.shape[0]),
        "n_train_unpublished": int(tu.shape[0]),
        "n_test_published": int(ep.shape[0]),
        "n_test_unpublished": int(eu.shape[0]),
    }
    scored = stat_tests.ScoredResult(result, sp, su, np.arange(sp.size), np.arange(su.size))
    return scored, ids_p, ids_u, pairing


def _curve(p: FeatureTable, u: FeatureTable, scored, config: CdiConfig) -> dict:
    if config.protocol == "fixed_split":
        # §5.2: resample the held-out scores (no refit needed), Welch per resample.
        result = curves.score_resample_curve(
            scored.scores_p, scored.scores_u, grid=config.curve_grid, reps=config.curve_reps, seed=config.seed,
            alpha=config.alpha,
        )
        return result.to_dict()
    n = p.values.shape[0]
    grid = config.curve_grid if config.curve_grid is not None else curves.default_grid(n, config.curve_test)
    if not grid:
        return {"skipped": f"too few pairs ({n}) for any sample count of the {config.curve_test} test"}
    result = curves.sample_count_curve(
        p.values, u.values, grid=grid, reps=config.curve_reps, seed=config.seed, test=config.curve_test,
        alpha=config.alpha, C=config.C, penalize_intercept=config.penalize_intercept,
    )
    return result.to_dict()


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


def cdi_from_files(published, unpublished, out_dir, config: CdiConfig | None = None) -> dict:
    """Loads two feature tables, runs :func:`run_cdi`, writes the report; returns the result with paths."""
    result = run_cdi(load_table(published), load_table(unpublished), config)
    result["inputs"] = {"published": str(published), "unpublished": str(unpublished)}
    result["outputs"] = write_cdi_report(result, out_dir)
    return result


# ---- labelled MIA evaluation ------------------------------------------------------------------------

def load_labels(path) -> dict[str, int]:
    """Reads a labels file: a JSON object mapping id → 1 (member) or 0 (non-member)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labels file not found: {path}")
    try:
        labels = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON labels file ({err})") from None
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path}: expected a non-empty JSON object mapping id to 0/1")
    bad = [k for k, v in labels.items() if v not in (0, 1) or isinstance(v, float) and v not in (0.0, 1.0)]
    if bad:
        raise ValueError(f"{path}: label of id {bad[0]!r} is {labels[bad[0]]!r}; labels must be 0 or 1")
    return {str(k): int(v) for k, v in labels.items()}


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
    out["versions"] = _versions()
    return _jsonable(out)


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


def mia_from_files(scores, labels, out_dir, **kwargs) -> dict:
    """Loads a score table and a labels file, runs :func:`evaluate_mia`, writes the report."""
    result = evaluate_mia(load_table(scores), load_labels(labels), **kwargs)
    result["inputs"] = {"scores": str(scores), "labels": str(labels)}
    result["outputs"] = write_mia_report(result, out_dir)
    return result


# ---- helpers ------------------------------------------------------------------------------------------


def _versions() -> dict:
    import scipy
    import sklearn

    import jaxmia

    return {
        "jaxmia": jaxmia.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }


def _jsonable(obj):
    """Converts NumPy scalars/arrays (and tuples) to plain JSON types, recursively."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj
