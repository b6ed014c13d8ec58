"""Welch parity, permutation p-values against their definition, power and the reference's inflation."""

import numpy as np
import pytest
from scipy import stats

from jaxmia.inference import curves, scoring, stat_tests


def test_welch_matches_scipy(rng):
    for na, nb in ((2, 2), (7, 31), (200, 150)):
        a = rng.normal(0.3, 1.0, size=na)
        b = rng.normal(0.0, 3.0, size=nb)
        for alternative in ("two-sided", "greater", "less"):
            t, df, p = stat_tests.welch_test(a, b, alternative)
            ref = stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
            np.testing.assert_allclose(t, ref.statistic, rtol=1e-10)
            np.testing.assert_allclose(p, ref.pvalue, rtol=1e-10, atol=1e-300)
            np.testing.assert_allclose(df, ref.df, rtol=1e-10)
    # Batched over a leading axis.
    A, B = rng.normal(size=(5, 20)), rng.normal(size=(5, 30)) + 0.2
    t, df, p = stat_tests.welch_test(A, B, "greater")
    ref = stats.ttest_ind(A, B, axis=1, equal_var=False, alternative="greater")
    np.testing.assert_allclose(p, ref.pvalue, rtol=1e-10)
    with pytest.raises(ValueError, match="at least 2 values per side"):
        stat_tests.welch_test([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="unknown alternative"):
        stat_tests.welch_test(A, B, "bigger")


def test_reference_test_sidedness(rng):
    xp = rng.normal(size=(40, 5)) + np.r_[0.5, 0, 0, 0, 0]
    xu = rng.normal(size=(40, 5))
    two = stat_tests.reference_test(xp, xu).result
    one = stat_tests.reference_test(xp, xu, alternative="one-sided").result
    sp, su = scoring.crossfit_scores(xp, xu, solver="sklearn")  # the reference scores
    ref = stats.ttest_ind(sp, su, equal_var=False)
    assert two.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert two.alternative == "two-sided" and two.is_correct_order == (ref.statistic > 0)
    p1 = ref.pvalue / 2 if ref.statistic > 0 else 1 - ref.pvalue / 2  # docs/methods/cdi.md §6
    assert one.p_value == pytest.approx(p1, rel=1e-10)
    assert one.p_value == pytest.approx(stats.ttest_ind(sp, su, equal_var=False, alternative="greater").pvalue, rel=1e-10)
    assert "not calibrated" in two.note


def test_permutation_pvalue_is_its_definition(rng):
    """The batched engine equals refitting the cross-fitted pipeline on every swapped dataset."""
    n, B = 20, 15
    xp = rng.normal(size=(n, 3)) + 0.4
    xu = rng.normal(size=(n, 3))
    res = stat_tests.permutation_test(xp, xu, permutations=B, seed=11)
    swaps = stat_tests.swap_patterns(n, B, 11)
    assert not swaps[0].any()
    stats_b = []
    for sw in swaps:
        member = np.where(sw[:, None], xu, xp)
        other = np.where(sw[:, None], xp, xu)
        sp, su = scoring.crossfit_scores(member, other)
        stats_b.append(sp.mean() - su.mean())
    stats_b = np.array(stats_b)
    expected = (1 + (stats_b[1:] >= stats_b[0] - 1e-12).sum()) / (1 + B)
    assert res.result.p_value == pytest.approx(expected)
    assert res.result.statistic == pytest.approx(stats_b[0], abs=1e-9)
    assert res.result.permutations == B and res.result.alternative == "greater"
    np.testing.assert_allclose(res.scores_p, scoring.crossfit_scores(xp, xu)[0], atol=1e-7)
    # Welch-t statistic variant: same pipeline, same definition.
    res_t = stat_tests.permutation_test(xp, xu, permutations=B, seed=11, statistic="welch_t")
    assert res_t.result.statistic_name == "welch_t" and 1 / (B + 1) <= res_t.result.p_value <= 1


def test_permutation_is_deterministic_and_batch_independent(rng):
    T, n = 4, 15
    xp = rng.normal(size=(T, n, 4))
    xu = rng.normal(size=(T, n, 4))
    seeds = [(3, t) for t in range(T)]
    p_batch, _ = stat_tests.permutation_pvalues(xp, xu, seeds, permutations=29)
    for t in range(T):
        p_alone, _ = stat_tests.permutation_pvalues(xp[t : t + 1], xu[t : t + 1], [seeds[t]], permutations=29)
        assert p_alone[0] == p_batch[t]
    np.testing.assert_allclose(p_batch * 30, np.round(p_batch * 30))  # multiples of 1/(B+1)
    assert (p_batch >= 1 / 30).all()


def test_split_test_power_matches_noncentral_t():
    """One shifted Gaussian feature: the split test's power is Welch's closed form on n/2 pairs."""
    T, n, delta = 400, 200, 0.35
    rng = np.random.default_rng(5)
    xp = rng.normal(size=(T, n, 1)) + delta
    xu = rng.normal(size=(T, n, 1))
    p, t = stat_tests.split_pvalues(xp, xu, n // 2)
    n_test = n - n // 2
    df = 2 * n_test - 2
    crit = stats.t.ppf(0.99, df)
    power_theory = 1 - stats.nct.cdf(crit, df, delta * np.sqrt(n_test / 2))  # ≈ 0.55
    power = (p <= 0.01).mean()
    se = np.sqrt(power_theory * (1 - power_theory) / T)
    assert abs(power - power_theory) < 3.5 * se, (power, power_theory)


def test_default_test_power_grows_with_shift_and_n():
    """docs/methods/cdi.md §11 item 3 on the default test (26-d, one feature shifted)."""
    rng = np.random.default_rng(7)
    T, B = 24, 19
    results = {}
    for n, delta in ((30, 0.0), (30, 0.8), (30, 1.6), (90, 0.8)):
        xp = rng.normal(size=(T, n, 26))
        xp[..., 0] += delta
        xu = rng.normal(size=(T, n, 26))
        p, t_obs = stat_tests.permutation_pvalues(xp, xu, [(n, t) for t in range(T)], permutations=B)
        results[n, delta] = (p.mean(), (t_obs > 0).mean())
    assert results[30, 0.0][0] > results[30, 0.8][0] > results[30, 1.6][0]
    assert results[30, 0.8][0] > results[90, 0.8][0]
    assert results[30, 1.6][0] < 0.15 and results[90, 0.8][0] < 0.15
    assert results[30, 1.6][1] == 1.0 and results[90, 0.8][1] == 1.0  # is_correct_order


def _null(rng, T, n, dist="gaussian"):
    if dist == "gaussian":
        return rng.normal(size=(T, n, 26)), rng.normal(size=(T, n, 26))
    return rng.standard_t(3, size=(T, n, 26)), rng.standard_t(3, size=(T, n, 26))


@pytest.mark.parametrize("n", [30, 300])
def test_split_test_calibrated_on_null_data(n):
    rng = np.random.default_rng(n)
    for dist in ("gaussian", "student_t3"):
        xp, xu = _null(rng, 600, n, dist)
        p, _ = stat_tests.split_pvalues(xp, xu, n // 2)
        s = curves.summarise_null(p, 0.01)
        assert s["calibrated"] and s["ks_pvalue"] > 0.01, (dist, s)


def test_scores_permutation_test_is_its_definition(rng):
    sp = rng.normal(size=13) + 0.8
    su = rng.normal(size=21)
    res = stat_tests.scores_permutation_test(sp, su, permutations=199, seed=4)
    pooled = np.concatenate([sp, su])
    prng = stat_tests.rng_for(4, stat_tests._RELABEL)
    t_obs = sp.mean() - su.mean()
    count = 0
    for _ in range(199):
        perm = pooled[prng.permutation(pooled.size)]
        count += perm[:13].mean() - perm[13:].mean() >= t_obs - 1e-12
    assert res.p_value == pytest.approx((1 + count) / 200)
    assert res.statistic == pytest.approx(t_obs) and res.n_p == 13 and res.n_u == 21
