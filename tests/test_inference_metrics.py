"""MIA metrics against scikit-learn and against each upstream code's formula (docs/methods/mia.md §2.3–§2.4)."""

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_auc_score, roc_curve

from jaxmia.inference import metrics


def _scores(rng, n_pos=300, n_neg=500, ties=False):
    s = np.r_[rng.normal(0.8, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    if ties:
        s = np.round(s, 1)  # many tied values across both classes
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    perm = rng.permutation(y.size)
    return s[perm], y[perm]


@pytest.mark.parametrize("ties", [False, True])
def test_exact_roc_and_auc_match_sklearn(rng, ties):
    s, y = _scores(rng, ties=ties)
    for drop in (False, True):
        roc = metrics.roc_curve_exact(s, y, drop_intermediate=drop)
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
        np.testing.assert_allclose(roc.fpr, fpr)
        np.testing.assert_allclose(roc.tpr, tpr)
        np.testing.assert_array_equal(roc.thresholds, thr)
    roc = metrics.roc_curve_exact(s, y)
    assert roc.fpr.size == np.unique(s).size + 1  # one vertex per distinct score, plus (0, 0)
    a = metrics.auc(s, y)
    assert a == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert a == pytest.approx(sk_auc(roc.fpr, roc.tpr), abs=1e-12)  # trapezoid on the exact ROC
    # Mann–Whitney with ties counted ½, by brute force.
    pos, neg = s[y == 1], s[y == 0]
    mw = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert a == pytest.approx(mw, abs=1e-12)


def test_orientation_and_asr(rng):
    s, y = _scores(rng)
    assert metrics.auc(-s, y, lower_is_member=True) == pytest.approx(metrics.auc(s, y))
    assert metrics.tpr_at_fpr(-s, y, 0.01, lower_is_member=True) == metrics.tpr_at_fpr(s, y, 0.01)
    # ASR: best balanced accuracy over every threshold, brute force.
    best = max((1 + (s[y == 1] >= t).mean() - (s[y == 0] >= t).mean()) / 2 for t in np.r_[np.unique(s), np.inf])
    assert metrics.asr_oracle(s, y) == pytest.approx(best)


def test_exact_tpr_at_fpr_brute_force_ties_and_tiny_budgets(rng):
    s, y = _scores(rng, n_pos=200, n_neg=400, ties=True)
    pos, neg = s[y == 1], s[y == 0]
    for x in (0.001, 0.0025, 0.01, 0.05, 0.3):
        cands = [(pos >= t).mean() for t in np.r_[np.unique(s), np.inf] if (neg >= t).mean() <= x]
        assert metrics.tpr_at_fpr(s, y, x) == pytest.approx(max(cands))
    # A tie between the top member and the top non-member: they enter together, so a budget below
    # 1/n_neg leaves only the (0, 0) vertex and members strictly above every non-member.
    s2 = np.array([5.0, 5.0, 4.0, 3.0, 1.0, 0.0])
    y2 = np.array([1, 0, 1, 1, 0, 0])
    assert metrics.tpr_at_fpr(s2, y2, 0.1) == 0.0  # 1/3 FPR at the tied vertex exceeds 0.1
    s3 = np.array([6.0, 5.0, 4.0, 3.0, 1.0, 0.0])
    assert metrics.tpr_at_fpr(s3, y2, 1e-6) == pytest.approx(1 / 3)  # FPR exactly 0 is within any budget


def test_mia_metrics_counts_and_flags(rng):
    s, y = _scores(rng, n_pos=300, n_neg=500)
    m = metrics.mia_metrics(s, y)
    assert m["n_pos"] == 300 and m["n_neg"] == 500
    r1, r01 = m["tpr_at_fpr"]["0.01"], m["tpr_at_fpr"]["0.001"]
    assert r1["false_positives_allowed"] == 5 and r1["few_false_positives"]
    assert r01["false_positives_allowed"] == 0 and r01["few_false_positives"]
    assert r1["false_positives"] <= 5 and r1["fpr"] <= 0.01
    assert r1["tpr"] == pytest.approx(metrics.tpr_at_fpr(s, y, 0.01))
    big_s, big_y = _scores(rng, n_pos=100, n_neg=2000)
    assert not metrics.mia_metrics(big_s, big_y)["tpr_at_fpr"]["0.01"]["few_false_positives"]  # 20 FPs
    assert "oracle" in m["asr_note"]


def _secmi_reference(member, nonmember, n_points=2000):
    """jinhaoduan/SecMI mia_evals/secmia.py::roc transliterated (lower = member), plus its TPR pick."""
    lo = min(member.min(), nonmember.min())
    hi = max(member.max(), nonmember.max())
    fprs, tprs = [], []
    for threshold in np.arange(lo, hi, (hi - lo) / n_points):
        tp = (member <= threshold).sum()
        fn = (member > threshold).sum()
        fp = (nonmember <= threshold).sum()
        tn = (nonmember > threshold).sum()
        tprs.append(tp / (tp + fn))
        fprs.append(fp / (fp + tn))
    fprs, tprs = np.array(fprs), np.array(tprs)
    return {x: tprs[np.abs(fprs - x).argmin()] for x in (0.01, 0.001)}


def test_secmi_convention(rng):
    s, y = _scores(rng, n_pos=400, n_neg=400)
    raw = -s  # SecMI-style distance: lower = member
    ref = _secmi_reference(raw[y == 1], raw[y == 0])
    for x in (0.01, 0.001):
        got = metrics.tpr_at_fpr(raw, y, x, convention="secmi", lower_is_member=True)
        assert got == pytest.approx(ref[x])


def test_pia_convention(rng):
    s, y = _scores(rng, ties=True)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # torchmetrics BinaryROC keeps every vertex
    for x in (0.01, 0.05):
        assert metrics.tpr_at_fpr(s, y, x, convention="pia") == pytest.approx(tpr[(fpr < x).sum() - 1])
        # The largest FPR *strictly* below x: never above the exact convention.
        assert metrics.tpr_at_fpr(s, y, x, convention="pia") <= metrics.tpr_at_fpr(s, y, x)


def test_cdi_convention(rng):
    s, y = _scores(rng, ties=True)
    loss = np.exp(-s)  # positive, lower = member (like the CDI attack scores)
    for x in (0.01, 0.05):
        norm = 1 - loss / loss.max()  # CDI experiments/mia.py for lower-is-member scores
        fpr, tpr, _ = roc_curve(y, norm)  # default drop_intermediate=True, as the reference calls it
        expected = tpr[(fpr < x).sum()]
        assert metrics.tpr_at_fpr(loss, y, x, convention="cdi", lower_is_member=True) == pytest.approx(expected)
        pos = s + 10  # higher-is-member: s / max, positive scores
        fpr, tpr, _ = roc_curve(y, pos / pos.max())
        assert metrics.tpr_at_fpr(pos, y, x, convention="cdi") == pytest.approx(tpr[(fpr < x).sum()])


def test_bad_inputs(rng):
    s, y = _scores(rng)
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc(np.r_[s[:-1], np.nan], y)
    with pytest.raises(ValueError, match="labels must be 0"):
        metrics.auc(s, y * 2)
    with pytest.raises(ValueError, match="need members and non-members"):
        metrics.auc(s, np.ones_like(y))
    with pytest.raises(ValueError, match="unknown TPR@FPR convention"):
        metrics.tpr_at_fpr(s, y, 0.01, convention="lira")
    with pytest.raises(ValueError, match="scores but"):
        metrics.auc(s, y[:-1])
