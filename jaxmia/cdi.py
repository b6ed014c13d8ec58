"""The CDI driver: two feature tables in, verdict and sample-count curve out (``run_cdi``).

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

The statistics live in :mod:`jaxmia.inference`; the output files (scores, plots, ``report.json``)
are written by :func:`jaxmia.report.write_cdi_report`. The options are
:class:`jaxmia.inference.report.CdiConfig`.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from jaxmia.inference import curves, scoring, stat_tests
from jaxmia.inference.report import CdiConfig, config_from_dict  # noqa: F401  (the options; re-exported)
from jaxmia.provenance import jsonable, stats_versions
from jaxmia.table import FeatureTable, load_table

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
    names = scoring.resolve_features(features, p_table.names, scoring.table_groups(p_table))
    missing = [n for n in names if n not in u_table.names]
    if missing:
        raise ValueError(f"unpublished feature table lacks column(s) {', '.join(missing)}")
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



# ---- the test ---------------------------------------------------------------------------------------

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
        if config.test == "fixed_score":  # no model: pre-registered oriented scores (docs/inference.md §12)
            direction = stat_tests.directions_vector(names, p_table.meta.get("lower_is_member", ()),
                                                     p_table.meta.get("higher_is_member", ()))
            scored = stat_tests.fixed_score_test(p.values, u.values, direction, names=names,
                                                 permutations=config.permutations, seed=config.seed,
                                                 alpha=config.alpha)
        else:
            scored = _crossfit_test(p.values, u.values, config)
        ids_p, ids_u = p.ids[scored.rows_p], u.ids[scored.rows_u]
    elif config.test == "fixed_score":
        raise ValueError("config test='fixed_score' fits no model: use protocol='crossfit' (it tests every pair)")
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
    return jsonable(
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
            "versions": stats_versions(),
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


def cdi_from_files(published, unpublished, out_dir, config: CdiConfig | None = None) -> dict:
    """Loads two feature tables, runs :func:`run_cdi`, writes its report folder; returns the result with paths."""
    result = run_cdi(load_table(published), load_table(unpublished), config)
    result["inputs"] = {"published": str(published), "unpublished": str(unpublished)}
    from jaxmia.report.outputs import write_cdi_report

    result["outputs"] = write_cdi_report(result, out_dir)
    return result

