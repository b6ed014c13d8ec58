"""run_cdi / evaluate_mia drivers, their input checks, and the `jaxmia cdi` / `jaxmia mia` commands."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from jaxmia.cli import main
from jaxmia.features import FeatureConfig
from jaxmia.features.registry import plan_groups
from jaxmia.inference import CdiConfig, config_from_dict, evaluate_mia, run_cdi
from jaxmia.inference import report as report_mod
from jaxmia.table import FeatureTable, save_table

GROUPS = plan_groups(["cdi"], FeatureConfig())  # the table meta `jaxmia features --features cdi` writes
CDI_FEATURES = tuple(GROUPS["all"])


def _tables(rng, n_p=60, n_u=60, shift=1.5, names=CDI_FEATURES):
    xp = rng.normal(size=(n_p, len(names)))
    xp[:, :2] += shift
    p = FeatureTable([f"p{i:03d}" for i in range(n_p)], names, xp, {"groups": GROUPS})
    u = FeatureTable([f"u{i:03d}" for i in range(n_u)], names, rng.normal(size=(n_u, len(names))), {"groups": GROUPS})
    return p, u


FAST = dict(permutations=99, curve_reps=20, curve_grid=(10, 40))


def test_run_cdi_default_hybrid(rng):
    p, u = _tables(rng)
    fast = {**FAST, "permutations": 199}
    r = run_cdi(p, u, CdiConfig(**fast))
    v = r["verdict"]
    assert v["method"] == "hybrid" and v["alternative"] == "greater" and v["permutations"] == 199
    # p = min(1, p_perm / 0.9, p_tail / 0.1): the permutation part is at its floor 1/200 here (a strong
    # shift); the tail part, on the 30 held-out pairs, is small but not below it.
    c = v["components"]
    assert c["p_permutation"] == pytest.approx(1 / 200) and c["p_tail"] < 0.01
    assert c["tail_pairs_tested"] == 30 and c["tail_pairs_train"] == 30
    assert v["p_value"] == pytest.approx(min(1.0, (1 / 200) / 0.9, c["p_tail"] / 0.1))
    assert v["log10_p"] == pytest.approx(np.log10(v["p_value"])) and v["reject"] and v["is_correct_order"]
    assert v["n_p"] == v["n_u"] == 60 and "evidence that P was used" in v["decision"]
    assert r["features"] == list(CDI_FEATURES) and not r["pairing"]["subsampled"]
    assert len(r["scores"]["published"]["ids"]) == 60 and r["curve"]["ns"] == [10, 40]
    assert r["config"]["test"] == "hybrid" and "numpy" in r["versions"]
    json.dumps(r)  # JSON-ready
    perm = run_cdi(p, u, CdiConfig(test="permutation", **fast))["verdict"]
    assert perm["method"] == "permutation" and perm["p_value"] == pytest.approx(c["p_permutation"])


def test_run_cdi_row_order_subsampling_and_features(rng):
    p, u = _tables(rng, n_u=75, shift=0.0)
    cfg = CdiConfig(test="cdi_reference", features="mia", curve=False)
    r = run_cdi(p, u, cfg)
    assert r["pairing"]["subsampled"] and r["pairing"]["n_pairs"] == 60 and "75" in r["pairing"]["note"]
    assert r["features"] == ["dl", "secmi", "pia", "pian"]
    assert r["verdict"]["alternative"] == "two-sided" and "not calibrated" in r["verdict"]["note"]
    # Rows are paired by sorted id: shuffling the files' row order changes nothing.
    perm_p, perm_u = rng.permutation(60), rng.permutation(75)
    p2 = FeatureTable(p.ids[perm_p], p.names, p.values[perm_p], p.meta)
    u2 = FeatureTable(u.ids[perm_u], u.names, u.values[perm_u], u.meta)
    assert run_cdi(p2, u2, cfg)["verdict"] == r["verdict"]
    one = run_cdi(p, u, CdiConfig(test="cdi_reference", alternative="one-sided", features="mia", curve=False))
    assert one["verdict"]["alternative"] == "greater"


def test_run_cdi_split_and_fixed_split(rng):
    p, u = _tables(rng, n_p=80, n_u=90)
    r = run_cdi(p, u, CdiConfig(test="split", curve=False))
    assert r["verdict"]["method"] == "split" and r["verdict"]["n_p"] == 40 and r["verdict"]["reject"]
    cfg = CdiConfig(protocol="fixed_split", test="split", train_ids_published=tuple(p.ids[:50]),
                    train_ids_unpublished=tuple(u.ids[:50]), curve_reps=20, curve_grid=(10, 30))
    r = run_cdi(p, u, cfg)
    assert r["pairing"]["n_test_published"] == 30 and r["pairing"]["n_test_unpublished"] == 40
    assert set(r["scores"]["published"]["ids"]) == set(p.ids[50:].tolist())
    assert r["verdict"]["reject"] and r["curve"]["ns"] == [10, 30]
    r_perm = run_cdi(p, u, CdiConfig(**{**cfg.__dict__, "test": "permutation", "permutations": 199, "curve": False}))
    assert r_perm["verdict"]["p_value"] == pytest.approx(1 / 200)
    bad = CdiConfig(protocol="fixed_split", train_ids_published=("nope",), train_ids_unpublished=tuple(u.ids[:5]))
    with pytest.raises(ValueError, match="published training id\\(s\\) not in the feature table: 'nope'"):
        run_cdi(p, u, bad)


def test_run_cdi_bad_inputs(rng):
    p, u = _tables(rng)
    u_other = FeatureTable(u.ids, tuple(CDI_FEATURES[:-1]) + ("extra",), u.values)
    with pytest.raises(ValueError, match="different columns .*only in published: \\['no_delta_norm'\\]"):
        run_cdi(p, u_other, CdiConfig(curve=False))
    with pytest.raises(ValueError, match="unpublished feature table lacks column\\(s\\) no_delta_norm|lacks selected column"):
        run_cdi(p, u_other, CdiConfig(features="no", curve=False))
    vals = p.values.copy()
    vals[4, 2] = np.nan
    with pytest.raises(ValueError, match="published feature table holds 1 NaN/inf value\\(s\\), e.g. column 'pia' of id 'p004'"):
        run_cdi(FeatureTable(p.ids, p.names, vals), u, CdiConfig(curve=False))
    tiny_p, tiny_u = _tables(rng, n_p=4, n_u=4)
    with pytest.raises(ValueError, match="too few samples for 5-fold cross-fitting: 4 per side"):
        run_cdi(tiny_p, tiny_u, CdiConfig(curve=False))
    with pytest.raises(ValueError, match="config test='t'"):
        CdiConfig(test="t")
    with pytest.raises(ValueError, match="unknown CDI config key\\(s\\) 'permutation' \\(did you mean 'permutations'"):
        config_from_dict({"permutation": 10})
    with pytest.raises(ValueError, match="unknown feature or group 'mla'"):
        run_cdi(p, u, CdiConfig(features="mla", curve=False))


def test_evaluate_mia_orientation_and_labels(rng, tmp_path):
    n = 200
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(int)
    loss = rng.normal(size=n) - 0.8 * y  # lower = member
    other = rng.normal(size=n) + 0.8 * y  # higher = member, unknown name
    values = np.c_[np.r_[loss, np.zeros(5)], np.r_[other, np.zeros(5)]]
    labels = {f"x{i}": int(y[i]) for i in range(n)}
    # a column name alone never implies a direction: it comes from the table's metadata or the caller
    bare = FeatureTable([f"x{i}" for i in range(n + 5)], ("dl", "custom"), values)
    with pytest.raises(ValueError, match="orientation of score column 'dl' is unknown"):
        evaluate_mia(bare, labels)
    table = FeatureTable(bare.ids, bare.names, values, {"lower_is_member": ["dl"]})
    with pytest.raises(ValueError, match="orientation of score column 'custom' is unknown"):
        evaluate_mia(table, labels)
    r = evaluate_mia(table, labels, higher_is_member=["custom"])
    assert r["unlabelled_rows_ignored"] == 5 and r["n_members"] == 100
    assert r["columns"]["dl"]["lower_is_member"] and r["columns"]["dl"]["auc"] > 0.65
    assert r["columns"]["custom"]["auc"] > 0.65
    with pytest.raises(ValueError, match="labelled id\\(s\\) not in the score table: 'zz'"):
        evaluate_mia(table, {**labels, "zz": 1}, higher_is_member=["custom"])
    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps({"a": 2}))
    with pytest.raises(ValueError, match="label of id 'a' is 2"):
        report_mod.load_labels(bad)


def test_cli_cdi_and_mia(rng, tmp_path):
    p, u = _tables(rng, n_p=40, n_u=40)
    save_table(p, tmp_path / "p.npz")
    save_table(u, tmp_path / "u.npz")
    runner = CliRunner()
    out = tmp_path / "cdi"
    res = runner.invoke(main, ["cdi", "--published", str(tmp_path / "p.npz"), "--unpublished", str(tmp_path / "u.npz"),
                               "--out", str(out), "--permutations", "99", "--curve-reps", "10", "--features", "all",
                               "--test", "permutation"])
    assert res.exit_code == 0, res.output
    assert "CDI (permutation, greater): p = 0.01" in res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["verdict"]["p_value"] == pytest.approx(0.01) and rep["verdict"]["reject"]
    assert rep["config"]["permutations"] == 99 and rep["curve"]["reps"] == 10
    for name in ("score_histogram.png", "pvalue_curve.png", "scores_published.npz", "scores_unpublished.npz"):
        assert (out / name).stat().st_size > 0
    # A bad input exits 2 with one line naming the culprit.
    res = runner.invoke(main, ["cdi", "--published", str(tmp_path / "p.npz"), "--unpublished", str(tmp_path / "nope.npz"),
                               "--out", str(out)])
    assert res.exit_code == 2 and "feature table not found" in res.output

    scores = FeatureTable(list(p.ids) + list(u.ids), ("dl", "cdi_score"),
                          np.c_[np.r_[-p.values[:, 0], -u.values[:, 0]], np.r_[p.values[:, 1], u.values[:, 1]]],
                          {"lower_is_member": ["dl"], "higher_is_member": ["cdi_score"]})
    save_table(scores, tmp_path / "scores.npz")
    (tmp_path / "labels.json").write_text(json.dumps({**{i: 1 for i in p.ids}, **{i: 0 for i in u.ids}}))
    mout = tmp_path / "mia"
    res = runner.invoke(main, ["mia", "--scores", str(tmp_path / "scores.npz"), "--labels", str(tmp_path / "labels.json"),
                               "--out", str(mout)])
    assert res.exit_code == 0, res.output
    rep = json.loads((mout / "report.json").read_text())
    assert rep["n_members"] == 40 and set(rep["columns"]) == {"dl", "cdi_score"}
    assert rep["columns"]["dl"]["auc"] > 0.6 and rep["columns"]["dl"]["tpr_at_fpr"]["0.01"]["n_neg"] == 40
    for name in ("roc_loglog.png", "roc_linear.png", "hist_dl.png", "hist_cdi_score.png"):
        assert (mout / name).stat().st_size > 0
