"""The audit end to end on a tiny model, its config system, and the CLI's refusals."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from jaxmia.audit import load_config, parse_set, run_audit
from jaxmia.audit.demo import DEMO_CONFIG
from jaxmia.cli import main
from jaxmia.data import digits, write_npz
from jaxmia.models import build_model, init_params, save_unet

TINY = {
    "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None,
}


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    root = tmp_path_factory.mktemp("target")
    spec = build_model(TINY)
    save_unet(root / "unet", TINY, init_params(spec.module, 0))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}))
    ids, images, _ = digits(8)
    write_npz(root / "p.npz", ids[:24], images[:24])
    write_npz(root / "u.npz", ids[24:48], images[24:48])
    return root


def _small_config(**extra):
    sections = {
        "audit": {"features": "loss,pia", "batch_size": 8, "null_splits": 20, "drc_images": 1},
        "cdi": {"permutations": 99, "curve_reps": 20},
        "drc": {"kinds": ["center"], "ratios": [0.25], "steps": 2},
    }
    for k, v in extra.items():
        sections.setdefault(k, {}).update(v)
    return load_config(None, sections)


def test_audit_writes_report_and_resumes(tiny_target, tmp_path):
    out = tmp_path / "audit"
    cfg = _small_config()
    report = run_audit(str(tiny_target), str(tiny_target / "p.npz"), str(tiny_target / "u.npz"), out, cfg, quiet=True)
    saved = json.loads((out / "report.json").read_text())
    v = saved["verdict"]
    assert 0 < v["p_value"] <= 1 and v["n_p"] == 24 and v["method"] == "hybrid"
    # The hybrid's permutation part is (1 + #{T_perm >= T_obs}) / (1 + B): a multiple of 1/100 here;
    # the reported p is min(1, p_perm / 0.9, p_tail / 0.1).
    c = v["components"]
    assert abs(c["p_permutation"] * 100 - round(c["p_permutation"] * 100)) < 1e-9
    assert v["p_value"] == pytest.approx(min(1.0, c["p_permutation"] / 0.9, c["p_tail"] / 0.1))
    assert saved["conclusion"]["status"] in ("trained", "no_evidence", "inconclusive") and "blind" in saved["shift"]
    assert saved["config"]["cdi"]["permutations"] == 99 and saved["model"]["digest"]
    assert saved["null_calibration"]["trials"] == 20 and set(saved["mia_context"]) == {"dl", "pia"}
    assert json.loads((out / "config.json").read_text()) == saved["config"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "src=\"/" not in html and "file:" not in html
    # A rerun reuses the cached features and reproduces the verdict exactly.
    again = run_audit(str(tiny_target), str(tiny_target / "p.npz"), str(tiny_target / "u.npz"), out, cfg, quiet=True)
    assert again["verdict"] == report["verdict"]
    # A different config in the same folder is refused, naming the field.
    with pytest.raises(ValueError, match="cdi.permutations"):
        run_audit(str(tiny_target), str(tiny_target / "p.npz"), str(tiny_target / "u.npz"), out,
                  _small_config(cdi={"permutations": 199}), quiet=True)


def test_config_is_locked_and_typed(tmp_path):
    cfg = load_config(None, parse_set(["cdi.permutations=200", "audit.n=50", "features.preset=cdi_reference",
                                       "drc.ratios=0.2,0.3"]))
    assert (cfg.cdi.permutations, cfg.audit.n, cfg.features.no_mode, cfg.drc.ratios) == (200, 50, "reference", (0.2, 0.3))
    with pytest.raises(ValueError, match="cdi.permutatons"):
        load_config(None, {"cdi": {"permutatons": "3"}})
    with pytest.raises(ValueError, match="'audt'"):
        load_config(None, {"audt": {}})
    with pytest.raises(ValueError, match="audit.n"):
        load_config(None, parse_set(["audit.n=many"]))
    path = tmp_path / "c.toml"
    path.write_text("[audit]\nn = 30\n[cdi]\ntest = 'split'\n")
    assert load_config(path).audit.n == 30 and load_config(path).cdi.test == "split"
    path.write_text("[audit]\nnn = 30\n")
    with pytest.raises(ValueError, match="audit.nn"):
        load_config(path)


def test_demo_config_ships_inside_the_package():
    import jaxmia

    assert DEMO_CONFIG.is_file() and Path(jaxmia.__file__).parent in DEMO_CONFIG.parents


def _cli(args):
    result = CliRunner().invoke(main, args)
    lines = [line for line in result.output.strip().splitlines() if line]
    return result.exit_code, lines


def test_cli_bad_inputs_get_one_line_naming_the_culprit(tiny_target, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(corrupt / "fine.png")
    (corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((12, 8), np.uint8)).save(mixed / "tall.png")
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps(TINY))
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[cdi]\npermutatons = 3\n")
    model, u = str(tiny_target), str(tiny_target / "u.npz")
    cases = [
        ([model, "-p", str(empty), "-u", u], "empty"),
        ([model, "-p", str(corrupt), "-u", u], "broken.png"),
        ([model, "-p", str(mixed), "-u", u], "tall.png"),
        ([str(no_weights), "-p", u, "-u", u], "noweights"),
        ([model, "-p", u, "-u", u, "--config", str(bad_cfg)], "permutatons"),
    ]
    for args, culprit in cases:
        code, lines = _cli(["audit", *args, "--out", str(tmp_path / "o"), "--quiet"])
        assert code != 0, args
        assert len(lines) == 1 and lines[0].startswith("jaxmia: error:") and culprit in lines[0], lines
