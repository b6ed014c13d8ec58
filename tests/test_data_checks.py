"""Inputs that silently mislead: the same picture in P and U under other names, duplicates within a side,
and a signal's direction coming from its registration (a higher-is-member signal scored the right way)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import jaxmia.features.registry as registry
from jaxmia.audit import load_config, run_audit
from jaxmia.cli import main
from jaxmia.data import Dataset, digits, write_npz
from jaxmia.data.duplicates import check_published_unpublished, content_digests
from jaxmia.features.loss import error_grid
from jaxmia.features.registry import Cost, register_feature
from jaxmia.inference import metrics
from jaxmia.models import build_model, init_params, save_unet
from jaxmia.table import load_table

TINY = {
    "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None,
}


def _png(path, image):
    Image.fromarray(np.round((image[..., 0] + 1) * 127.5).astype(np.uint8), mode="L").save(path)


def test_content_digests_see_pixels_not_names():
    _, images, _ = digits(8)
    a = Dataset(["a", "b", "c"], images[:3], source="A")
    b = Dataset(["x", "y"], np.stack([images[3], images[1]]), source="B")
    assert content_digests(a)[1] == content_digests(b)[1] and content_digests(a)[0] != content_digests(b)[0]
    with pytest.raises(ValueError, match=r"share 1 image\(s\) with identical pixels: P 'b' = U 'y'"):
        check_published_unpublished(a, b)
    dup = Dataset(["a", "b", "a2", "c"], np.stack([images[0], images[1], images[0], images[2]]), source="A")
    p, u, record = check_published_unpublished(dup, Dataset(["z"], images[3:4], source="B"))
    assert p.ids == ["a", "b", "c"] and record["published"] == {"duplicate_groups": [["a", "a2"]], "duplicates": 1,
                                                                "dropped": ["a2"]}
    assert record["unpublished"]["duplicates"] == 0
    p, _, record = check_published_unpublished(dup, Dataset(["z"], images[3:4]), within="keep")
    assert p.ids == dup.ids and record["published"]["duplicates"] == 1
    with pytest.raises(ValueError, match="1 duplicate image.*'a' = 'a2'"):
        check_published_unpublished(dup, Dataset(["z"], images[3:4]), within="refuse")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("target")
    save_unet(root / "unet", TINY, init_params(build_model(TINY).module, 0))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}))
    return root


def test_renamed_copy_across_p_and_u_is_refused_by_the_cli(target, tmp_path):
    _, images, _ = digits(8)
    for side, rows in (("P", range(0, 6)), ("U", range(6, 12))):
        (tmp_path / side / "sub").mkdir(parents=True)
        for i in rows:
            _png(tmp_path / side / f"img{i}.png", images[i])
    _png(tmp_path / "U" / "sub" / "renamed.png", images[2])  # P's img2.png, under another name and folder
    result = CliRunner().invoke(main, ["audit", str(target), "-p", str(tmp_path / "P"), "-u", str(tmp_path / "U"),
                                       "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "identical pixels" in line
    assert "img2.png" in line and "renamed.png" in line


# A toy signal, registered in this test only: the denoising error, negated, so HIGHER = member.
@pytest.fixture
def neg_loss():
    @register_feature("neg_loss_test", columns=lambda cfg: ("neg_dl",), direction="higher",
                      work=lambda cfg, requested: {"neg_dl": Cost(forward=1)})
    def neg_loss_kernel(denoiser, x0, cond, key, cfg, shared):
        errs = error_grid(denoiser, x0, cond, key.purpose_key("dl"), (100,), 1, norm="l2")
        return {"neg_dl": -jnp.mean(errs)}

    yield "neg_loss_test"
    registry.FEATURES.pop("neg_loss_test")


def test_higher_is_member_signal_is_oriented_by_its_registration(target, tmp_path, neg_loss):
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        ids, images, _ = digits(8)
        # P carries a duplicate of its first image under another id: dropped and recorded
        write_npz(tmp_path / "p.npz", ids[:20] + ["dup-of-first"], np.concatenate([images[:20], images[:1]]))
        write_npz(tmp_path / "u.npz", ids[20:40], images[20:40])
        cfg = load_config(None, {
            "audit": {"features": f"{neg_loss},loss", "batch_size": 8, "null_splits": 0, "drc_images": 0,
                      "mia_attacks": ["neg_dl", "dl"]},
            "cdi": {"permutations": 99, "curve_reps": 5}})
        report = run_audit(target, tmp_path / "p.npz", tmp_path / "u.npz", tmp_path / "out", cfg, quiet=True)
    finally:
        jax.config.update("jax_disable_most_optimizations", False)
    assert report["data_checks"]["duplicates"]["published"]["dropped"] == ["dup-of-first"]
    assert report["published"]["n"] == 20
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["data_checks"] == report["data_checks"]
    tables = sorted((tmp_path / "out" / "features").glob("features-*.npz"))
    p_table, u_table = (load_table(t) for t in tables)
    assert p_table.meta["higher_is_member"] == ["neg_dl"] and p_table.meta["lower_is_member"] == ["dl"]
    if len(set(p_table.ids) & set(ids[:20])) < 20:
        p_table, u_table = u_table, p_table
    y = np.r_[np.ones(20), np.zeros(20)]
    for col, sign in (("neg_dl", 1.0), ("dl", -1.0)):  # P (label 1) oriented higher = member
        scores = sign * np.r_[p_table.column(col), u_table.column(col)]
        want = metrics.auc(scores, y)
        assert report["mia_context"][col]["auc"] == pytest.approx(want)
        assert report["mia_context"][col]["lower_is_member"] == (sign < 0)
    # `jaxmia mia` on the same table needs no orientation flags: the table carries them
    labels = {i: 1 for i in p_table.ids.tolist()} | {i: 0 for i in u_table.ids.tolist()}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    from jaxmia.table import FeatureTable, save_table

    both = FeatureTable(np.r_[p_table.ids, u_table.ids], p_table.names, np.r_[p_table.values, u_table.values],
                        {k: p_table.meta[k] for k in ("lower_is_member", "higher_is_member")})
    save_table(both, tmp_path / "scores.npz")
    result = CliRunner().invoke(main, ["mia", "--scores", str(tmp_path / "scores.npz"), "--labels",
                                       str(tmp_path / "labels.json"), "--out", str(tmp_path / "mia")])
    assert result.exit_code == 0, result.output
    mia = json.loads((tmp_path / "mia" / "report.json").read_text())
    assert mia["columns"]["neg_dl"]["auc"] == pytest.approx(report["mia_context"]["neg_dl"]["auc"])
    assert not mia["columns"]["neg_dl"]["lower_is_member"] and mia["columns"]["dl"]["lower_is_member"]


def test_a_registration_must_state_every_direction():
    with pytest.raises(ValueError, match="direction='sideways'"):
        register_feature("bad_dir", columns=lambda cfg: ("x",), work=lambda cfg, r: {}, direction="sideways")
    with pytest.raises(TypeError):
        register_feature("no_dir", columns=lambda cfg: ("x",), work=lambda cfg, r: {})
