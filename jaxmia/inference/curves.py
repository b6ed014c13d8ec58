"""Resampling experiments: sample-count curve, null calibration, contamination (docs/methods/cdi.md §7, §8).

Every repetition draws its rows from its own generator, so any cell can be recomputed alone:

* sample-count curve, cell (n, rep): ``np.random.default_rng([seed, n, rep]).permutation(N)``, and the
  first n positions are taken from P *and* from U (the reference's "same first n positions", §7);
* null calibration, trial t: ``np.random.default_rng([seed, t])`` splits the non-member pool;
* contamination, cell (r, n, rep): ``np.random.default_rng([seed, n, rep, round(1000·r)])``.

Which test the curves run (``test=``):

* ``"split"`` (default for the curves): half of the drawn pairs train the scoring model, Welch on the
  other half. One logistic fit per repetition, vectorised over all repetitions of an n, and
  calibrated, so "samples needed" is not flattered by a miscalibrated test. It tests on n/2 pairs, so
  it needs more samples than the default audit test (the permutation test on all n): the curve is a
  conservative estimate for that test.
* ``"cdi_reference"``: cross-fitted scores + two-sided Welch, the protocol of the paper's Figure 2;
  use it to reproduce the paper's curves. Its p-values are anti-conservative (stat_tests.py).
* ``"permutation"``: the default audit test per cell (B refits per cell; slow for large grids).

References:
  docs/methods/cdi.md §7 (``experiments/cdi_perf.py``, Figure 2; "samples needed" from
  ``experiments/ablation_heatmaps.py``), §8 (``experiments/contamination_ablation.py``, Figures 4
  and 7, ``get_fp_table``), §11 item 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

from jaxmia.inference import stat_tests

CURVE_TESTS = ("split", "cdi_reference", "permutation", "hybrid")

# docs/methods/cdi.md §7: 5–10 step 1; 20–100 step 10; 200–1000 step 100; 2000–10000 step 1000; 20000.
DEFAULT_GRID = (
    tuple(range(5, 11))
    + tuple(range(20, 101, 10))
    + tuple(range(200, 1001, 100))
    + tuple(range(2000, 10001, 1000))
    + (20000,)
)
CONTAMINATION_RATIOS = (0.0, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0)
CONTAMINATION_NS = (30, 50, 100, 300, 500, 1000, 3000, 5000, 10000)


def _min_n(test: str, n_splits: int = 5) -> int:
    return {"split": 4, "cdi_reference": n_splits, "permutation": n_splits, "hybrid": max(n_splits, 4)}[test]


def default_grid(n_available: int, test: str = "split") -> tuple[int, ...]:
    """The §7 grid truncated to the available pairs (and to the smallest n the test can run)."""
    return tuple(n for n in DEFAULT_GRID if _min_n(test) <= n <= n_available)


def _check_test(test: str):
    if test not in CURVE_TESTS:
        raise ValueError(f"unknown curve test {test!r}; known: {', '.join(CURVE_TESTS)}")


def batched_pvalues(
    xp: np.ndarray,
    xu: np.ndarray,
    test: str,
    seeds: Sequence,
    *,
    permutations: int = 99,
    alternative: str | None = None,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-8,
) -> np.ndarray:
    """p-values of T paired problems (T, n, d) under ``test``; rows are used in the order given.

    ``"split"`` trains on rows [0, n//2) and tests the rest (the caller's row order is random);
    ``"permutation"`` and ``"hybrid"`` use ``seeds`` for their swap patterns (and the hybrid's held-out
    half); ``"cdi_reference"`` draws nothing.
    ``tol`` is the Newton tolerance of every fit (1e-8: as the audit tests run).
    """
    _check_test(test)
    n = xp.shape[1]
    common = dict(C=C, penalize_intercept=penalize_intercept, tol=tol)
    if test == "split":
        return stat_tests.split_pvalues(xp, xu, n // 2, alternative=alternative or "greater", **common)[0]
    if test == "cdi_reference":
        return stat_tests.reference_pvalues(xp, xu, alternative=alternative or "two-sided", **common)[0]
    if test == "hybrid":
        return stat_tests.hybrid_pvalues(xp, xu, seeds, permutations=permutations, **common)[0]
    return stat_tests.permutation_pvalues(xp, xu, seeds, permutations=permutations, **common)[0]


# ---- sample-count curve ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveResult:
    """p-value against sample count (n per side).

    Attributes:
      ns: the grid of n.
      pvalues: (len(ns), reps) p of every repetition.
      mean_p, median_p: per n.
      mean_p_band: (len(ns), 2) bootstrap 95% interval of the mean p (resampling repetitions).
      power: per n, the fraction of repetitions with p ≤ alpha (rejections at level alpha).
      samples_needed: smallest n whose mean p ≤ alpha (None if none reaches it).
      samples_needed_band: 2.5/97.5 bootstrap percentiles of samples_needed (None where not reached).
      test, alpha, reps, seed: how it was made; note: why that test.
    """

    ns: tuple
    pvalues: np.ndarray
    mean_p: np.ndarray
    median_p: np.ndarray
    mean_p_band: np.ndarray
    power: np.ndarray
    samples_needed: int | None
    samples_needed_band: tuple
    test: str
    alpha: float
    reps: int
    seed: int
    note: str = ""

    def to_dict(self, include_pvalues: bool = False) -> dict:
        out = asdict(self)
        for key in ("mean_p", "median_p", "mean_p_band", "power"):
            out[key] = np.asarray(out[key]).tolist()
        out["ns"] = list(self.ns)
        out["samples_needed_band"] = list(self.samples_needed_band)
        if include_pvalues:
            out["pvalues"] = self.pvalues.tolist()
        else:
            del out["pvalues"]
        return out


def _curve_rows(n_available: int, n: int, rep: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, n, rep]).permutation(n_available)[:n]


def curve_cell(xp, xu, n: int, rep: int, *, seed: int = 0, test: str = "split", tol: float = 1e-6, **kwargs) -> float:
    """The p-value of one cell (n, rep) of :func:`sample_count_curve`, recomputed alone."""
    xp, xu = _pool_pair(xp, xu)
    rows = _curve_rows(xp.shape[0], n, rep, seed)
    return float(batched_pvalues(xp[rows][None], xu[rows][None], test, [(seed, n, rep)], tol=tol, **kwargs)[0])


def _samples_needed(ns, mean_p, alpha):
    hit = np.flatnonzero(np.asarray(mean_p) <= alpha)
    return int(ns[hit[0]]) if hit.size else None


def sample_count_curve(
    xp,
    xu,
    *,
    grid: Sequence[int] | None = None,
    reps: int = 1000,
    seed: int = 0,
    test: str = "split",
    alpha: float = 0.01,
    n_boot: int = 1000,
    permutations: int = 99,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-6,
    chunk_rows: int = 200_000,
) -> CurveResult:
    """p against n per side, ``reps`` random resamples per n (docs/methods/cdi.md §7).

    Args:
      xp, xu: (N, d) features of the published and unpublished sets, paired by row (as in
        :func:`jaxmia.cdi.run_cdi`: sorted by id, truncated to the same N).
      grid: the n values (default: :func:`default_grid` of N).
      reps: repetitions per n.
      test: ``"split"`` (default), ``"cdi_reference"`` or ``"permutation"`` (module docstring).
      alpha: level for ``power`` and ``samples_needed``.
      n_boot: bootstrap draws for the bands.
      tol: Newton tolerance of the fits. Looser than the audit's 1e-8 for speed: on 26-d data it moves
        split-test p-values by < 2e-6 (measured), far below resampling noise.
      chunk_rows: bound on reps × n per batch (memory).

    Returns:
      A :class:`CurveResult`.
    """
    _check_test(test)
    xp, xu = _pool_pair(xp, xu)
    N = xp.shape[0]
    ns = tuple(int(n) for n in (default_grid(N, test) if grid is None else grid))
    if not ns:
        raise ValueError(f"no sample count to test: {N} pairs available, the {test} test needs at least {_min_n(test)}")
    bad = [n for n in ns if n > N or n < _min_n(test)]
    if bad:
        raise ValueError(f"sample counts {bad} outside [{_min_n(test)}, {N}] (available pairs) for the {test} test")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    pvalues = np.empty((len(ns), reps))
    for i, n in enumerate(ns):
        step = max(1, chunk_rows // max(n, 1))
        for lo in range(0, reps, step):
            rep_ids = range(lo, min(reps, lo + step))
            rows = np.stack([_curve_rows(N, n, r, seed) for r in rep_ids])  # (reps, n)
            pvalues[i, lo : lo + len(rep_ids)] = batched_pvalues(
                xp[rows], xu[rows], test, [(seed, n, r) for r in rep_ids], permutations=permutations,
                C=C, penalize_intercept=penalize_intercept, tol=tol,
            )
    notes = {
        "split": "sample-splitting test per resample (fit on half the pairs, Welch on the other half): "
        "calibrated and one fit per resample; conservative for the permutation audit test, which tests all n",
        "cdi_reference": "reference protocol per resample (cross-fit + two-sided Welch, Figure 2 of the paper); "
        "NOT calibrated: " + stat_tests.REFERENCE_FPR_NOTE,
        "permutation": f"whole-pipeline permutation test per resample, B={permutations}",
        "hybrid": f"hybrid test per resample (permutation B={permutations} with the sign-flip tail bound)",
    }
    return _summarise_curve(ns, pvalues, test, alpha, seed, n_boot, notes[test])


def _summarise_curve(ns, pvalues, test, alpha, seed, n_boot, note) -> CurveResult:
    """Mean/median p, power, bootstrap bands (resampling repetitions) and samples needed."""
    reps = pvalues.shape[1]
    mean_p = pvalues.mean(1)
    boot_rng = np.random.default_rng([seed, 0xB007])
    boot_idx = boot_rng.integers(0, reps, size=(n_boot, reps))
    boot_means = np.stack([row[boot_idx].mean(1) for row in pvalues], axis=1)  # (n_boot, len(ns))
    band = np.percentile(boot_means, [2.5, 97.5], axis=0).T
    needed = [_samples_needed(ns, bm, alpha) for bm in boot_means]
    reached = np.array([v for v in needed if v is not None], float)
    if reached.size == n_boot:
        needed_band = (int(np.percentile(reached, 2.5)), int(np.percentile(reached, 97.5)))
    else:
        # Some bootstrap draws never reach alpha: the upper end lies beyond the grid.
        needed_band = (int(np.percentile(reached, 2.5)) if reached.size else None, None)
    return CurveResult(
        ns=tuple(ns), pvalues=pvalues, mean_p=mean_p, median_p=np.median(pvalues, 1), mean_p_band=band,
        power=(pvalues <= alpha).mean(1), samples_needed=_samples_needed(ns, mean_p, alpha),
        samples_needed_band=needed_band, test=test, alpha=alpha, reps=reps, seed=seed, note=note,
    )


def score_resample_curve(
    sp,
    su,
    *,
    grid: Sequence[int] | None = None,
    reps: int = 1000,
    seed: int = 0,
    alpha: float = 0.01,
    alternative: str = "greater",
    n_boot: int = 1000,
) -> CurveResult:
    """p against n by resampling held-out scores of a fixed-split model (docs/methods/cdi.md §5.2).

    The scores come from a model that never saw these rows, so no refit is needed: resample (n, rep)
    draws ``rng = np.random.default_rng([seed, n, rep])``, takes ``rng.permutation(N_P)[:n]`` of P and
    then ``rng.permutation(N_U)[:n]`` of U, and runs Welch's test.
    """
    sp = np.asarray(sp, np.float64)
    su = np.asarray(su, np.float64)
    n_max = min(sp.size, su.size)
    ns = tuple(int(n) for n in (default_grid(n_max, "split") if grid is None else grid))
    if not ns:
        raise ValueError(f"no sample count to test: {n_max} held-out scores per side")
    bad = [n for n in ns if n > n_max or n < 2]
    if bad:
        raise ValueError(f"sample counts {bad} outside [2, {n_max}] (held-out scores per side)")
    pvalues = np.empty((len(ns), reps))
    for i, n in enumerate(ns):
        idx_p, idx_u = [], []
        for rep in range(reps):
            rng = np.random.default_rng([seed, n, rep])
            idx_p.append(rng.permutation(sp.size)[:n])
            idx_u.append(rng.permutation(su.size)[:n])
        pvalues[i] = stat_tests.welch_test(sp[np.stack(idx_p)], su[np.stack(idx_u)], alternative)[2]
    note = "fixed split: held-out scores resampled, Welch per resample (no refit: the model never saw them)"
    return _summarise_curve(ns, pvalues, "fixed_split_welch", alpha, seed, n_boot, note)


# ---- null calibration --------------------------------------------------------------------------------


def summarise_null(pvalues, alpha: float = 0.01) -> dict:
    """Empirical FPR at ``alpha``, its 99% acceptance interval under a calibrated test, KS vs uniform.

    Returns a dict: ``trials``, ``fpr``, ``fpr_interval_99`` (the central 99% range of
    Binomial(trials, alpha)/trials: a calibrated test falls outside it 1% of the time), ``calibrated``
    (fpr inside that range), ``ks_statistic``, ``ks_pvalue``, ``mean_p`` (≈ 0.5 when calibrated).
    """
    p = np.asarray(pvalues, np.float64).ravel()
    trials = p.size
    k = int((p <= alpha).sum())
    lo, hi = stats.binom.ppf([0.005, 0.995], trials, alpha) / trials
    ks = stats.kstest(p, "uniform")
    return {
        "trials": trials,
        "alpha": alpha,
        "fpr": k / trials,
        "fpr_interval_99": [float(lo), float(hi)],
        "calibrated": bool(lo <= k / trials <= hi),
        "ks_statistic": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "mean_p": float(p.mean()),
    }


def null_calibration(
    pool,
    *,
    n: int,
    trials: int = 500,
    test: str = "permutation",
    permutations: int = 99,
    seed: int = 0,
    alpha: float = 0.01,
    alternative: str | None = None,
    C: float = 1.0,
    penalize_intercept: bool = True,
    chunk_trials: int = 50,
) -> dict:
    """Empirical calibration: split a known non-member pool into pseudo-P / pseudo-U many times.

    Trial t permutes the pool with ``np.random.default_rng([seed, t])`` and takes rows [0, n) as pseudo-P
    and [n, 2n) as pseudo-U; both are non-members, so every rejection is a false positive.
    (docs/methods/cdi.md §8 [D], §11 item 2.)

    Returns:
      :func:`summarise_null` of the p-values, plus ``test``, ``n``, ``permutations`` and ``pvalues``.
    """
    _check_test(test)
    pool = np.asarray(pool, np.float64)
    if pool.ndim != 2:
        raise ValueError(f"null calibration: expected an (N, d) pool, got shape {pool.shape}")
    if not np.isfinite(pool).all():
        raise ValueError("null calibration: the pool holds NaN or inf")
    if 2 * n > pool.shape[0]:
        raise ValueError(f"null calibration: a pool of {pool.shape[0]} rows cannot give two disjoint sets of {n}")
    pvalues = np.empty(trials)
    for lo in range(0, trials, chunk_trials):
        ids = range(lo, min(trials, lo + chunk_trials))
        orders = np.stack([np.random.default_rng([seed, t]).permutation(pool.shape[0])[: 2 * n] for t in ids])
        pvalues[lo : lo + len(ids)] = batched_pvalues(
            pool[orders[:, :n]], pool[orders[:, n:]], test, [(seed, t) for t in ids],
            permutations=permutations, alternative=alternative, C=C, penalize_intercept=penalize_intercept,
        )
    out = summarise_null(pvalues, alpha)
    out.update(test=test, n=n, permutations=permutations if test == "permutation" else None, pvalues=pvalues.tolist())
    return out


# ---- contamination -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContaminationCell:
    ratio: float
    n: int
    mean_p: float
    median_p: float
    power: float
    null: dict | None = field(default=None)  # summarise_null for ratio 1 (all non-members)


def contamination_curve(
    members,
    nonmembers,
    *,
    ratios: Sequence[float] = CONTAMINATION_RATIOS,
    ns: Sequence[int] | None = None,
    reps: int = 1000,
    seed: int = 0,
    test: str = "split",
    alpha: float = 0.01,
    permutations: int = 99,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-6,
) -> list[dict]:
    """Partial contamination (docs/methods/cdi.md §8, Figure 4): the suspect set mixes members and non-members.

    For each (r, n) with r·n an integer: the suspect set is (1−r)·n members plus r·n non-members, in
    random order; U is n *other* non-members. Each cell reports mean/median p and the fraction of
    p ≤ alpha; at r = 1 (no member at all) that fraction is a false-positive rate, reported with KS.

    Args:
      members, nonmembers: (N_m, d) and (N_n, d) feature pools.
      ns: sample counts (default: §8's list, truncated to what the pools allow).
    """
    _check_test(test)
    members = np.asarray(members, np.float64)
    nonmembers = np.asarray(nonmembers, np.float64)
    for name, a in (("members", members), ("non-members", nonmembers)):
        if a.ndim != 2 or not np.isfinite(a).all():
            raise ValueError(f"contamination: {name} must be a finite (N, d) array, got shape {a.shape}")
    if members.shape[1] != nonmembers.shape[1]:
        raise ValueError(f"contamination: {members.shape[1]} member features vs {nonmembers.shape[1]} non-member features")
    cells = []
    for n in ns if ns is not None else CONTAMINATION_NS:
        for r in ratios:
            n_out = r * n
            if abs(n_out - round(n_out)) > 1e-9:
                continue
            n_out = int(round(n_out))
            n_in = n - n_out
            if n < _min_n(test) or n_in > members.shape[0] or n_out + n > nonmembers.shape[0]:
                if ns is None:
                    continue
                raise ValueError(
                    f"contamination: n={n}, r={r} needs {n_in} members and {n_out + n} non-members; "
                    f"pools hold {members.shape[0]} and {nonmembers.shape[0]}"
                )
            xp = np.empty((reps, n, members.shape[1]))
            xu = np.empty_like(xp)
            for rep in range(reps):
                rng = np.random.default_rng([seed, n, rep, int(round(1000 * r))])
                m_rows = rng.permutation(members.shape[0])[:n_in]
                u_rows = rng.permutation(nonmembers.shape[0])[: n_out + n]
                suspect = np.concatenate([members[m_rows], nonmembers[u_rows[:n_out]]])
                xp[rep] = suspect[rng.permutation(n)]
                xu[rep] = nonmembers[u_rows[n_out:]]
            p = batched_pvalues(
                xp, xu, test, [(seed, n, rep, int(round(1000 * r))) for rep in range(reps)],
                permutations=permutations, C=C, penalize_intercept=penalize_intercept, tol=tol,
            )
            cell = ContaminationCell(
                ratio=float(r), n=n, mean_p=float(p.mean()), median_p=float(np.median(p)),
                power=float((p <= alpha).mean()), null=summarise_null(p, alpha) if r == 1.0 else None,
            )
            cells.append(asdict(cell))
    return cells


def _pool_pair(xp, xu):
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    if xp.ndim != 2 or xp.shape != xu.shape:
        raise ValueError(f"curve: P features {xp.shape} and U features {xu.shape} must be (N, d) of the same shape")
    if not (np.isfinite(xp).all() and np.isfinite(xu).all()):
        raise ValueError("curve: features hold NaN or inf")
    return xp, xu
