"""Scoring model: standardiser, batched Newton solver vs scikit-learn, cross-fitting invariants."""

import ast
import pathlib

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from jaxmia.inference import scoring


def _problem(rng, m=160, d=26, shift=0.6):
    y = (np.arange(m) < m // 2).astype(float)
    x = rng.normal(size=(m, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
    x[y == 1, :3] += shift
    return x, y


def test_inference_imports_no_jax():
    """The inference layer is NumPy/SciPy/scikit-learn only: no module of it imports JAX (even lazily)."""
    root = pathlib.Path(scoring.__file__).parent
    allowed_jaxmia = {"jaxmia", "jaxmia.table", "jaxmia.provenance"}  # provenance: NumPy-only JSON helpers
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("jax", "flax", "optax"), (path.name, name)
                if name.startswith("jaxmia"):  # only itself, the table format, JSON helpers and the package root
                    assert name.startswith("jaxmia.inference") or name in allowed_jaxmia, (path.name, name)


def test_standardiser_matches_sklearn_and_constant_columns(rng):
    x = rng.normal(size=(50, 5)) * [1, 2, 3, 4, 5] + 7
    x[:, 2] = 3.25  # constant column: scale 1, standardises to 0
    s = scoring.fit_standardiser(x)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(s.mean, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(s.scale, ref.scale_, rtol=1e-12)
    assert s.scale[2] == 1.0
    np.testing.assert_allclose(s.apply(x), ref.transform(x), atol=1e-12)
    np.testing.assert_allclose(s.scale[0], x[:, 0].std(ddof=0), rtol=1e-12)  # population std
    # Masked rows are ignored, batched over a leading axis.
    mask = np.arange(50) < 30
    sm = scoring.fit_standardiser(np.stack([x, x]), np.stack([mask, mask]))
    np.testing.assert_allclose(sm.mean[1], x[:30].mean(0), rtol=1e-12)


@pytest.mark.parametrize("penalize_intercept", [True, False])
def test_newton_matches_sklearn(rng, penalize_intercept):
    for trial in range(4):
        x, y = _problem(rng, m=120 + 40 * trial)
        z = scoring.fit_standardiser(x).apply(x)
        coef, intercept = scoring.fit_logistic_batched(z, y, penalize_intercept=penalize_intercept)
        if penalize_intercept:  # liblinear: intercept penalised as a feature of value 1
            ref = LogisticRegression(C=1.0, solver="liblinear", tol=1e-12, max_iter=100000).fit(z, y)
        else:
            ref = LogisticRegression(C=1.0, solver="lbfgs", tol=1e-12, max_iter=100000).fit(z, y)
        np.testing.assert_allclose(coef, ref.coef_[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(intercept, ref.intercept_[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(expit(z @ coef + intercept), ref.predict_proba(z)[:, 1], atol=1e-6)


def test_newton_batched_paths_agree(rng):
    """Many labellings per group (shared outer products), many groups, and masked padding rows."""
    x, y = _problem(rng, m=100, d=8)
    z = scoring.fit_standardiser(x).apply(x)
    labels = np.stack([y, rng.permutation(y), 1 - y])  # (B=3, m)
    coef, intercept = scoring.fit_logistic_batched(z, labels)
    for b in range(3):
        c1, i1 = scoring.fit_logistic_batched(z, labels[b])
        np.testing.assert_allclose(coef[b], c1, atol=1e-8)
        np.testing.assert_allclose(intercept[b], i1, atol=1e-8)
    # Two groups, one padded with 20 junk rows of zero weight: equal to fitting the unpadded rows.
    z2 = np.stack([z, np.concatenate([z[:80], rng.normal(size=(20, 8)) * 50])])
    y2 = np.stack([y, np.concatenate([y[:80], np.ones(20)])])
    mask = np.stack([np.ones(100), np.r_[np.ones(80), np.zeros(20)]])
    c2, i2 = scoring.fit_logistic_batched(z2, y2, mask=mask)
    c_ref, i_ref = scoring.fit_logistic_batched(z[:80], y[:80])
    np.testing.assert_allclose(c2[1, 0], c_ref, atol=1e-8)
    np.testing.assert_allclose(i2[1, 0], i_ref, atol=1e-8)
    np.testing.assert_allclose(c2[0, 0], scoring.fit_logistic_batched(z, y)[0], atol=1e-8)


def test_newton_nearly_separable_and_errors(rng):
    # Nearly separable (few rows, many features): Newton still reaches the sklearn optimum.
    x = rng.normal(size=(30, 26))
    y = (np.arange(30) % 2).astype(float)
    x[y == 1] += 1.5
    coef, intercept = scoring.fit_logistic_batched(x, y)
    ref = LogisticRegression(C=1.0, solver="liblinear", tol=1e-12, max_iter=100000).fit(x, y)
    np.testing.assert_allclose(coef, ref.coef_[0], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="do not match"):
        scoring.fit_logistic_batched(x, y[:-1])
    x_bad = x.copy()
    x_bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        scoring.fit_logistic_batched(x_bad, y)


def test_kfold_assignment_and_errors():
    for n in (5, 12, 103):
        fold = scoring.kfold_assignment(n)
        for k, (_, test) in enumerate(KFold(5, shuffle=True, random_state=0).split(np.arange(n))):
            np.testing.assert_array_equal(np.flatnonzero(fold == k), np.sort(test))
        sizes = np.bincount(fold, minlength=5)
        np.testing.assert_array_equal(sizes, [n // 5 + (k < n % 5) for k in range(5)])
    with pytest.raises(ValueError, match="too few samples for 5-fold cross-fitting: 4 per side"):
        scoring.kfold_assignment(4)


def test_crossfit_never_scores_a_row_with_a_model_that_saw_it(rng):
    n = 40
    xp, _ = _problem(rng, m=n, d=6)
    xu = rng.normal(size=(n, 6))
    sp, su = scoring.crossfit_scores(xp, xu)
    fold = scoring.kfold_assignment(n)
    i = 7
    xp2 = xp.copy()
    xp2[i] += 25.0  # a wild change of P row i
    sp2, su2 = scoring.crossfit_scores(xp2, xu)
    same_fold = fold == fold[i]
    others = same_fold.copy()
    others[i] = False
    # Rows scored by the model of i's fold never saw row i (nor its scaler): unchanged, including U row i.
    np.testing.assert_array_equal(sp2[others], sp[others])
    np.testing.assert_array_equal(su2[same_fold], su[same_fold])
    assert sp2[i] != sp[i]
    # Every other fold trained on row i: all of its scores move.
    assert np.all(sp2[~same_fold] != sp[~same_fold]) and np.all(su2[~same_fold] != su[~same_fold])


def test_crossfit_matches_a_plain_sklearn_loop(rng):
    """Scores equal an independent KFold + StandardScaler + LogisticRegression loop."""
    n = 60
    xp, _ = _problem(rng, m=n, d=10)
    xu = rng.normal(size=(n, 10))
    sp_newton, su_newton = scoring.crossfit_scores(xp, xu)
    sp_sk, su_sk = scoring.crossfit_scores(xp, xu, solver="sklearn")
    ref_p, ref_u = np.empty(n), np.empty(n)
    for train, test in KFold(5, shuffle=True, random_state=0).split(np.arange(n)):
        X = np.concatenate([xp[train], xu[train]])
        Y = np.r_[np.ones(len(train)), np.zeros(len(train))]
        sc = StandardScaler().fit(X)
        clf = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000, random_state=0).fit(sc.transform(X), Y)
        ref_p[test] = clf.predict_proba(sc.transform(xp[test]))[:, 1]
        ref_u[test] = clf.predict_proba(sc.transform(xu[test]))[:, 1]
    np.testing.assert_allclose(sp_sk, ref_p, atol=1e-12)  # the reference, exactly
    np.testing.assert_allclose(su_sk, ref_u, atol=1e-12)
    # Newton is the exact optimum; the reference stops at liblinear's tol=1e-4.
    np.testing.assert_allclose(sp_newton, ref_p, atol=2e-3)
    np.testing.assert_allclose(su_newton, ref_u, atol=2e-3)


def test_swapped_labels_equal_refitting_on_swapped_data(rng):
    n = 25
    xp = rng.normal(size=(n, 4)) + 0.3
    xu = rng.normal(size=(n, 4))
    swaps = np.stack([np.zeros(n, bool), rng.random(n) < 0.5, rng.random(n) < 0.5])
    sp, su = scoring.crossfit_scores_batched(xp[None], xu[None], swaps[None])
    for b, sw in enumerate(swaps):
        p_rows = np.where(sw[:, None], xu, xp)  # the rows labelled "member" under this pattern
        u_rows = np.where(sw[:, None], xp, xu)
        ref_p, ref_u = scoring.crossfit_scores(p_rows, u_rows)
        np.testing.assert_allclose(np.where(sw, ref_u, ref_p), sp[0, b], atol=1e-9)  # original P rows
        np.testing.assert_allclose(np.where(sw, ref_p, ref_u), su[0, b], atol=1e-9)


def test_affine_invariance(rng):
    n = 50
    xp, _ = _problem(rng, m=n, d=7)
    xu = rng.normal(size=(n, 7))
    a = rng.uniform(0.01, 100.0, size=7)
    b = rng.normal(size=7) * 1e3
    sp, su = scoring.crossfit_scores(xp, xu)
    sp2, su2 = scoring.crossfit_scores(a * xp + b, a * xu + b)
    np.testing.assert_allclose(sp2, sp, atol=1e-8)
    np.testing.assert_allclose(su2, su, atol=1e-8)


def test_fixed_split_matches_sklearn(rng):
    tp, tu = rng.normal(size=(80, 5)) + 0.5, rng.normal(size=(70, 5))
    ep, eu = rng.normal(size=(30, 5)) + 0.5, rng.normal(size=(40, 5))
    sp, su = scoring.fixed_split_scores(tp, tu, ep, eu, solver="sklearn")
    X = np.concatenate([tp, tu])
    sc = StandardScaler().fit(X)
    clf = LogisticRegression(C=1.0, solver="liblinear", max_iter=1000, random_state=0)
    clf.fit(sc.transform(X), np.r_[np.ones(80), np.zeros(70)])
    np.testing.assert_allclose(sp, clf.predict_proba(sc.transform(ep))[:, 1], atol=1e-12)
    np.testing.assert_allclose(su, clf.predict_proba(sc.transform(eu))[:, 1], atol=1e-12)
    sp_n, su_n = scoring.fixed_split_scores(tp, tu, ep, eu)
    np.testing.assert_allclose(sp_n, sp, atol=2e-3)
    with pytest.raises(ValueError, match="evaluation U features hold NaN"):
        scoring.fixed_split_scores(tp, tu, ep, np.full((3, 5), np.inf))


def test_resolve_features():
    from jaxmia.features import FeatureConfig, make_config
    from jaxmia.features.registry import plan_groups
    from jaxmia.table import FeatureTable

    groups = plan_groups(["cdi"], FeatureConfig())  # what `jaxmia features` writes into the table's meta
    cdi = tuple(groups["all"])
    assert len(cdi) == 26 and cdi[:4] == ("dl", "secmi", "pia", "pian") and cdi[-2:] == ("no_loss", "no_delta_norm")
    assert cdi[4] == "gm_t000" and cdi[13] == "gm_t900" and cdi[14] == "ml_t000" and cdi[23] == "ml_t900"
    assert scoring.resolve_features("all", cdi, groups) == cdi
    assert scoring.resolve_features("new", cdi, groups) == cdi[4:]
    assert scoring.resolve_features("mia+no", cdi, groups) == ("dl", "secmi", "pia", "pian", "no_loss", "no_delta_norm")
    assert scoring.resolve_features("dl,ml_t100", cdi, groups) == ("dl", "ml_t100")
    assert scoring.resolve_features("grad_mask", cdi, groups) == cdi[4:14]  # a signal's name selects its columns
    assert scoring.resolve_features(None, ("a", "b")) == ("a", "b")
    with pytest.raises(ValueError, match="unknown feature or group 'foo'"):
        scoring.resolve_features("mia,foo", cdi, groups)
    with pytest.raises(ValueError, match="lacks selected column"):
        scoring.resolve_features("gm", ("dl", "secmi"), groups)
    # Groups follow the configured timesteps (the registry's columns), and travel in the table.
    cfg = make_config("cdi", ml_timesteps=(0, 500), gm_timesteps=(250,))
    table = FeatureTable(["a"], plan_groups(["cdi"], cfg)["all"], np.zeros((1, 9)), {"groups": plan_groups(["cdi"], cfg)})
    groups = scoring.table_groups(table)
    assert groups["ml"] == ("ml_t000", "ml_t500") and groups["new"] == ("gm_t250", "ml_t000", "ml_t500", "no_loss",
                                                                         "no_delta_norm")
    assert scoring.table_groups(FeatureTable(["a"], ("x", "y"), np.zeros((1, 2)))) == {"all": ("x", "y")}
    with pytest.raises(ValueError, match="unknown feature or group 'mia'; groups: all"):
        scoring.resolve_features("mia", ("dl",), {"all": ("dl",)})
