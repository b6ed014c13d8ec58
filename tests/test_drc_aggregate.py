"""DRC aggregation: mean z-score and agree number vs NumPy, calibration/evaluation disjointness."""

import numpy as np
import pytest

from jaxmia.drc import aggregate as A
from jaxmia.table import FeatureTable

TASKS = ["center_r10", "center_r30", "patches_r10", "patches_r30"]


def _table(rng, n_member=30, n_non=60):
    """A DRC-like table: members have lower masked MSE (higher PSNR) on every task."""
    member = rng.normal(0.05, 0.02, (n_member, len(TASKS))).clip(1e-4)
    non = rng.normal(0.12, 0.03, (n_non, len(TASKS))).clip(1e-4)
    mse = np.concatenate([member, non])
    psnr = 10 * np.log10(4 / mse)
    ids = [f"m{i}" for i in range(n_member)] + [f"n{i}" for i in range(n_non)]
    names = [f"drc_mse_{t}" for t in TASKS] + [f"drc_psnr_{t}" for t in TASKS]
    meta = {"drc": {"task_names": TASKS}}
    return FeatureTable(np.asarray(ids), tuple(names), np.concatenate([mse, psnr], axis=1), meta), ids


def test_mean_z_and_agree_match_numpy(rng):
    table, ids = _table(rng)
    cal = [f"n{i}" for i in range(30)]  # calibration: half the non-members
    ev = [i for i in ids if i not in cal]
    out = A.aggregate_table(table, cal, metric="mse", agree_quantile=0.8,
                            is_member=[i.startswith("m") for i in ev])
    assert out["ids"] == ev  # default evaluation rows: everything outside the calibration split
    mse = table.select([f"drc_mse_{t}" for t in TASKS])
    s_cal, s_ev = -mse.rows(cal).values, -mse.rows(ev).values  # oriented higher = member
    mu, sd = s_cal.mean(0), s_cal.std(0)
    np.testing.assert_allclose(out["mean_z"], ((s_ev - mu) / sd).mean(1), rtol=1e-12)
    theta = np.quantile(s_cal, 0.8, axis=0)
    np.testing.assert_array_equal(out["agree"], (s_ev > theta).sum(1))
    np.testing.assert_allclose(out["calibration"].theta, theta)
    curve = out["decision_curve"]
    lab = np.array([i.startswith("m") for i in ev])
    for k, p, r in zip(curve["k"], curve["precision"], curve["recall"]):
        pred = out["agree"] >= k
        assert r == pytest.approx((pred & lab).sum() / lab.sum())
        if pred.any():
            assert p == pytest.approx((pred & lab).sum() / pred.sum())
        else:
            assert np.isnan(p)
    assert curve["recall"][0] == 1.0 and np.all(np.diff(curve["recall"]) <= 0)
    # Members are clearly separated on this synthetic table.
    assert out["mean_z"][lab].mean() > out["mean_z"][~lab].mean() + 1


def test_agree_number_monotone_in_theta(rng):
    scores = rng.normal(size=(50, 6))
    cal_scores = rng.normal(size=(40, 6))
    names, cal_ids = [f"t{i}" for i in range(6)], [str(i) for i in range(40)]
    prev = None
    for q in np.linspace(0.05, 0.95, 10):
        cal = A.fit_calibration(cal_scores, cal_ids, names, agree_quantile=q)
        agree = A.agree_number(scores, cal.theta)
        assert agree.min() >= 0 and agree.max() <= 6
        if prev is not None:
            assert np.all(agree <= prev)  # a higher quantile never adds votes
        prev = agree
    assert prev.sum() < A.agree_number(scores, np.quantile(cal_scores, 0.05, axis=0)).sum()
    # Directly in θ, too.
    thetas = np.sort(rng.normal(size=(8, 6)), axis=0)
    counts = [A.agree_number(scores, th) for th in thetas]
    assert all(np.all(b <= a) for a, b in zip(counts, counts[1:]))


def test_rank_score_orders_by_agree_then_z():
    agree = np.array([2, 2, 3, 0])
    z = np.array([-5.0, 1.0, -100.0, 100.0])
    order = np.argsort(-A.agree_rank_score(agree, z))
    assert order.tolist() == [2, 1, 0, 3]


def test_calibration_overlap_refused(rng):
    table, ids = _table(rng)
    with pytest.raises(ValueError, match=r"overlap in 2 id\(s\): 'n3', 'n4'"):
        A.aggregate_table(table, ["n1", "n2", "n3", "n4"], ["m0", "n3", "n4"], metric="psnr")
    with pytest.raises(ValueError, match="overlap"):
        A.check_disjoint(["a", "b"], ["b"])
    A.check_disjoint(["a"], ["b"])


def test_bad_calibration_inputs(rng):
    with pytest.raises(ValueError, match="constant scores for task.*t1"):
        A.fit_calibration(np.c_[rng.normal(size=5), np.ones(5)], list("abcde"), ["t0", "t1"])
    with pytest.raises(ValueError, match="expected a"):
        A.fit_calibration(rng.normal(size=(5, 3)), list("abcde"), ["t0", "t1"])
    table, _ = _table(rng)
    with pytest.raises(ValueError, match="drc_ssim"):
        A.aggregate_table(table, ["n1", "n2"], metric="ssim")
