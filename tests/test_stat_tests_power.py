"""The fixed-score test (issue 16 part 3): its score, its exactness, its calibration on tiny null problems."""

import itertools

import numpy as np
import pytest
from scipy import stats

from jaxmia.inference import stat_tests


def test_directions_vector():
    d = stat_tests.directions_vector(["a", "b", "c"], lower_is_member=["a"], higher_is_member=["c"])
    np.testing.assert_array_equal(d, [-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="both lower_is_member and higher_is_member"):
        stat_tests.directions_vector(["a"], ["a"], ["a"])
    with pytest.raises(ValueError, match="none of the columns"):
        stat_tests.directions_vector(["a", "b"], ["z"])


def test_fixed_scores_closed_form(rng):
    n = 7
    xp, xu = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
    xu[:, 2] = xp[:, 2] = 5.0  # a constant column contributes 0
    direction = np.array([-1.0, 1.0, 1.0])
    sp, su = stat_tests.fixed_scores(xp, xu, direction, "rank")
    assert sp.shape == (n, 4)  # the three directed columns, then their mean
    pooled = np.concatenate([xp, xu])
    r = np.stack([stats.rankdata(pooled[:, j]) for j in range(3)], 1)
    oriented = (r - 7.5) / 14 * direction  # column 2: all ties, rank 7.5, contributes 0
    want = np.concatenate([oriented, oriented.mean(1, keepdims=True)], 1)
    np.testing.assert_allclose(np.concatenate([sp, su]), want, atol=1e-12)
    sz, uz = stat_tests.fixed_scores(xp, xu, direction, "z")
    z = (pooled - pooled.mean(0)) / np.where(pooled.std(0) > 0, pooled.std(0), 1)
    np.testing.assert_allclose(np.concatenate([sz, uz])[:, -1], (z * direction).mean(1), atol=1e-12)
    # Columns without a direction are ignored.
    s0, _ = stat_tests.fixed_scores(xp, xu, np.array([-1.0, 0.0, 0.0]), "rank")
    np.testing.assert_allclose(s0, np.stack([-(r[:n, 0] - 7.5) / 14] * 2, 1), atol=1e-12)
    # Swapping the rows of a pair only swaps their scores: the transform is the pooled one.
    sw = np.zeros(n, bool)
    sw[[1, 4]] = True
    sp2, su2 = stat_tests.fixed_scores(np.where(sw[:, None], xu, xp), np.where(sw[:, None], xp, xu), direction)
    np.testing.assert_allclose(sp2, np.where(sw[:, None], su, sp), atol=1e-12)
    np.testing.assert_allclose(su2, np.where(sw[:, None], sp, su), atol=1e-12)
    with pytest.raises(ValueError, match="unknown fixed-score transform"):
        stat_tests.fixed_scores(xp, xu, direction, "quantile")
    with pytest.raises(ValueError, match="2 directions for 3 feature columns"):
        stat_tests.fixed_scores(xp, xu, direction[:2])
    with pytest.raises(ValueError, match="directions must be -1, 0 or"):
        stat_tests.fixed_scores(xp, xu, np.zeros(3))


def test_signflip_permutation_matches_full_enumeration(rng):
    """The Monte-Carlo p approaches the exact p over all 2^m sign patterns (m = 10), for one score and
    for the max over a family of k = 3 (all of a pair's differences flip together)."""
    m = 10
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=m)))
    d = rng.normal(0.3, 1.0, size=(3, m))
    exact = ((signs @ d.T) >= d.sum(1) - 1e-12).mean(0)
    p, s_max, best = stat_tests.signflip_permutation_pvalues(d, [0, 1, 2], permutations=40_000)
    np.testing.assert_allclose(s_max, d.sum(1) / np.sqrt((d**2).sum(1)))
    np.testing.assert_allclose(p, exact, atol=0.008)  # binomial SE <= 0.0025
    dk = rng.normal(0.2, 1.0, size=(2, m, 3)) * np.r_[1.0, 3.0, 0.1]  # scales do not matter: studentised
    norm = np.sqrt((dk**2).sum(1))  # (2, 3)
    stat_all = (np.einsum("bm,tmk->tbk", signs, dk) / norm[:, None]).max(-1)  # (2, 2^m)
    obs = (dk.sum(1) / norm).max(-1)
    exact_k = (stat_all >= obs[:, None] - 1e-12).mean(1)
    pk, sk, bk = stat_tests.signflip_permutation_pvalues(dk, [5, 6], permutations=40_000)
    np.testing.assert_allclose(sk, obs)
    np.testing.assert_array_equal(bk, (dk.sum(1) / norm).argmax(-1))
    np.testing.assert_allclose(pk, exact_k, atol=0.008)
    # The definition, literally, at small B.
    p5, _, _ = stat_tests.signflip_permutation_pvalues(d[:1], [9], permutations=5)
    flip = stat_tests.rng_for(9, 6).random((5, m)) < 0.5
    t_b = np.where(flip, -d[0], d[0]).sum(1)
    assert p5[0] == pytest.approx((1 + (t_b >= d[0].sum() - 1e-12).sum()) / 6)


def test_fixed_score_exact_under_exchangeability():
    """Exchangeable P and U: P(p_perm ≤ k/2^n) = k/2^n at the exact level (all sign patterns), and the
    Monte-Carlo and combined p-values are uniform / conservative over 400 seeded tiny problems."""
    n, d, trials = 8, 3, 400
    rng = np.random.default_rng(123)
    xp = rng.standard_t(3, size=(trials, n, d))
    xu = rng.standard_t(3, size=(trials, n, d))
    direction = np.array([-1.0, 1.0, 0.0])
    for combine in ("max", "mean"):
        r = stat_tests.fixed_score_pvalues(xp, xu, direction, list(range(trials)), permutations=999,
                                           combine=combine, details=True)
        pp = r["p_permutation"]
        for a in (0.05, 0.1, 0.25, 0.5):
            lo, hi = stats.binom.ppf([0.0005, 0.9995], trials, a) / trials
            assert lo <= (pp <= a).mean() <= hi, (combine, a, (pp <= a).mean())
            assert (r["p"] <= a).mean() <= hi  # the combination is never more liberal than its parts
        assert abs(pp.mean() - 0.5) < 4 * np.sqrt(1 / 12 / trials)
        np.testing.assert_allclose(r["p"], np.minimum(1, np.minimum(pp / 0.9, r["p_tail"] / 0.1)), rtol=1e-12)
        assert r["family_size"] == (3 if combine == "max" else 1)
        # The tail part: k times the Rademacher bound of the largest studentised sum.
        np.testing.assert_allclose(r["log10_p_tail"], np.minimum(
            0, np.log10(r["family_size"]) + stat_tests.rademacher_tail_log10(r["tail_statistic"])))
    # Exact level: with every sign pattern, rejections at p ≤ 16/256 happen at rate ≤ 1/16, and pooling
    # over trials that rate is 1/16 within binomial error (continuous data: no ties).
    sp, su = stat_tests.fixed_scores(xp, xu, direction, "z")
    diff = sp[..., -1] - su[..., -1]
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=n)))
    exact = ((diff @ signs.T) >= diff.sum(1, keepdims=True) - 1e-12).mean(1)
    lo, hi = stats.binom.ppf([0.0005, 0.9995], trials, 16 / 256) / trials
    assert lo <= (exact <= 16 / 256).mean() <= hi


def test_fixed_score_test_power_and_result(rng):
    n = 20
    xu = rng.normal(size=(n, 4))
    xp = rng.normal(size=(n, 4)) - np.r_[1.0, 1.0, 0.0, 0.0]  # lower is member on the first two columns
    direction = np.array([-1.0, -1.0, 0.0, 0.0])
    names = ["a", "b", "c", "e"]
    res = stat_tests.fixed_score_test(xp, xu, direction, names=names, seed=3)
    batched = stat_tests.fixed_score_pvalues(xp[None], xu[None], direction, [3], details=True)
    r = res.result
    assert r.method == "fixed_score" and r.p_value == pytest.approx(batched["p"][0])
    assert r.reject and r.is_correct_order and r.p_value < 1e-3
    assert r.components["tail_pairs_tested"] == n and r.components["family_size"] == 3
    assert r.components["best"] in ("a", "b", "mean")
    np.testing.assert_allclose(res.scores_p - res.scores_u, batched["sp"][0] - batched["su"][0])
    # The wrong direction gives no evidence.
    wrong = stat_tests.fixed_score_test(xp, xu, -direction, seed=3).result
    assert wrong.p_value > 0.5 and not wrong.is_correct_order


def test_run_cdi_fixed_score_uses_the_tables_directions(rng):
    """``CdiConfig(test="fixed_score")`` runs the fixed-score test on the table's registered directions."""
    from jaxmia.cdi import run_cdi
    from jaxmia.inference import CdiConfig
    from jaxmia.table import FeatureTable

    n = 30
    names = ("loss", "gain", "free")
    meta = {"lower_is_member": ["loss"], "higher_is_member": ["gain"]}
    xp = rng.normal(size=(n, 3)) + np.array([-0.8, 0.8, 0.0])  # P: lower loss, higher gain
    xu = rng.normal(size=(n, 3))
    ids_p, ids_u = np.array([f"p{i:02d}" for i in range(n)]), np.array([f"u{i:02d}" for i in range(n)])
    p_table = FeatureTable(ids=ids_p, names=names, values=xp, meta=dict(meta))
    u_table = FeatureTable(ids=ids_u, names=names, values=xu, meta=dict(meta))
    cfg = CdiConfig(test="fixed_score", permutations=999, curve=False)
    out = run_cdi(p_table, u_table, cfg)
    want = stat_tests.fixed_score_test(xp, xu, np.array([-1.0, 1.0, 0.0]), names=names, permutations=999,
                                       seed=cfg.seed, alpha=cfg.alpha)
    assert out["verdict"]["method"] == "fixed_score"
    assert out["verdict"]["p_value"] == pytest.approx(want.result.p_value, rel=1e-12)
    assert out["verdict"]["p_value"] < 0.01
    with pytest.raises(ValueError, match="none of the columns"):
        run_cdi(FeatureTable(ids=ids_p, names=names, values=xp, meta={}),
                FeatureTable(ids=ids_u, names=names, values=xu, meta={}), cfg)
