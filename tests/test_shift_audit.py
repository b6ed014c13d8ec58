"""Shift checks end to end on jaxmia's own demo target (issue 16).

Innocent pairs whose P went through mild processing (blur, JPEG, a resize round trip) make the model
test alone say "trained"; the audit must not, and must name the shift. A guilty pair made the same
way as U still gets "TRAINED ON P" with the shift checks passing.
"""

import json

import jax
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from jaxmia.audit import load_config, run_audit
from jaxmia.cli import main
from jaxmia.data import load_dataset
from jaxmia.shift import apply_processing
from jaxmia.shift.processing import to_uint8

N = 64  # images per side
SENSITIVITY = ["blur:0.6", "jpeg:30", "resize:0.5"]


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


def _write(folder, ids, images, fmt="PNG", quality=None):
    folder.mkdir(parents=True)
    for i, img in zip(ids, to_uint8(images)):
        kwargs = {"quality": quality} if quality else {}
        Image.fromarray(img[..., 0]).save(folder / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}", format=fmt, **kwargs)
    return str(folder)


def _config(**audit):
    return load_config(None, {
        "audit": {"features": "loss,pia", "batch_size": 64, "null_splits": 20, "drc_images": 0,
                  "sensitivity": SENSITIVITY, "sensitivity_images": 16, **audit},
        "cdi": {"permutations": 199, "curve_reps": 20},
    })


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    nonmembers = load_dataset("demo:nonmembers").take(2 * N, seed=5)
    members = load_dataset("demo:members").take(N, seed=5)
    u_ids, p_ids = nonmembers.ids[:N], nonmembers.ids[N:]
    p_images = nonmembers.subset(p_ids).images
    return {
        "root": root,
        "U": _write(root / "U", u_ids, nonmembers.subset(u_ids).images),
        "blur": _write(root / "P_blur", p_ids, apply_processing("blur:0.6", p_images)),
        "jpeg": _write(root / "P_jpeg", p_ids, p_images, fmt="JPEG", quality=30),
        "resize": _write(root / "P_resize", p_ids, apply_processing("resize:0.5", p_images)),
        "guilty": _write(root / "P_members", members.ids, members.images),
    }


@pytest.fixture(scope="module")
def audits(sets):
    root = sets["root"]
    return {case: run_audit("demo", sets[case], sets["U"], root / f"audit_{case}", _config(), quiet=True,
                            features_dir=root / "features")
            for case in ("blur", "jpeg", "resize", "guilty")}


@pytest.mark.parametrize("case", ["blur", "jpeg", "resize"])
def test_shifted_innocent_pair_fools_the_model_test_but_not_the_audit(audits, case):
    report = audits[case]
    # The model-based test alone rejects: processing alone makes innocent images look like members.
    assert report["verdict"]["reject"] and report["verdict"]["p_value"] <= 0.01
    c = report["conclusion"]
    assert c["status"] == "inconclusive" and c["headline"] != "TRAINED ON P" and not c["shift_checks_passed"]
    blind = report["shift"]["blind"]["verdict"]
    assert blind["reject"] and blind["p_value"] <= 0.01
    assert "differ without the model" in report["summary"] and "TRAINED ON P" not in report["summary"]
    # The separating statistics are named, and agree with a direct comparison of the two sets.
    top = report["shift"]["blind"]["separating"][0]
    assert top["separates"] and abs(top["auc"] - 0.5) > 0.3
    assert top["description"] in report["summary"]


def test_each_shift_is_named(audits):
    blur, jpeg, resize = (audits[k] for k in ("blur", "jpeg", "resize"))
    assert blur["shift"]["closest_processing"][0]["processing"] == "blur:0.6"
    assert resize["shift"]["closest_processing"][0]["processing"] == "resize:0.5"
    assert "blur" in blur["summary"] and "resize" in resize["summary"]
    # JPEG files against PNG files: the file facts say so (format and estimated quality 30).
    mism = {m["fact"]: m for m in jpeg["shift"]["files"]["mismatches"]}
    assert mism["format"]["published"] == {"JPEG": 1.0} and mism["format"]["unpublished"] == {"PNG": 1.0}
    assert jpeg["shift"]["files"]["published"]["jpeg_quality_median"] == 30
    assert "JPEG" in jpeg["summary"]


def test_unshifted_guilty_pair_is_still_trained(audits):
    report = audits["guilty"]
    c = report["conclusion"]
    assert c["status"] == "trained" and c["headline"] == "TRAINED ON P" and c["shift_checks_passed"]
    assert report["verdict"]["reject"] and not report["shift"]["blind"]["verdict"]["reject"]
    assert report["shift"]["files"]["available"] and report["shift"]["files"]["mismatches"] == []
    html = (audits["guilty"]["outputs"]["html"])
    text = open(html).read()
    assert "TRAINED ON P" in text and "Could something other than training explain this?" in text
    # Processing sensitivity: the control half does not reject; blur and resize alone would, and the
    # blind test notices every processing it applied.
    sens = report["shift"]["sensitivity"]
    rows = {r["processing"]: r for r in sens["rows"]}
    assert set(rows) == {"none", *SENSITIVITY} and sens["n"] == 16
    assert not rows["none"]["reject"] and not rows["none"]["blind_reject"]
    assert all(rows[s]["blind_reject"] for s in SENSITIVITY) and sens["blind_misses"] == []
    saved = json.loads((report_path := (audits["guilty"]["outputs"]["html"].replace("report.html", "report.json"))) and
                       open(report_path).read())
    assert saved["conclusion"] == c and saved["shift"]["blind"]["verdict"]["p_value"] == report["shift"]["blind"]["verdict"]["p_value"]


def test_refuse_policy_stops_before_features(sets, tmp_path):
    with pytest.raises(ValueError, match="JPEG"):
        run_audit("demo", sets["jpeg"], sets["U"], tmp_path / "o", _config(file_mismatch="refuse"), quiet=True)
    assert not (tmp_path / "o" / "features").exists()


def test_cli_audit_does_not_say_trained(sets, audits, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[audit]\nfeatures = 'loss,pia'\nbatch_size = 64\nnull_splits = 20\ndrc_images = 0\n"
                   f"sensitivity = {json.dumps(SENSITIVITY)}\nsensitivity_images = 16\n"
                   "[cdi]\npermutations = 199\ncurve_reps = 20\n")
    out = tmp_path / "cli"
    # The same folder as the audit above, so the CLI reuses its cached features.
    result = CliRunner().invoke(main, ["audit", "demo", "-p", sets["blur"], "-u", sets["U"], "--out",
                                       str(sets["root"] / "audit_blur"), "--config", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "TRAINED ON P" not in result.output and "INCONCLUSIVE" in result.output
