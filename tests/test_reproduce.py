"""scripts/reproduce.py: the statistics and the document on synthetic feature tables (fast), and the
whole ``--quick`` study end to end (slow: it trains a target and compiles the feature and DRC programs).
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxmia.features import FeatureConfig, cdi_columns
from jaxmia.table import FeatureTable

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


@pytest.fixture(scope="module")
def reproduce():
    sys.path.insert(0, str(SCRIPTS))  # reproduce imports train_target from its own folder
    spec = importlib.util.spec_from_file_location("reproduce_script", SCRIPTS / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    sys.path.remove(str(SCRIPTS))


COLUMNS = cdi_columns(FeatureConfig())  # the registry's CDI vector: dl, secmi, pia, pian, gm_t..., ml_t..., no_...


def synthetic_target(name: str, n_members: int, n_nonmembers: int, shift: float, seed: int):
    """CDI-shaped features: members score lower on dl/pia and on the ML columns; DRC z higher."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_members + n_nonmembers, len(COLUMNS)))
    member = np.arange(len(x)) < n_members
    for k, col in enumerate(COLUMNS):
        if col in ("dl", "pia") or col.startswith("ml_t0"):
            x[member, k] -= shift
    ids = [f"{name}-{i:04d}" for i in range(len(x))]
    labels = {i: int(m) for i, m in zip(ids, member)}
    drc_rows = np.r_[np.arange(8), n_members + np.arange(12)]
    drc = {"ids": [ids[i] for i in drc_rows], "mean_z": rng.normal(size=drc_rows.size) + shift * member[drc_rows],
           "labels": [int(member[i]) for i in drc_rows], "n_calibration": 6, "tasks": ["center_r25"]}
    return FeatureTable(np.asarray(ids), COLUMNS, x), labels, drc


def target_info(name, members, passes):
    return {"name": name, "about": "synthetic", "folder": name, "bundled": name == "demo", "members": members,
            "steps": 10, "batch_size": 4, "lr": 1e-3, "seed": 0, "passes": passes, "train_seconds": 1.0,
            "trained_now": False, "final_loss": 0.5, "weights_sha256": "0" * 64, "command": f"train {name}"}


def test_statistics_and_document_on_synthetic_tables(reproduce, tmp_path):
    size = dataclasses.replace(
        reproduce.SIZES["tiny"], curve_reps=15, perm_grid=(5, 10, 20), perm_reps=3, perm_permutations=19,
        null_trials=30, null_n=10, contamination_n=10, contamination_reps=3, contamination_permutations=19)
    inputs = {}
    for name, n_m, shift in (("demo", 30, 1.0), ("few", 20, 2.0)):
        table, labels, drc = synthetic_target(name, n_m, 40, shift, seed=len(name))
        inputs[name] = reproduce.TargetData(table, labels, drc)
    stats = reproduce.jsonable(reproduce.study_statistics(inputs, size, jobs=1))

    demo = stats["demo"]
    main = demo["mia"]["main"]["columns"]
    assert set(main) == {"dl", "secmi", "pia", "pian", "cdi_score"}
    assert main["dl"]["auc"] > 0.7 and main["cdi_score"]["auc"] > 0.7  # members are shifted on dl
    assert demo["mia"]["main"]["n_members"] == 30 and demo["mia"]["main"]["n_nonmembers"] == 40
    assert demo["mia"]["drc"]["columns"]["drc"]["n_pos"] == 8
    assert set(demo["mia"]["on_drc_images"]) == set(main)
    assert set(demo["curves_split"]) == {"all", "mia", "new", "gm", "ml", "no", "dl", "secmi", "pia", "pian"}
    assert demo["best_single"] in ("dl", "pia")
    assert set(demo["curves_permutation"]) == {"all", demo["best_single"]}
    assert demo["curves_permutation"]["all"]["ns"] == [5, 10, 20]
    assert "curves_permutation" not in stats["few"]  # the headline runs on the bundled target only
    for test in ("permutation", "cdi_reference"):
        null = demo["null"][test]
        assert null["trials"] == 30 and null["n"] == 10
        lo, hi = null["fpr_ci95"]
        assert 0 <= lo <= null["fpr"] <= hi <= 1
    assert {c["ratio"] for c in demo["contamination"]} >= {0.0, 0.5, 1.0}

    # The statistics do not depend on the number of processes (every task seeds itself).
    again = reproduce.jsonable(reproduce.study_statistics({"few": inputs["few"]}, size, jobs=2))
    assert again["few"]["null"] == stats["few"]["null"]
    assert again["few"]["curves_split"]["all"]["mean_p"] == stats["few"]["curves_split"]["all"]["mean_p"]

    doc = tmp_path / "docs" / "results.md"
    targets = [target_info("few", 20, 8.0), target_info("demo", 30, 2.0)]
    figures = reproduce.make_figures(stats, targets, doc.parent / "results", size)
    header = {"command": "python scripts/reproduce.py", "date": "today", "machine": "test", "commit": "abc",
              "load_start": "0", "load_end": "0", "work": "runs", "jobs": 1, "stage_notes": {}, "total_wall_s": 60.0,
              "stages": {"train demo": {"wall_s": 0.1, "cpu_s": 0.1}, "features few": {"wall_s": 1.0, "cpu_s": 1.0},
                         "statistics": {"wall_s": 1.0, "cpu_s": 1.0}},
              "record": {"features few": {"wall_s": 100.0, "cpu_s": 150.0, "load": "0 → 0", "date": "before"},
                         "statistics": {"wall_s": 20.0, "cpu_s": 30.0, "load": "0 → 0", "date": "today"}}}
    text = reproduce.write_markdown(doc, stats, targets, header, size, figures)
    assert doc.read_text() == text.rstrip() + "\n"
    for heading in ("## Checks", "## 1. Targets", "## 2. Single-image", "## 3. CDI", "## 4. Contamination",
                    "## 5. Null calibration"):
        assert heading in text
    assert "null false-positive rate ≤ 2% at α = 0.01?" in text
    assert "fewer samples per side than the best single-image attack needs for a comparable claim?" in text
    assert "CDI's own test on the single best statistic" in text
    assert "0.885" in text and "70" in text  # published anchors quoted next to the figures
    assert "**120** (2.0 min)" in text  # the from-scratch total sums the recorded stage times
    for path in figures.values():
        assert Path(path).is_file() and Path(path).stat().st_size > 1000
        assert f"](results/{Path(path).name})" in text  # relative links from the document
    assert "nan" not in text.lower().replace("nanoseconds", "")


def test_claim_samples_closed_form(reproduce):
    # A perfect attack flags every member: p = fpr^n, so n = 2 at fpr = 5% and n = 3 at fpr = 20%.
    assert reproduce.claim_samples(1.0, 0.05) == 2
    assert reproduce.claim_samples(1.0, 0.2) == 3
    assert reproduce.claim_samples(0.01, 0.01) is None  # no better than its false-positive rate
    # Mean p over k ~ Bin(n, tpr) of P(Bin(n, fpr) >= k), re-derived term by term at the returned n and n - 1.
    from math import comb

    def mean_p(n, tpr, fpr):
        sf = lambda k: sum(comb(n, j) * fpr**j * (1 - fpr) ** (n - j) for j in range(k, n + 1))  # noqa: E731
        return sum(comb(n, k) * tpr**k * (1 - tpr) ** (n - k) * sf(k) for k in range(n + 1))

    n = reproduce.claim_samples(0.2, 0.01)
    assert mean_p(n, 0.2, 0.01) <= 0.01 < mean_p(n - 1, 0.2, 0.01)


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    """``reproduce.py --quick`` from a clean work folder: trains its tiny target, writes the document."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu", XLA_FLAGS="")
    doc = tmp_path / "results.md"
    cmd = [sys.executable, str(SCRIPTS / "reproduce.py"), "--quick", "--work", str(tmp_path / "work"),
           "--doc", str(doc), "--jobs", "1", "--no-progress"]
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, timeout=1800)
    text = doc.read_text()
    assert "## Checks" in text and "`tiny`" in text and "`demo`" in text
    assert (tmp_path / "work" / "targets" / "tiny" / "recipe.json").is_file()
    assert len(list((tmp_path / "results").glob("*.png"))) >= 6
    # Rerunning reuses every cached stage and writes the same numbers.
    first = (tmp_path / "work" / "tiny" / "stats.json").read_text()
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, timeout=600)
    assert (tmp_path / "work" / "tiny" / "stats.json").read_text() == first
