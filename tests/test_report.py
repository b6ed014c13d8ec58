"""The report stage: typed sections -> report.json / report.html, the DRC evidence panels, moved names."""

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from jaxmia.cdi import run_cdi
from jaxmia.drc import evidence as E
from jaxmia.inference import CdiConfig
from jaxmia.mia import evaluate_mia
from jaxmia.report import sections as S
from jaxmia.report import write_report
from jaxmia.table import FeatureTable


def _fake_drc_result(tmp_path, rng, side, shape, n_images=3):
    """What run_drc returns for ``n_images`` images of one side: a score table and evidence grids."""
    h, w, c = shape
    ids = [f"{side[0]}{k}" for k in range(n_images)]
    names = ("drc_psnr_center_r25", "drc_psnr_patches_r25", "drc_mse_center_r25")
    values = rng.uniform(5, 30, (n_images, 3))
    table = FeatureTable(np.asarray(ids), names, values, {})
    member_like, nonmember_like = ids[: (n_images + 1) // 2], ids[(n_images + 1) // 2:][::-1]
    paths = []
    for i in member_like + nonmember_like:
        image = rng.uniform(-1, 1, shape).astype(np.float32)
        masks = np.ones((2, h, w), np.float32)
        masks[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 0
        paths.append(str(E.evidence_grid(image, masks, np.stack([image, -image]), tmp_path / side / f"{i}.png",
                                         row_labels=["center_r25", "patches_r25"])))
    return {"scores": table, "member_like": member_like, "nonmember_like": nonmember_like, "evidence": paths,
            "summary": None}


def _report(tmp_path, rng, shape):
    p = FeatureTable(np.asarray([f"p{k}" for k in range(30)]), ("a", "b"), rng.normal(0.5, 1, (30, 2)), {})
    u = FeatureTable(np.asarray([f"u{k}" for k in range(30)]), ("a", "b"), rng.normal(0.0, 1, (30, 2)), {})
    cdi = run_cdi(p, u, CdiConfig(permutations=99, curve=False))
    both = FeatureTable(np.concatenate([p.ids, u.ids]), ("a",), np.concatenate([p.values, u.values])[:, :1],
                        {"higher_is_member": ["a"]})
    mia = evaluate_mia(both, {i: 1 for i in p.ids.tolist()} | {i: 0 for i in u.ids.tolist()})
    results = {side: _fake_drc_result(tmp_path, rng, side, shape) for side in S.SIDES}
    drc = S.DrcEvidence("psnr", S.drc_side(results["published"], "psnr"), S.drc_side(results["unpublished"], "psnr"),
                        restoration="repaint: RePaint <keyed>")
    v = cdi["verdict"]
    conclusion = S.Conclusion("no_evidence", "NO EVIDENCE", "summary text", [], [], v["p_value"], f"{v['p_value']:.3g}",
                              bool(v["reject"]), None)
    run = S.RunInfo(S.ModelInfo("m", "abc", shape), S.DataSide("P", 30), S.DataSide("U", 30), {"x": 1}, 0,
                    {"published": {"duplicates": 0}, "unpublished": {"duplicates": 0}, "policy_within_side": "drop"})
    report = S.AuditReport(run, S.FeatureSection(("a", "b"), cdi["pairing"]), S.CdiSection(cdi), S.MiaSection(mia),
                           None, drc, conclusion, S.Timings({"cdi": 0.123}, {}), {"jaxmia": "0"})
    return report, results


class _Panels(HTMLParser):
    """Collects the DRC section's figures (their data- attributes) and the images inside them."""

    def __init__(self):
        super().__init__()
        self.panels, self.in_drc, self.text = [], False, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "h2":
            self.in_drc = a.get("id") == "drc"
        if self.in_drc and tag == "figure" and "drc-panel" in a.get("class", ""):
            self.panels.append({"attrs": a, "img": None, "caption": ""})
        if self.in_drc and tag == "img" and self.panels:
            self.panels[-1]["img"] = a

    def handle_data(self, data):
        if self.in_drc and self.panels:
            self.panels[-1]["caption"] += data


@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 10, 3)])
def test_drc_section_shows_p_and_u_panels_with_scores_upscaled(tmp_path, rng, shape):
    h, w, c = shape
    report, results = _report(tmp_path, rng, shape)
    data = write_report(report, tmp_path / "out")
    parser = _Panels()
    parser.feed((tmp_path / "out" / "report.html").read_text())
    panels = parser.panels
    assert [p["attrs"]["data-side"] for p in panels] == ["published", "unpublished"] * 2
    assert [p["attrs"]["data-rank"] for p in panels] == ["member-like"] * 2 + ["non-member-like"] * 2
    scale = E.auto_scale(h, w)
    assert max(h, w) * scale >= 128
    for panel in panels:
        side, sid = panel["attrs"]["data-side"], panel["attrs"]["data-id"]
        r = results[side]
        table = r["scores"]
        row = table.ids.tolist().index(sid)
        psnr = table.values[row, :2]  # the score metric's columns only (not drc_mse_*)
        assert float(panel["attrs"]["data-score"]) == pytest.approx(psnr.mean(), rel=1e-12)
        assert f"{psnr.mean():.4g}" in panel["caption"] and sid in panel["caption"]
        # most member-like = first of member_like; most non-member-like = first of nonmember_like
        pick = r["member_like"][0] if panel["attrs"]["data-rank"] == "member-like" else r["nonmember_like"][0]
        assert sid == pick
        img = panel["img"]
        raw = base64.b64decode(img["src"].split("base64,", 1)[1])
        png = Image.open(io.BytesIO(raw))
        assert png.mode == ("L" if c == 1 else "RGB")
        expected = E.grid_size(h, w, 2, 4, scale=scale, caption=E.CAPTION)
        assert png.size == expected == (int(img["width"]), int(img["height"]))
        assert img["class"] == "native"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "image-rendering:pixelated" in html and "max-width:none" in html
    assert "Restoration: repaint: RePaint &lt;keyed&gt;." in html  # which restoration ran, escaped
    # report.json: the DRC block keeps its shape; the mean is over every image and task of the metric.
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved == json.loads(json.dumps(data))
    for side in S.SIDES:
        d = saved["drc"][side]
        assert set(d) == {"evidence", "summary", "mean_psnr"}
        assert d["mean_psnr"] == pytest.approx(results[side]["scores"].values[:, :2].mean(), rel=1e-12)
        assert d["evidence"] == results[side]["evidence"]
    assert saved["drc"]["metric"] == "psnr" and saved["timings_s"] == {"cdi": 0.12}
    assert saved["drc"]["restoration"] == "repaint: RePaint <keyed>"
    assert list(saved) == ["kind", "conclusion", "verdict", "summary", "shift", "samples_needed", "curve",
                           "null_calibration", "features", "pairing", "mia_context", "drc", "captions", "data_checks",
                           "published", "unpublished", "model", "config", "seed", "versions", "timings_s", "compile",
                           "outputs"]
    assert saved["mia_context"]["a"]["auc"] == report.mia.result["columns"]["a"]["auc"]
    assert "scores_oriented" not in saved["mia_context"]["a"]
    assert saved["model"]["sample_shape"] == list(shape)
    assert (tmp_path / "out" / "cdi" / "score_histogram.png").is_file() and saved["outputs"]["mia"]["roc_loglog"]


def test_drc_side_refuses_mismatched_evidence(tmp_path, rng):
    r = _fake_drc_result(tmp_path, rng, "published", (8, 8, 1))
    with pytest.raises(ValueError, match="3 evidence images for 2"):
        S.drc_side({**r, "nonmember_like": []}, "psnr")


def test_old_driver_names_resolve_and_inference_keeps_statistics():
    import jaxmia.cdi
    import jaxmia.fileio
    import jaxmia.inference
    import jaxmia.mia
    import jaxmia.report.outputs
    from jaxmia.inference import report as old

    assert old.run_cdi is jaxmia.inference.run_cdi is jaxmia.cdi.run_cdi
    assert old.evaluate_mia is jaxmia.mia.evaluate_mia and old.mia_from_files is jaxmia.mia.mia_from_files
    assert old.write_cdi_report is jaxmia.report.outputs.write_cdi_report and old.load_labels is jaxmia.fileio.load_labels
    assert jaxmia.cdi.CdiConfig is old.CdiConfig
    with pytest.raises(AttributeError, match="no_such"):
        old.no_such  # noqa: B018
    code = ("import sys, jaxmia.inference, jaxmia.data.cifar10, jaxmia.report; "
            "print(sorted(m for m in ('jaxmia.cdi', 'jaxmia.mia', 'jax') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert "jaxmia.cdi" not in loaded and "jaxmia.mia" not in loaded, loaded  # jaxmia.data may import jax
