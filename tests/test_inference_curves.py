"""Sample-count curve, null calibration and contamination (docs/methods/cdi.md §7–§8)."""

import numpy as np
import pytest

from jaxmia.inference import curves, stat_tests


def _pools(rng, N=400, d=26, shift=0.35):
    xp = rng.normal(size=(N, d))
    xp[:, :3] += shift
    return xp, rng.normal(size=(N, d))


def test_default_grid():
    assert len(curves.DEFAULT_GRID) == 34 and curves.DEFAULT_GRID[:7] == (5, 6, 7, 8, 9, 10, 20)
    assert curves.DEFAULT_GRID[-1] == 20000
    assert curves.default_grid(2000) == tuple(range(5, 11)) + tuple(range(20, 101, 10)) + tuple(range(200, 1001, 100)) + (2000,)
    assert curves.default_grid(95, "cdi_reference")[-1] == 90


def test_sample_count_curve_split(rng):
    xp, xu = _pools(rng)
    grid = (10, 40, 160, 400)
    c = curves.sample_count_curve(xp, xu, grid=grid, reps=60, seed=3, test="split", n_boot=200)
    assert c.pvalues.shape == (4, 60) and c.ns == grid
    assert c.mean_p[0] > c.mean_p[1] > c.mean_p[2] > c.mean_p[3]
    assert c.power[3] > c.power[1]
    np.testing.assert_allclose(c.median_p, np.median(c.pvalues, 1))
    np.testing.assert_allclose(c.power, (c.pvalues <= 0.01).mean(1))
    assert np.all(c.mean_p_band[:, 0] <= c.mean_p) and np.all(c.mean_p <= c.mean_p_band[:, 1])
    hit = [n for n, m in zip(grid, c.mean_p) if m <= 0.01]
    assert c.samples_needed == (hit[0] if hit else None)
    # Any cell recomputes alone from its own generator default_rng([seed, n, rep]).
    for n, rep in ((40, 7), (160, 59)):
        assert curves.curve_cell(xp, xu, n, rep, seed=3, test="split") == c.pvalues[grid.index(n), rep]
        rows = np.random.default_rng([3, n, rep]).permutation(400)[:n]
        p, _ = stat_tests.split_pvalues(xp[rows][None], xu[rows][None], n // 2, tol=1e-6)
        assert p[0] == c.pvalues[grid.index(n), rep]
    d = c.to_dict()
    assert "pvalues" not in d and d["ns"] == list(grid) and len(d["mean_p_band"]) == 4


def test_sample_count_curve_reference_and_errors(rng):
    xp, xu = _pools(rng, N=120)
    c = curves.sample_count_curve(xp, xu, grid=(10, 100), reps=20, test="cdi_reference", n_boot=50)
    assert c.mean_p[1] < c.mean_p[0] and "NOT calibrated" in c.note
    assert curves.curve_cell(xp, xu, 100, 4, test="cdi_reference") == c.pvalues[1, 4]
    with pytest.raises(ValueError, match="outside"):
        curves.sample_count_curve(xp, xu, grid=(10, 500), reps=2)
    with pytest.raises(ValueError, match="unknown curve test"):
        curves.sample_count_curve(xp, xu, reps=2, test="ttest")
    with pytest.raises(ValueError, match="NaN or inf"):
        curves.sample_count_curve(np.where(xp > 3, np.nan, xp), xu, reps=2)


def test_null_calibration_from_a_pool(rng):
    pool = rng.standard_t(3, size=(3000, 26))
    res = curves.null_calibration(pool, n=100, trials=300, test="split", seed=1)
    assert res["trials"] == 300 and len(res["pvalues"]) == 300
    assert res["calibrated"] and res["ks_pvalue"] > 0.01 and abs(res["mean_p"] - 0.5) < 0.05
    lo, hi = res["fpr_interval_99"]
    assert lo <= 0.01 <= hi
    ref = curves.null_calibration(pool, n=100, trials=300, test="cdi_reference", seed=1)
    assert ref["ks_pvalue"] < 1e-3 and ref["mean_p"] < 0.47  # the reference protocol's inflation
    with pytest.raises(ValueError, match="cannot give two disjoint sets"):
        curves.null_calibration(pool[:150], n=100)


def test_summarise_null():
    p = (np.arange(1000) + 0.5) / 1000  # perfectly uniform
    s = curves.summarise_null(p, 0.01)
    assert s["fpr"] == 0.01 and s["calibrated"] and s["ks_statistic"] == pytest.approx(0.0005)
    assert s["mean_p"] == pytest.approx(0.5)
    s2 = curves.summarise_null(p * 0.5, 0.01)
    assert not s2["calibrated"] and s2["ks_pvalue"] < 1e-10


def test_contamination_curve(rng):
    members, nonmembers = _pools(rng, N=500, shift=0.5)
    cells = curves.contamination_curve(members, nonmembers, ratios=(0.0, 0.05, 0.5, 1.0), ns=(100, 30), reps=60, seed=2)
    got = {(c["ratio"], c["n"]): c for c in cells}
    assert (0.05, 30) not in got and (0.05, 100) in got  # r·n must be an integer (docs/methods/cdi.md §8)
    assert got[0.0, 100]["mean_p"] < got[0.5, 100]["mean_p"] < got[1.0, 100]["mean_p"]
    assert got[1.0, 100]["null"]["trials"] == 60 and got[0.0, 100]["null"] is None
    assert got[1.0, 100]["power"] <= 0.05  # no member in the suspect set: rejections are false positives
    with pytest.raises(ValueError, match="pools hold"):
        curves.contamination_curve(members[:50], nonmembers, ns=(100,), ratios=(0.0,), reps=2)
