"""A new attack is one module and one registration (issue 17): the toy signal defined and registered in this
file, with its own config section, runs through ``jaxmia features``, ``jaxmia mia``, ``jaxmia audit`` and the
report with no other edit, and every number it produces is re-derived here."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from jaxmia.cli import main
from jaxmia.data import digits, load_dataset, write_npz
from jaxmia.features.config import SECTION_TYPES
from jaxmia.features.registry import FEATURES, Cost, register_feature
from jaxmia.models import build_model, init_params, load_denoiser, save_unet
from jaxmia.table import load_table

TINY = {
    "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None,
}


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """The toy signal's own config section (``--set toy.t=50``, ``[features.toy]``)."""

    t: int = 100
    scale: float = 1.0


@register_feature(
    "toy",
    columns=lambda cfg: ("toy", "toy_eps"),
    direction="higher",
    work=lambda cfg, requested: {"toy_eps": Cost(forward=1)},
    section=ToyConfig,
    groups=("mia",),
    timesteps=lambda cfg: (cfg.section("toy").t,),
)
def toy_kernel(denoiser, x0, cond, key, cfg, shared):
    """Toy: scale x the mean pixel value, and ||eps_theta(x0, t)||_2 at the section's t."""
    section = cfg.section("toy")
    return {"toy": section.scale * jnp.mean(x0),
            "toy_eps": jnp.linalg.norm(denoiser.eps(x0, section.t, cond).ravel())}


@pytest.fixture(autouse=True, scope="module")
def _fast_compile_and_unregister():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)
    FEATURES.pop("toy", None)  # leave the registry as the other test modules know it
    SECTION_TYPES.pop("toy", None)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_target")
    spec = build_model(TINY)
    save_unet(root / "unet", TINY, init_params(spec.module, 0))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}))
    ids, images, _ = digits(8)
    write_npz(root / "p.npz", ids[:20], images[:20])
    write_npz(root / "u.npz", ids[20:40], images[20:40])
    write_npz(root / "all.npz", ids[:40], images[:40])
    return root


def _cli(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _expected(target, path, t, scale):
    """NumPy re-derivation of both toy columns (the network called directly, outside the registry)."""
    den = load_denoiser(str(target))
    data = load_dataset(str(path), image_shape=den.input_shape)
    x = np.asarray(data.images, np.float64)
    eps = np.asarray(jax.jit(jax.vmap(lambda x0: den.eps(x0, t, None)))(jnp.asarray(data.images)), np.float64)
    return data.ids, scale * x.mean(axis=(1, 2, 3)), np.sqrt((eps.reshape(len(x), -1) ** 2).sum(axis=1))


def test_toy_signal_through_features_mia_audit_and_report(target, tmp_path):
    # jaxmia signals lists it, from its registration
    listing = _cli(["signals"])
    assert "toy: Toy: scale x the mean pixel value" in listing and "reads toy.*" in listing

    # jaxmia features: its columns, section, directions, groups and cost land in the table
    table_path = tmp_path / "all.npz"
    out = _cli(["features", target, target / "all.npz", "--features", "loss,toy", "--set", "toy.t=50",
                "--set", "toy.scale=2", "--set", "dl_n_draws=1", "--out", table_path, "--batch-size", "8"])
    assert "40 images x 3 columns" in out and "2 forward" in out  # dl 1 + toy 1
    table = load_table(table_path)
    ids, toy, toy_eps = _expected(target, target / "all.npz", 50, 2.0)
    assert list(table.names) == ["dl", "toy", "toy_eps"] and table.ids.tolist() == list(ids)
    np.testing.assert_allclose(table.column("toy"), toy, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(table.column("toy_eps"), toy_eps, rtol=1e-5)
    meta = table.meta
    assert meta["config"]["toy"] == {"t": 50, "scale": 2.0}
    assert meta["higher_is_member"] == ["toy", "toy_eps"] and meta["lower_is_member"] == ["dl"]
    assert meta["groups"]["mia"] == ["dl", "toy", "toy_eps"] and meta["groups"]["toy"] == ["toy", "toy_eps"]
    assert meta["signals"]["toy"]["config"] == {"toy": {"t": 50, "scale": 2.0}}
    assert meta["signals"]["toy"]["cost"] == {"forward": 1, "backward": 0, "exact": True}

    # jaxmia mia: the direction comes from the registration; AUC = Mann-Whitney U / (n_pos n_neg)
    labels = {i: int(k < 20) for k, i in enumerate(ids)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    _cli(["mia", "--scores", table_path, "--labels", tmp_path / "labels.json", "--out", tmp_path / "mia"])
    mia = json.loads((tmp_path / "mia" / "report.json").read_text())
    member = np.array([labels[i] for i in ids], bool)
    u_stat = stats.mannwhitneyu(toy[member], toy[~member]).statistic
    assert mia["columns"]["toy"]["lower_is_member"] is False
    assert mia["columns"]["toy"]["auc"] == pytest.approx(u_stat / (20 * 20), abs=1e-12)

    # jaxmia audit: the scoring model uses its columns; its section is set under [features]; the MIA
    # context (the registry's "mia" group) and the report show it
    audit = tmp_path / "audit"
    _cli(["audit", target, "-p", target / "p.npz", "-u", target / "u.npz", "--out", audit, "--features", "loss,toy",
          "--set", "features.toy.t=50", "--set", "features.toy.scale=2", "--set", "features.dl_n_draws=1",
          "--set", "cdi.permutations=99", "--set", "cdi.curve_reps=10", "--set", "audit.null_splits=0",
          "--set", "audit.drc_images=0", "--set", "audit.shift_checks=false", "--batch-size", "8", "--quiet"])
    report = json.loads((audit / "report.json").read_text())
    assert report["features"] == ["dl", "toy", "toy_eps"]
    assert report["config"]["features"]["toy"] == {"t": 50, "scale": 2.0}
    assert set(report["mia_context"]) == {"dl", "toy", "toy_eps"}
    p_ids, p_toy, _ = _expected(target, target / "p.npz", 50, 2.0)
    _, u_toy, _ = _expected(target, target / "u.npz", 50, 2.0)
    auc = stats.mannwhitneyu(p_toy, u_toy).statistic / (len(p_toy) * len(u_toy))
    assert report["mia_context"]["toy"]["auc"] == pytest.approx(auc, abs=1e-12)
    html = (audit / "report.html").read_text()
    assert "toy_eps" in html and "toy" in html


def test_section_errors_name_the_culprit():
    from jaxmia.features import make_config, parse_overrides

    with pytest.raises(ValueError, match="unknown toy config key\\(s\\) 'toy.tt' \\(did you mean 'toy.t'\\?\\); known: scale, t"):
        parse_overrides(["toy.tt=3"])
    with pytest.raises(ValueError, match="config override: unknown toy config key\\(s\\) 'toy.w'; known: scale, t"):
        make_config("cdi", toy={"w": 1})
    with pytest.raises(ValueError, match="unknown feature config key\\(s\\) 'toyy' \\(did you mean 'toy'\\?\\)"):
        parse_overrides(["toyy.t=3"])
    cfg = make_config("cdi", toy={"t": 700})
    assert cfg.section("toy") == ToyConfig(t=700) and cfg.max_timestep(["toy"]) == 700
    assert cfg.max_timestep(["loss", "pia"]) == 200 and make_config("cdi").section("toy") == ToyConfig()
    # A section is written only when set, so configs without one keep their old JSON form and digest.
    assert "toy" not in make_config("cdi").to_dict() and cfg.to_dict()["toy"] == {"t": 700, "scale": 1.0}
