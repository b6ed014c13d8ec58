"""Two-sample tests of "P was used in training": calibrated by construction, plus the reference.

The question a CDI audit answers is whether the published set P scores as more "member-like" than the
unpublished set U under the scoring model of :mod:`jaxmia.inference.scoring`. Three tests:

``"permutation"`` (the default; docs/methods/cdi.md §6, [D])
    A permutation test of the *whole pipeline*. The statistic is computed on the cross-fitted scores;
    then, B times, the P/U labels are swapped at random within each pair (P row i ↔ U row i), the
    standardiser and the fold models are refitted, and the statistic is recomputed.
    ``p = (1 + #{b: T_b ≥ T_obs}) / (1 + B)``, one-sided in the member direction. Under H0 ("P and U
    are i.i.d. draws from one distribution") every swap pattern leaves the joint distribution of the
    pairs unchanged and the fold assignment depends only on n, so T_obs is exchangeable with the T_b
    and the p-value is valid for any n, any feature distribution and any B (Phipson & Smyth, "Permutation
    p-values should never be zero", SAGMB 2010). Statistic: ``"mean_diff"`` (default) =
    mean(score_P) − mean(score_U), or ``"welch_t"``. The refits are the batched Newton solver
    (:func:`jaxmia.inference.scoring.fit_logistic_batched`): every swap pattern of a fold shares one
    design matrix and the refits become a few large matrix products (B = 1000 at n = 1000 per side:
    about 3 CPU seconds; docs/inference.md §8). Measured on null data (26-d Gaussian and Student-t(3)
    features, n = 30, 100, 300 per side, 1000 trials each, B = 99): false-positive rate at α = 0.01 of
    0.9–1.4% (every cell inside the binomial 99% range of a calibrated test), KS p ≥ 0.13, mean p
    0.49–0.51 (``scripts/null_calibration.py``, docs/inference.md §2).

``"split"`` (sample splitting)
    A seeded random half of the pairs trains the standardiser and the logistic regression; Welch's test
    runs on the scores of the other half, which the model never saw. Given the model, those scores are
    independent draws, so the test is valid up to Welch's t approximation (measured calibrated in
    ``docs/inference.md``); it needs one fit instead of 5·(B+1), at the price of testing on half the data.

``"cdi_reference"`` (the paper's protocol; docs/methods/cdi.md §5.1, §6)
    Cross-fitted scores, then ``scipy.stats.ttest_ind(P, U, equal_var=False)``, two-sided, with
    ``is_correct_order`` reported next to p and an ``alternative="one-sided"`` option. It treats the 2n
    out-of-fold scores as independent although the fold models share training rows, and it is NOT
    calibrated: on 26-d null features at α = 0.01 it rejects 4–8 % of the time (measured; see
    :data:`REFERENCE_FPR_NOTE` and ``scripts/null_calibration.py``).

``"hybrid"`` (the default; evidence strength, issue 16)
    The permutation test above cannot say anything below 1/(B + 1). The hybrid reports
    ``p = min(1, p_perm / w, p_tail / (1 − w))`` (default w = 0.9), where ``p_perm`` is the permutation
    p-value and ``p_tail`` an exact-bound sign-flip p-value on held-out pairs: a seeded random half of
    the pairs trains the scoring model, the other half gives differences d_i = s(P_i) − s(U_i), and
    with S = Σd_i / √(Σd_i²), ``p_tail = min(1, exp(−S²/2), (2e³/9)·Φ̄(S))``. Under H0 the held-out
    pairs are i.i.d. and exchangeable within the pair while the model is fixed, so the signs of the
    d_i are independent fair coins given |d|, and S is a Rademacher sum with Σa_i² = 1; Hoeffding's
    inequality and Pinelis's bound (Ann. Statist. 22 (1994) 357–368, Theorem 1.1/Cor. 2.6:
    P(Σε_i a_i ≥ x) ≤ (2e³/9)·Φ̄(x); Bentkus & Dzindzalieta, Bernoulli 21 (2015) tighten the constant
    to ≈ 3.18) make ``p_tail`` valid for any n and any score distribution. Both components are valid
    p-values, so by the union bound P(p ≤ α) ≤ wα + (1 − w)α = α: calibrated by construction, with no
    floor other than the evidence itself (S ≤ √m, so m held-out pairs can give at most
    p_tail ≈ 4.46·Φ̄(√m)). ``log10_p`` carries the exponent when p underflows a float.

``"fixed_score"`` (:func:`fixed_score_test`; power at small n, issue 16, docs/inference.md §12)
    No model is fitted: the family of pre-registered scores (each column with a registered member
    direction, as pooled ranks over P ∪ U, and their mean), the max-T statistic over the family, an
    exact sign-flip permutation p-value on all n pairs and a Bonferroni sign-flip tail bound, combined
    as the hybrid. Valid by construction (the pooled transform is invariant under within-pair swaps);
    not yet a ``CdiConfig.test`` choice.

Every test returns a :class:`InferenceResult` that says how its p-value was obtained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats
from scipy.special import expit

from jaxmia.inference import scoring

TESTS = ("hybrid", "fixed_score", "permutation", "split", "cdi_reference")
DEFAULT_TEST = "hybrid"
HYBRID_WEIGHT = 0.9  # share of alpha given to the permutation component of the hybrid
PINELIS_C = 2.0 * np.e**3 / 9.0  # Pinelis 1994: P(sum eps_i a_i >= x) <= C * Phi_bar(x) when sum a_i^2 = 1
STATISTICS = ("mean_diff", "welch_t")

# Measured with scripts/null_calibration.py (26-d standard Gaussian null features, 1000 trials each;
# docs/inference.md). Kept here so every cdi_reference result carries the warning.
REFERENCE_FPR_NOTE = (
    "cdi_reference (cross-fitted scores + Welch, two-sided) is not calibrated: on null data its "
    "false-positive rate at alpha=0.01 was 4.9% / 6.2% / 7.5% at n = 30 / 100 / 300 per side (26-d "
    "Gaussian features; 4.4% / 6.7% / 6.7% with Student-t(3) features; 1000 trials each, mean p 0.38-0.44 "
    "instead of 0.5; docs/inference.md, scripts/null_calibration.py). Use test='permutation' (the default) "
    "for a calibrated p-value."
)


@dataclass(frozen=True)
class InferenceResult:
    """A p-value and how it was obtained.

    Attributes:
      p_value: the p-value.
      method: ``"permutation"``, ``"split"`` or ``"cdi_reference"``.
      statistic: the observed statistic (mean difference or t).
      statistic_name: ``"mean_diff"`` or ``"welch_t"``.
      alternative: ``"greater"`` (one-sided, P more member-like), ``"two-sided"``, or ``"less"``.
      is_correct_order: whether P scores above U on average (the member direction).
      n_p, n_u: the number of scores tested per side.
      alpha: the decision level; ``reject`` is ``p_value ≤ alpha`` (the level-α rule of a valid p-value).
      permutations: B for the permutation test, else None.
      df: Welch–Satterthwaite degrees of freedom for Welch-based tests, else None.
      note: caveats (e.g. the measured miscalibration of ``cdi_reference``).
      log10_p: log10 of the p-value, finite where the float p underflows (the hybrid), else None.
      components: the hybrid's parts (permutation and tail p-values, weights, held-out pairs), else None.
    """

    p_value: float
    method: str
    statistic: float
    statistic_name: str
    alternative: str
    is_correct_order: bool
    n_p: int
    n_u: int
    alpha: float
    reject: bool
    permutations: int | None = None
    df: float | None = None
    note: str = ""
    log10_p: float | None = None
    components: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ---- Welch -----------------------------------------------------------------------------------------


def welch_test(a: np.ndarray, b: np.ndarray, alternative: str = "two-sided"):
    """Welch's unequal-variance t-test along the last axis (docs/methods/cdi.md §6).

    ``t = (m_a − m_b)/√(s_a²/n_a + s_b²/n_b)`` with ddof = 1 variances, Welch–Satterthwaite ν, and
    ``p = 2·SF_t(|t|; ν)`` (two-sided), ``SF_t(t; ν)`` ("greater"), ``CDF_t(t; ν)`` ("less"); equal to
    ``scipy.stats.ttest_ind(a, b, equal_var=False, alternative=...)``.

    Returns:
      ``(t, df, p)``, arrays over the leading axes (scalars for 1-d input).

    Raises:
      ValueError: on an unknown ``alternative`` or fewer than 2 values per side.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"unknown alternative {alternative!r}; known: two-sided, greater, less")
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na, nb = a.shape[-1], b.shape[-1]
    if na < 2 or nb < 2:
        raise ValueError(f"Welch's test needs at least 2 values per side, got {na} and {nb}")
    va = a.var(axis=-1, ddof=1) / na
    vb = b.var(axis=-1, ddof=1) / nb
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a.mean(-1) - b.mean(-1)) / np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    if alternative == "two-sided":
        p = 2.0 * stats.t.sf(np.abs(t), df)
    elif alternative == "greater":
        p = stats.t.sf(t, df)
    else:
        p = stats.t.cdf(t, df)
    return t, df, p


def _reference_alternative(alternative: str) -> str:
    """Maps the reference's options to scipy's: CDI scores are higher = member (docs/methods/cdi.md §6)."""
    if alternative in ("one-sided", "greater"):
        return "greater"
    if alternative == "two-sided":
        return "two-sided"
    raise ValueError(f"unknown alternative {alternative!r} for cdi_reference; known: two-sided, one-sided")


# ---- randomness -------------------------------------------------------------------------------------

# Purpose words mixed into the seed, so each random choice has its own stream (docs/methods/design.md §5).
_SWAPS, _SPLIT, _PAIRING, _BOOT, _RELABEL, _SIGNS = 1, 2, 3, 4, 5, 6


def rng_for(seed, purpose: int) -> np.random.Generator:
    """``np.random.default_rng([*seed, purpose])``: one stream per (seed, purpose)."""
    seed = [int(s) for s in np.atleast_1d(seed)]
    return np.random.default_rng([*seed, purpose])


def swap_patterns(n: int, permutations: int, seed) -> np.ndarray:
    """(1 + B, n) bool: row 0 is the identity (the observed labelling), rows 1..B random pair swaps."""
    rng = rng_for(seed, _SWAPS)
    swaps = np.zeros((permutations + 1, n), bool)
    swaps[1:] = rng.random((permutations, n)) < 0.5
    return swaps


# ---- batched engines (many trials at once; used by the curves and the null calibration) ------------


def _statistic(sp, su, swaps, statistic):
    """The statistic of every swap pattern from the scores of the original P/U rows (..., n)."""
    member = np.where(swaps, su, sp)
    other = np.where(swaps, sp, su)
    if statistic == "mean_diff":
        return member.mean(-1) - other.mean(-1)
    return welch_test(member, other)[0]


def _check_statistic(statistic: str):
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(STATISTICS)}")


def permutation_statistics(
    xp: np.ndarray,
    xu: np.ndarray,
    seeds: Sequence,
    *,
    permutations: int = 1000,
    statistic: str = "mean_diff",
    n_splits: int = 5,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-8,
    chunk_elements: int = 4_000_000,
):
    """The statistic under the observed labelling and B random pair swaps, for T trials at once.

    Args:
      xp, xu: (T, n, d) paired features.
      seeds: T seeds (ints or int tuples); trial t's swaps are ``swap_patterns(n, B, seeds[t])``, so a
        trial gives the same result alone or in a batch.
      permutations: B.
      statistic: ``"mean_diff"`` or ``"welch_t"``.
      tol: Newton gradient tolerance of the refits. Any fixed tolerance gives an exactly valid test
        (observed and permuted statistics are the same deterministic function of the data).
      chunk_elements: bound on the swap patterns processed at once (B·n per chunk).

    Returns:
      ``(stats, sp, su)``: stats (T, 1 + B), column 0 observed; the observed out-of-fold scores (T, n).
    """
    _check_statistic(statistic)
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    xp = np.asarray(xp, np.float64)
    T, n, _ = xp.shape
    if len(seeds) != T:
        raise ValueError(f"permutation test: {len(seeds)} seeds for {T} trials")
    swaps = np.stack([swap_patterns(n, permutations, s) for s in seeds])  # (T, 1+B, n)
    # Swap patterns in chunks, so the working arrays stay bounded at large n·B.
    step = max(1, chunk_elements // (8 * n))
    stats_tb = np.empty((T, permutations + 1))
    for lo in range(0, permutations + 1, step):
        sw = swaps[:, lo : lo + step]
        sp, su = scoring.crossfit_scores_batched(
            xp, xu, sw, n_splits=n_splits, C=C, penalize_intercept=penalize_intercept, tol=tol
        )
        stats_tb[:, lo : lo + step] = _statistic(sp, su, sw, statistic)
        if lo == 0:
            sp_obs, su_obs = sp[:, 0], su[:, 0]
    return stats_tb, sp_obs, su_obs


def permutation_pvalues(xp, xu, seeds, *, permutations: int = 1000, return_scores: bool = False, **kwargs):
    """Whole-pipeline paired-swap permutation p-values of T trials at once.

    ``p = (1 + #{b: T_b ≥ T_obs}) / (1 + B)``, one-sided in the member direction; ties within float
    round-off count as "≥" (as ``scipy.stats.permutation_test`` does), which can only make p larger.
    Arguments as :func:`permutation_statistics`.

    Returns:
      ``(p, t_obs)`` of shape (T,), plus the observed scores ``(sp, su)`` if ``return_scores``.
    """
    stats_tb, sp, su = permutation_statistics(xp, xu, seeds, permutations=permutations, **kwargs)
    t_obs = stats_tb[:, 0]
    slack = 100 * np.finfo(np.float64).eps * np.abs(t_obs)
    exceed = (stats_tb[:, 1:] >= (t_obs - slack)[:, None]).sum(-1)
    p = (1.0 + exceed) / (1.0 + permutations)
    if return_scores:
        return p, t_obs, sp, su
    return p, t_obs


def split_pvalues(
    xp: np.ndarray,
    xu: np.ndarray,
    n_train: int,
    *,
    alternative: str = "greater",
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-8,
    return_scores: bool = False,
):
    """Sample-splitting p-values of T trials at once: rows [0, n_train) of each side train, the rest test.

    The caller randomises the row order (this function draws nothing). ``tol`` is the Newton
    tolerance of the fits (any fit that ignores the test rows keeps the test valid). Returns ``(p, t)``
    of shape (T,), plus the test-row scores (T, n − n_train) of P and U if ``return_scores``.
    """
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    scoring._check_pair(xp, xu, "split test")
    T, n, _ = xp.shape
    if n_train < 1 or n - n_train < 2:
        raise ValueError(
            f"too few samples for the split test: {n} pairs, {n_train} for training; "
            "it needs at least 1 training pair and 2 test pairs"
        )
    x_train = np.concatenate([xp[:, :n_train], xu[:, :n_train]], axis=1)
    y = np.concatenate([np.ones((T, n_train)), np.zeros((T, n_train))], axis=1)
    scaler = scoring.fit_standardiser(x_train)
    coef, intercept = scoring.fit_logistic_batched(
        scaler.apply(x_train, augment=True), y, C=C, penalize_intercept=penalize_intercept, tol=tol, augmented=True
    )
    coef, intercept = coef[:, 0], intercept[:, 0]
    # Fold the standardiser into the weights: σ(((x − μ)/s)·w + b) = σ(x·(w/s) + b − μ·(w/s)).
    w_raw = coef / scaler.scale
    b_raw = intercept - (scaler.mean * w_raw).sum(-1)

    def score(x):
        return expit(np.matmul(x[:, n_train:], w_raw[..., None])[..., 0] + b_raw[:, None])

    sp, su = score(xp), score(xu)
    t, df, p = welch_test(sp, su, alternative)
    if return_scores:
        return p, t, df, sp, su
    return p, t


def reference_pvalues(
    xp: np.ndarray,
    xu: np.ndarray,
    *,
    alternative: str = "two-sided",
    n_splits: int = 5,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-8,
):
    """The reference protocol for T trials at once: cross-fitted scores (Newton), then Welch.

    Returns ``(p, t)`` of shape (T,).
    """
    sp, su = scoring.crossfit_scores_batched(
        xp, xu, n_splits=n_splits, C=C, penalize_intercept=penalize_intercept, tol=tol
    )
    t, _, p = welch_test(sp[:, 0], su[:, 0], _reference_alternative(alternative))
    return p, t


# ---- evidence strength: the sign-flip tail bound and the hybrid ------------------------------------


def rademacher_tail_log10(s) -> np.ndarray:
    """log10 of an upper bound on P(Σ ε_i a_i ≥ s), ε_i fair ±1 coins, any weights with Σ a_i² = 1.

    The bound is ``min(1, exp(−s²/2), (2e³/9)·Φ̄(s))``: Hoeffding (1963) for s ≥ 0, and Pinelis,
    "Extremal probabilistic problems and Hotelling's T² test under a symmetry condition", Ann. Statist.
    22 (1994), whose constant 2e³/9 ≈ 4.46 makes the bound within a constant factor of the Gaussian
    tail however far out. Computed in log space (``scipy.stats.norm.logsf``), so it stays finite where
    the probability underflows a float.
    """
    s = np.asarray(s, np.float64)
    hoeffding = np.where(s > 0, -0.5 * np.maximum(s, 0.0) ** 2 / np.log(10.0), 0.0)
    pinelis = (np.log(PINELIS_C) + stats.norm.logsf(s)) / np.log(10.0)
    return np.minimum(0.0, np.minimum(hoeffding, pinelis))


def signflip_tail_pvalues(d: np.ndarray):
    """Exact-bound one-sided sign-flip p-values of paired differences d (..., m), member direction d > 0.

    ``S = Σ d_i / √(Σ d_i²)``; given |d| and H0 (each d_i symmetric about 0, independently), S is a
    Rademacher sum with unit weight norm, so ``p = 10**rademacher_tail_log10(S)`` satisfies
    P(p ≤ x) ≤ x for every x (valid by construction; no normal approximation). All-zero d gives p = 1.

    Returns:
      ``(p, log10_p, S)`` over the leading axes.
    """
    d = np.asarray(d, np.float64)
    norm = np.sqrt((d**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(norm > 0, d.sum(-1) / np.where(norm > 0, norm, 1.0), 0.0)
    log10_p = rademacher_tail_log10(s)
    return 10.0**log10_p, log10_p, s


def hybrid_split(n: int, seed, split_fraction: float = 0.5):
    """(order, n_train): the hybrid's seeded split of n pairs (the same stream as :func:`split_test`)."""
    if not 0.0 < split_fraction < 1.0:
        raise ValueError(f"split_fraction must be in (0, 1), got {split_fraction}")
    n_train = int(np.floor(split_fraction * n))
    if n_train < 1 or n - n_train < 2:
        raise ValueError(f"the hybrid test needs at least 1 training and 2 held-out pairs; {n} pairs give "
                         f"{n_train} and {n - n_train}")
    return rng_for(seed, _SPLIT).permutation(n), n_train


def combine_hybrid(p_perm, log10_tail, weight: float = HYBRID_WEIGHT):
    """``p = min(1, p_perm / w, p_tail / (1 − w))`` and its log10: valid by the union bound."""
    if not 0.0 < weight < 1.0:
        raise ValueError(f"hybrid weight must be in (0, 1), got {weight}")
    log10 = np.minimum(0.0, np.minimum(np.log10(np.asarray(p_perm, np.float64)) - np.log10(weight),
                                       np.asarray(log10_tail) - np.log10(1.0 - weight)))
    return 10.0**log10, log10


def hybrid_pvalues(
    xp,
    xu,
    seeds: Sequence,
    *,
    permutations: int = 1000,
    statistic: str = "mean_diff",
    weight: float = HYBRID_WEIGHT,
    split_fraction: float = 0.5,
    n_splits: int = 5,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-8,
    details: bool = False,
):
    """The hybrid p-values of T trials at once (module docstring): permutation ⊕ sign-flip tail bound.

    Trial t's swaps come from ``seeds[t]`` (:func:`swap_patterns`) and its held-out half from
    :func:`hybrid_split` with the same seed, so a trial gives the same result alone or in a batch and
    :func:`hybrid_test` equals this function with T = 1.

    Returns:
      ``(p, log10_p)`` (T,), or with ``details`` a dict adding ``p_permutation``, ``p_tail``,
      ``log10_p_tail``, ``tail_statistic``, ``t_obs``, the observed cross-fitted scores ``sp``, ``su``,
      and the held-out rows / differences.
    """
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    scoring._check_pair(xp, xu, "hybrid test")
    T, n, _ = xp.shape
    p_perm, t_obs, sp, su = permutation_pvalues(
        xp, xu, seeds, permutations=permutations, return_scores=True, statistic=statistic, n_splits=n_splits,
        C=C, penalize_intercept=penalize_intercept, tol=tol,
    )
    splits = [hybrid_split(n, s, split_fraction) for s in seeds]
    orders = np.stack([o for o, _ in splits])
    n_train = splits[0][1]
    take = np.arange(T)[:, None]
    _, _, _, hp, hu = split_pvalues(xp[take, orders], xu[take, orders], n_train, C=C,
                                    penalize_intercept=penalize_intercept, tol=tol, return_scores=True)
    p_tail, log10_tail, s_tail = signflip_tail_pvalues(hp - hu)
    p, log10_p = combine_hybrid(p_perm, log10_tail, weight)
    if not details:
        return p, log10_p
    return {"p": p, "log10_p": log10_p, "p_permutation": p_perm, "p_tail": p_tail, "log10_p_tail": log10_tail,
            "tail_statistic": s_tail, "t_obs": t_obs, "sp": sp, "su": su, "held_out_rows": orders[:, n_train:],
            "n_train": n_train}


# ---- the fixed, pre-registered score (no fitting; issue 16 part 3) ---------------------------------

FIXED_TRANSFORMS = ("rank", "z")
FIXED_PERMUTATIONS = 9999  # sign flips are cheap (no refit): resolution 1e-4


def directions_vector(names: Sequence[str], lower_is_member: Sequence[str] = (),
                      higher_is_member: Sequence[str] = ()) -> np.ndarray:
    """(d,) +1 (higher = member), −1 (lower = member) or 0 (no known direction) per column name.

    The directions are pre-registered: they come from each signal's registration (the feature table's
    ``lower_is_member`` / ``higher_is_member`` meta), never from the data under test.

    Raises:
      ValueError: a column named in both lists, or no column with a direction.
    """
    lower, higher = set(lower_is_member), set(higher_is_member)
    both = sorted(lower & higher)
    if both:
        raise ValueError(f"fixed score: column(s) {both} are listed as both lower_is_member and higher_is_member")
    direction = np.array([1.0 if c in higher else -1.0 if c in lower else 0.0 for c in names])
    if not direction.any():
        raise ValueError(f"fixed score: none of the columns {list(names)} has a member direction "
                         "(lower_is_member / higher_is_member)")
    return direction


def fixed_scores(xp, xu, direction, transform: str = "rank"):
    """Pre-registered scores of P and U rows, (..., n, k): each directed column, then their mean.

    Each column j with direction o_j ≠ 0 is transformed over the pooled 2n rows of P ∪ U (average
    ranks centred to mean 0 and divided by 2n, or z-scores with the pooled mean and population std; a
    constant column gives 0) and multiplied by o_j, so higher = more member-like; the last of the k
    columns is their mean. The transform depends on the data only through the pooled multiset of rows,
    so it is the same for every relabelling of P and U (what makes :func:`fixed_score_pvalues` exact).
    """
    if transform not in FIXED_TRANSFORMS:
        raise ValueError(f"unknown fixed-score transform {transform!r}; known: {', '.join(FIXED_TRANSFORMS)}")
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    direction = np.asarray(direction, np.float64)
    if direction.shape != (xp.shape[-1],):
        raise ValueError(f"fixed score: {direction.shape[0] if direction.ndim == 1 else direction.shape} "
                         f"directions for {xp.shape[-1]} feature columns")
    if not np.isin(direction, (-1.0, 0.0, 1.0)).all() or not direction.any():
        raise ValueError(f"fixed score: directions must be -1, 0 or +1 with at least one nonzero, got {direction}")
    n = xp.shape[-2]
    used = direction != 0
    pooled = np.concatenate([xp, xu], axis=-2)[..., used]
    if transform == "rank":
        z = (stats.rankdata(pooled, axis=-2) - (2 * n + 1) / 2.0) / (2 * n)
    else:
        sd = pooled.std(axis=-2, keepdims=True)
        z = (pooled - pooled.mean(axis=-2, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    z = z * direction[used]
    s = np.concatenate([z, z.mean(-1, keepdims=True)], axis=-1)
    return s[..., :n, :], s[..., n:, :]


def _studentised(d):
    """S_j = Σ_i d_ij / √(Σ_i d_ij²) over axis −2 (0 where a column of d is all zero)."""
    norm = np.sqrt((d**2).sum(-2))
    return np.where(norm > 0, d.sum(-2) / np.where(norm > 0, norm, 1.0), 0.0), norm


def signflip_permutation_pvalues(d, seeds: Sequence, permutations: int = FIXED_PERMUTATIONS):
    """Monte-Carlo sign-flip p-values of the max-statistic of paired differences d (T, m, k) or (T, m).

    Statistic: M = max_j S_j with S_j = Σ_i d_ij / √(Σ_i d_ij²) (for k = 1 a monotone function of
    Σ_i d_i). B times every pair's differences flip sign together, by a fair coin per pair from
    ``rng_for(seeds[t], 6)``; ``p = (1 + #{b: M_b ≥ M}) / (1 + B)`` (ties within round-off count as "≥").
    The norms do not change under flips, so this is exact whenever the pairs' signs are fair coins
    given |d| (Phipson & Smyth 2010; the max over a fixed family is the Westfall–Young max-T
    construction, Westfall & Young 1993, §2.6). Returns ``(p, M, argmax j)`` (T,).
    """
    d = np.asarray(d, np.float64)
    if d.ndim == 2:
        d = d[..., None]
    if d.ndim != 3 or len(seeds) != d.shape[0]:
        raise ValueError(f"sign-flip test: expected (T, m[, k]) differences and T seeds, got {d.shape} and {len(seeds)}")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    s_obs, norm = _studentised(d)  # (T, k)
    m_obs = s_obs.max(-1)
    p = np.empty(d.shape[0])
    for t, seed in enumerate(seeds):
        signs = np.where(rng_for(seed, _SIGNS).random((permutations, d.shape[1])) < 0.5, -1.0, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            s_b = np.where(norm[t] > 0, (signs @ d[t]) / np.where(norm[t] > 0, norm[t], 1.0), 0.0)
        slack = 100 * np.finfo(np.float64).eps * max(1.0, abs(m_obs[t]))
        p[t] = (1.0 + (s_b.max(-1) >= m_obs[t] - slack).sum()) / (1.0 + permutations)
    return p, m_obs, s_obs.argmax(-1)


def fixed_score_pvalues(
    xp,
    xu,
    direction,
    seeds: Sequence,
    *,
    permutations: int = FIXED_PERMUTATIONS,
    transform: str = "rank",
    combine: str = "max",
    weight: float = HYBRID_WEIGHT,
    details: bool = False,
):
    """The fixed-score test of T trials at once: pre-registered scores, no model fitted.

    Scores: :func:`fixed_scores` (oriented pooled ranks or z-scores of each directed column, and their
    mean). ``combine="max"`` (default) tests the whole family: pair differences d_ij = s_j(P_i) − s_j(U_i)
    over all n pairs, statistic max_j S_j (:func:`signflip_permutation_pvalues`), and the tail bound
    ``p_tail = min(1, k · min_j bound(S_j))`` (:func:`rademacher_tail_log10`, Bonferroni over the k
    members); ``combine="mean"`` uses the mean score alone (k = 1). ``p = min(1, p_perm/w, p_tail/(1 − w))``
    as the hybrid (:func:`combine_hybrid`).

    Why it is valid (docs/inference.md §12): under H0 the n pairs are i.i.d. and each pair's two rows are
    exchangeable. The pooled transform is a symmetric function of the 2n rows, so it is unchanged by
    swapping the rows of any pair, and the directions and the family are fixed before the data are seen;
    given the unordered pairs, the swap indicators are i.i.d. fair coins and all of a pair's d_ij change
    sign with its coin. So the max statistic is exchangeable with its sign-flipped copies (the exact
    permutation p-value), each S_j is a Rademacher sum with unit weight norm (Hoeffding/Pinelis, and the
    union bound over j), and the union bound over the two parts gives P(p ≤ α) ≤ α for any n, any
    feature distribution and any B. Unlike the hybrid's tail part, nothing is held out: no row trains
    anything.

    Returns:
      ``(p, log10_p)`` (T,), or with ``details`` a dict adding ``p_permutation``, ``p_tail``,
      ``log10_p_tail``, ``tail_statistic`` (max_j S_j), ``best`` (its j; k − 1 is the mean), ``t_obs``
      (mean difference of the mean score), ``sp``, ``su`` (the mean score of every row).
    """
    if combine not in ("max", "mean"):
        raise ValueError(f"unknown fixed-score combine {combine!r}; known: max, mean")
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    scoring._check_pair(xp, xu, "fixed-score test")
    sp, su = fixed_scores(xp, xu, direction, transform)
    d = sp - su if combine == "max" else (sp - su)[..., -1:]
    k = d.shape[-1]
    p_perm, m_obs, best = signflip_permutation_pvalues(d, seeds, permutations)
    log10_tail = np.minimum(0.0, np.log10(k) + rademacher_tail_log10(m_obs))
    p, log10_p = combine_hybrid(p_perm, log10_tail, weight)
    if not details:
        return p, log10_p
    if combine == "mean":
        best = best + sp.shape[-1] - 1
    return {"p": p, "log10_p": log10_p, "p_permutation": p_perm, "p_tail": 10.0**log10_tail,
            "log10_p_tail": log10_tail, "tail_statistic": m_obs, "best": best, "family_size": k,
            "t_obs": (sp[..., -1] - su[..., -1]).mean(-1), "sp": sp[..., -1], "su": su[..., -1]}


# ---- single-audit tests -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredResult:
    """A test result with the per-row scores it tested (row indices into the paired inputs)."""

    result: InferenceResult
    scores_p: np.ndarray
    scores_u: np.ndarray
    rows_p: np.ndarray
    rows_u: np.ndarray


def permutation_test(
    xp,
    xu,
    *,
    permutations: int = 1000,
    statistic: str = "mean_diff",
    seed=0,
    alpha: float = 0.01,
    n_splits: int = 5,
    C: float = 1.0,
    penalize_intercept: bool = True,
) -> ScoredResult:
    """The default, calibrated test: a paired-swap permutation test of the cross-fitted pipeline.

    Args:
      xp, xu: (n, d) paired features of P and U (row i of each forms pair i).
      permutations: B (p-values are multiples of 1/(1+B); B = 1000 resolves p = 0.001).
      statistic: ``"mean_diff"`` (default) or ``"welch_t"`` of the cross-fitted scores.
      seed: the swap patterns come from ``np.random.default_rng([seed, 1])``.
      alpha: decision level.

    Returns:
      A :class:`ScoredResult`: one-sided p (member direction), the observed statistic, and the observed
      out-of-fold scores of every row.

    References:
      docs/methods/cdi.md §6 ([D], the calibrated default); Phipson & Smyth 2010 for the (1 + #)/(1 + B) form.
    """
    xp, xu = _paired(xp, xu, "permutation test")
    p, t_obs, sp, su = permutation_pvalues(
        xp[None], xu[None], [seed], permutations=permutations, return_scores=True, statistic=statistic,
        n_splits=n_splits, C=C, penalize_intercept=penalize_intercept,
    )
    n = xp.shape[0]
    result = InferenceResult(
        p_value=float(p[0]), method="permutation", statistic=float(t_obs[0]), statistic_name=statistic,
        alternative="greater", is_correct_order=bool(t_obs[0] > 0), n_p=n, n_u=n, alpha=alpha,
        reject=bool(p[0] <= alpha), permutations=permutations,
        note=f"exact permutation p-value: (1 + #permuted >= observed) / (1 + {permutations}); "
        "pairs swapped at random, standardiser and fold models refitted for every permutation",
    )
    rows = np.arange(n)
    return ScoredResult(result, sp[0], su[0], rows, rows)


def hybrid_test(
    xp,
    xu,
    *,
    permutations: int = 1000,
    statistic: str = "mean_diff",
    weight: float = HYBRID_WEIGHT,
    split_fraction: float = 0.5,
    seed=0,
    alpha: float = 0.01,
    n_splits: int = 5,
    C: float = 1.0,
    penalize_intercept: bool = True,
) -> ScoredResult:
    """The default test: the permutation test's p, with a sign-flip tail bound for strong evidence.

    ``p = min(1, p_perm / weight, p_tail / (1 − weight))`` (module docstring). The reported scores
    are the permutation component's out-of-fold scores of every row; ``components`` holds both parts.

    References:
      Phipson & Smyth 2010 (permutation p); Hoeffding 1963 and Pinelis 1994 (the tail bound);
      the union bound for the combination.
    """
    xp, xu = _paired(xp, xu, "hybrid test")
    r = hybrid_pvalues(xp[None], xu[None], [seed], permutations=permutations, statistic=statistic, weight=weight,
                       split_fraction=split_fraction, n_splits=n_splits, C=C, penalize_intercept=penalize_intercept,
                       details=True)
    n = xp.shape[0]
    m = n - r["n_train"]
    p, log10_p = float(r["p"][0]), float(r["log10_p"][0])
    components = {
        "p_permutation": float(r["p_permutation"][0]), "permutations": permutations, "weight_permutation": weight,
        "p_tail": float(r["p_tail"][0]), "log10_p_tail": float(r["log10_p_tail"][0]),
        "weight_tail": 1.0 - weight, "tail_statistic": float(r["tail_statistic"][0]),
        "tail_pairs_train": int(r["n_train"]), "tail_pairs_tested": int(m),
        "smallest_possible_log10_p": float(combine_hybrid(1.0 / (1 + permutations),
                                                          rademacher_tail_log10(np.sqrt(m)), weight)[1]),
    }
    result = InferenceResult(
        p_value=p, method="hybrid", statistic=float(r["t_obs"][0]), statistic_name=statistic, alternative="greater",
        is_correct_order=bool(r["t_obs"][0] > 0), n_p=n, n_u=n, alpha=alpha, reject=bool(p <= alpha),
        permutations=permutations, log10_p=log10_p, components=components,
        note=f"p = min(1, p_perm/{weight:g}, p_tail/{1 - weight:.2g}): p_perm is the whole-pipeline permutation "
        f"p-value (B = {permutations}, floor {1 / (1 + permutations):.2g}); p_tail an exact-bound sign-flip p-value "
        f"on {m} held-out pairs (model fitted on the other {r['n_train']}); valid by the union bound",
    )
    rows = np.arange(n)
    return ScoredResult(result, r["sp"][0], r["su"][0], rows, rows)


def fixed_score_test(
    xp,
    xu,
    direction,
    *,
    names: Sequence[str] | None = None,
    permutations: int = FIXED_PERMUTATIONS,
    transform: str = "rank",
    combine: str = "max",
    weight: float = HYBRID_WEIGHT,
    seed=0,
    alpha: float = 0.01,
) -> ScoredResult:
    """The fixed-score test: pre-registered scores (no fitting) and an exact sign-flip test on all pairs.

    Args:
      xp, xu: (n, d) paired features of P and U (row i of each forms pair i).
      direction: (d,) +1 / −1 / 0 per column (:func:`directions_vector`): higher / lower is member, unused.
      names: the d column names (to name the family member that carried the evidence).
      permutations: B sign-flip draws (cheap: no refit; default 9999).
      transform: ``"rank"`` (default) or ``"z"``: how each column is put on one scale over P ∪ U.
      combine: ``"max"`` (default: the max over each directed column and their mean) or ``"mean"``.
      weight: share of α given to the sign-flip permutation part (the rest to the tail bound).
      seed: the sign flips come from ``np.random.default_rng([seed, 6])``.

    Returns:
      A :class:`ScoredResult` whose per-row scores are the mean score (higher = member-like).

    References:
      docs/inference.md §12 (why it is valid, measured FPR and power); Phipson & Smyth 2010;
      Westfall & Young 1993 (max-T); Hoeffding 1963 and Pinelis 1994 (the tail bound); the union bound.
    """
    xp, xu = _paired(xp, xu, "fixed-score test")
    direction = np.asarray(direction, np.float64)
    if names is not None and len(names) != direction.size:
        raise ValueError(f"fixed-score test: {len(names)} names for {direction.size} columns")
    r = fixed_score_pvalues(xp[None], xu[None], direction, [seed], permutations=permutations, transform=transform,
                            combine=combine, weight=weight, details=True)
    n = xp.shape[0]
    p, log10_p = float(r["p"][0]), float(r["log10_p"][0])
    used = np.flatnonzero(direction)
    family = [str(names[j]) if names is not None else f"column {j}" for j in used] + ["mean"]
    k = r["family_size"]
    components = {
        "p_permutation": float(r["p_permutation"][0]), "permutations": permutations, "weight_permutation": weight,
        "p_tail": float(r["p_tail"][0]), "log10_p_tail": float(r["log10_p_tail"][0]),
        "weight_tail": 1.0 - weight, "tail_statistic": float(r["tail_statistic"][0]), "tail_pairs_tested": n,
        "transform": transform, "combine": combine, "family_size": int(k), "best": family[int(r["best"][0])],
        "smallest_possible_log10_p": float(combine_hybrid(
            1.0 / (1 + permutations), np.log10(k) + rademacher_tail_log10(np.sqrt(n)), weight)[1]),
    }
    t_obs = float(r["t_obs"][0])
    what = (f"the max over {k} pre-registered scores (each of {used.size} oriented pooled {transform}s and their mean)"
            if combine == "max" else f"the mean of {used.size} oriented pooled {transform}s")
    result = InferenceResult(
        p_value=p, method="fixed_score", statistic=t_obs, statistic_name="mean_diff", alternative="greater",
        is_correct_order=bool(t_obs > 0), n_p=n, n_u=n, alpha=alpha, reject=bool(p <= alpha),
        permutations=permutations, log10_p=log10_p, components=components,
        note=f"{what}, no model fitted; p = min(1, p_perm/{weight:g}, p_tail/{1 - weight:.2g}) with p_perm an exact "
        f"sign-flip permutation p-value (B = {permutations}) and p_tail the sign-flip tail bound, both on all {n} pairs",
    )
    rows = np.arange(n)
    return ScoredResult(result, r["sp"][0], r["su"][0], rows, rows)


def split_test(
    xp,
    xu,
    *,
    train_fraction: float = 0.5,
    alternative: str = "greater",
    seed=0,
    alpha: float = 0.01,
    C: float = 1.0,
    penalize_intercept: bool = True,
) -> ScoredResult:
    """Sample splitting: fit on a seeded random ``train_fraction`` of the pairs, Welch on the rest.

    The pair order is shuffled with ``np.random.default_rng([seed, 2])``; the first
    ``floor(train_fraction·n)`` pairs train the scoring model, the other rows get scores and are tested.
    """
    xp, xu = _paired(xp, xu, "split test")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = xp.shape[0]
    order = rng_for(seed, _SPLIT).permutation(n)
    n_train = int(np.floor(train_fraction * n))
    p, t, df, sp, su = split_pvalues(
        xp[order][None], xu[order][None], n_train, alternative=alternative, C=C,
        penalize_intercept=penalize_intercept, return_scores=True,
    )
    rows = order[n_train:]
    result = InferenceResult(
        p_value=float(p[0]), method="split", statistic=float(t[0]), statistic_name="welch_t",
        alternative=alternative, is_correct_order=bool(t[0] > 0), n_p=n - n_train, n_u=n - n_train,
        alpha=alpha, reject=bool(p[0] <= alpha), df=float(df[0]),
        note=f"scoring model fitted on {n_train} random pairs; Welch's test on the scores of the "
        f"{n - n_train} held-out pairs, which the model never saw",
    )
    return ScoredResult(result, sp[0], su[0], rows, rows)


def reference_test(
    xp,
    xu,
    *,
    alternative: str = "two-sided",
    alpha: float = 0.01,
    solver: str = "sklearn",
    n_splits: int = 5,
    C: float = 1.0,
    penalize_intercept: bool = True,
) -> ScoredResult:
    """The reference protocol (``cdi_reference``): cross-fitted scores + Welch (docs/methods/cdi.md §5.1, §6).

    ``solver="sklearn"`` (default here) makes the scores those of the reference code exactly;
    ``alternative="one-sided"`` gives p₁ = p₂/2 in the member direction, else 1 − p₂/2.
    The result's note carries the measured false-positive rate (:data:`REFERENCE_FPR_NOTE`).
    """
    xp, xu = _paired(xp, xu, "cdi_reference test")
    sp, su = scoring.crossfit_scores(
        xp, xu, n_splits=n_splits, C=C, penalize_intercept=penalize_intercept, solver=solver
    )
    t, df, p = welch_test(sp, su, _reference_alternative(alternative))
    n = xp.shape[0]
    result = InferenceResult(
        p_value=float(p), method="cdi_reference", statistic=float(t), statistic_name="welch_t",
        alternative="two-sided" if alternative == "two-sided" else "greater", is_correct_order=bool(t > 0),
        n_p=n, n_u=n, alpha=alpha, reject=bool(p <= alpha), df=float(df), note=REFERENCE_FPR_NOTE,
    )
    rows = np.arange(n)
    return ScoredResult(result, sp, su, rows, rows)


def scores_permutation_test(
    sp,
    su,
    *,
    permutations: int = 1000,
    statistic: str = "mean_diff",
    seed=0,
    alpha: float = 0.01,
) -> InferenceResult:
    """Permutation test on scores from a model that never saw them (fixed-split evaluation rows).

    The two groups may differ in size: the labels are permuted over the pooled scores (no refit is
    needed, since the model is independent of these rows). One-sided in the member direction.
    """
    _check_statistic(statistic)
    sp = np.asarray(sp, np.float64)
    su = np.asarray(su, np.float64)
    if sp.size < 2 or su.size < 2:
        raise ValueError(f"the permutation test needs at least 2 scores per side, got {sp.size} and {su.size}")
    pooled = np.concatenate([sp, su])
    rng = rng_for(seed, _RELABEL)
    orders = np.stack([np.arange(pooled.size)] + [rng.permutation(pooled.size) for _ in range(permutations)])
    perm = pooled[orders]
    a, b = perm[:, : sp.size], perm[:, sp.size :]
    stat = a.mean(-1) - b.mean(-1) if statistic == "mean_diff" else welch_test(a, b)[0]
    slack = 100 * np.finfo(np.float64).eps * abs(stat[0])
    p = (1.0 + (stat[1:] >= stat[0] - slack).sum()) / (1.0 + permutations)
    return InferenceResult(
        p_value=float(p), method="permutation", statistic=float(stat[0]), statistic_name=statistic,
        alternative="greater", is_correct_order=bool(stat[0] > 0), n_p=sp.size, n_u=su.size, alpha=alpha,
        reject=bool(p <= alpha), permutations=permutations,
        note="label permutation of held-out scores (the scoring model never saw these rows)",
    )


def scores_hybrid_test(
    sp,
    su,
    *,
    permutations: int = 1000,
    statistic: str = "mean_diff",
    weight: float = HYBRID_WEIGHT,
    seed=0,
    alpha: float = 0.01,
) -> InferenceResult:
    """The hybrid on held-out scores of a fixed-split model (no refit: the model never saw them).

    p_perm: :func:`scores_permutation_test`; p_tail: the sign-flip bound on min(|P|, |U|) pairs, each
    side in the seeded order ``default_rng([seed, 2, side])``. Combined as in :func:`hybrid_test`.
    """
    perm = scores_permutation_test(sp, su, permutations=permutations, statistic=statistic, seed=seed, alpha=alpha)
    sp = np.asarray(sp, np.float64)
    su = np.asarray(su, np.float64)
    m = min(sp.size, su.size)
    a = sp[rng_for([*np.atleast_1d(seed), 0], _SPLIT).permutation(sp.size)[:m]]
    b = su[rng_for([*np.atleast_1d(seed), 1], _SPLIT).permutation(su.size)[:m]]
    p_tail, log10_tail, s_tail = signflip_tail_pvalues(a - b)
    p, log10_p = combine_hybrid(perm.p_value, log10_tail, weight)
    components = {"p_permutation": perm.p_value, "permutations": permutations, "weight_permutation": weight,
                  "p_tail": float(p_tail), "log10_p_tail": float(log10_tail), "weight_tail": 1.0 - weight,
                  "tail_statistic": float(s_tail), "tail_pairs_tested": int(m)}
    return InferenceResult(
        p_value=float(p), method="hybrid", statistic=perm.statistic, statistic_name=statistic, alternative="greater",
        is_correct_order=perm.is_correct_order, n_p=sp.size, n_u=su.size, alpha=alpha, reject=bool(p <= alpha),
        permutations=permutations, log10_p=float(log10_p), components=components,
        note=f"held-out scores of a fixed split: p = min(1, p_perm/{weight:g}, p_tail/{1 - weight:.2g}) with "
        f"p_perm a label permutation test and p_tail a sign-flip bound on {m} seeded pairs",
    )


def format_p(p: float, log10_p: float | None = None) -> str:
    """``"0.0123"``, ``"3.2e-12"``, or ``"1e-412"`` (from log10) where the float underflows."""
    if p > 0 or log10_p is None:
        return f"{p:.3g}"
    mant = 10 ** (log10_p - np.floor(log10_p))
    return f"{mant:.2g}e{int(np.floor(log10_p))}"


def _paired(xp, xu, where: str):
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    if xp.ndim != 2:
        raise ValueError(f"{where}: expected (n, d) features, got shape {xp.shape}")
    scoring._check_pair(xp, xu, where)
    return xp, xu
