"""``--format dit``: the official DiT checkpoint → folder → load_denoiser, against the official
PyTorch goldens (``shared/fixtures/official/dit``), other sizes against a NumPy oracle, key
reporting, the family, the audit end to end, and the real-size parameter count."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from official_oracle import OFFICIAL, dit_forward, dit_shapes, random_state_dict

from jaxmia.models import condition_spec, load_denoiser
from jaxmia.models.attention import sinusoid_2d
from jaxmia.models.dit_official import DiTOfficialConfig, abstract_params, forward_with_cfg
from jaxmia.models.official import convert_official
from jaxmia.models.official import dit as dit_format
from jaxmia.models.torch_checkpoint import read_torch_checkpoint

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


FIXTURE = OFFICIAL / "dit"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "dit_tiny.pt").is_file(), reason="shared/fixtures/official absent")


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A random diffusers AutoencoderKL (PyTorch safetensors): 4 latent channels, ×8 down-sampling,
    as sd-vae-ft-mse, only narrow."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae")
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=64).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_vae):
    if not (FIXTURE / "dit_tiny.pt").is_file():
        pytest.skip("shared/fixtures/official absent")
    dst = tmp_path_factory.mktemp("dit") / "pipe"
    record = convert_official("dit", FIXTURE / "dit_tiny.pt", dst, {"vae": str(tiny_vae), "num_heads": "4"})
    return dst, record


@needs_fixture
def test_golden_forward_and_cfg(converted):
    dst, record = converted
    z = np.load(FIXTURE / "golden.npz")
    assert record["config"] == {"_class_name": "DiT", "input_size": 8, "patch_size": 2, "in_channels": 4,
                                "hidden_size": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0,
                                "class_dropout_prob": 0.1, "num_classes": 10, "learn_sigma": True}
    den = load_denoiser(dst)
    assert den.cond_kind == "class" and den.learned_sigma and den.sample_shape == (8, 8, 4)
    assert den.input_shape == (64, 64, 3)  # 8x8 latents of the x8 autoencoder
    apply = jax.jit(den.apply_fn)
    out = nchw(apply(den.params, nhwc(z["x"]), jnp.asarray(z["t"], jnp.int32), jnp.asarray(z["y"], jnp.int32)))
    assert np.abs(out - z["out"]).max() <= 1e-5
    # The attacks' ε: the first C channels of the learned-sigma output.
    eps = nchw(den.eps_batch(nhwc(z["x"]), jnp.asarray(z["t"]), jnp.asarray(z["y"], jnp.int32)))
    assert np.abs(eps - z["out"][:, :4]).max() <= 1e-5
    # The sampler's guided call, through the loaded denoiser's apply function (null class 10).
    cfg = forward_with_cfg(apply, den.params, nhwc(z["cfg_x"]), jnp.asarray(z["cfg_t"], jnp.int32),
                           jnp.asarray(z["cfg_y"], jnp.int32), float(z["cfg_scale"]))
    assert np.abs(nchw(cfg) - z["cfg_out"]).max() <= 1e-5
    spec = condition_spec(den)
    assert (spec.num_labels, spec.null_label) == (11, 10) == (11, json.loads(str(z["meta"]))["null_class"])


@needs_fixture
def test_pos_embed_is_loaded_not_recomputed(converted):
    dst, _ = converted
    z = np.load(FIXTURE / "golden.npz")
    table = np.asarray(load_denoiser(dst).params["pos_embed"][0])
    np.testing.assert_array_equal(table, read_torch_checkpoint(FIXTURE / "dit_tiny.pt")["pos_embed"][0])
    assert np.abs(table - z["pos_embed_sincos"]).max() > 1e-3  # the fixture's table is perturbed
    np.testing.assert_allclose(sinusoid_2d(64, 4, 4), z["pos_embed_sincos"], atol=1e-6)  # the official layout


@needs_fixture
def test_family_agrees_with_the_folder(converted):
    dst, _ = converted
    den = load_denoiser(dst, family="dit")  # refuses any disagreement of schedule, latent scale, conditioning
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(np.asarray(den.schedule.alphas_cumprod), np.cumprod(1 - betas), rtol=1e-6)
    scheduler = json.loads((dst / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["first_index_clean"] is False and scheduler["beta_schedule"] == "linear"
    assert json.loads((dst / "vae" / "config.json").read_text())["scaling_factor"] == 0.18215


@needs_fixture
def test_missing_and_unexpected_keys_are_named():
    state = read_torch_checkpoint(FIXTURE / "dit_tiny.pt")
    broken = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    broken["blocks.0.attn.q_norm.weight"] = np.ones(16, np.float32)
    with pytest.raises(ValueError) as err:
        dit_format.convert_state_dict(broken, {"num_heads": "4"}, "dit_tiny.pt")
    assert "missing key(s): blocks.1.mlp.fc2.bias" in str(err.value)
    assert "unexpected key(s): blocks.0.attn.q_norm.weight" in str(err.value)
    with pytest.raises(ValueError, match="'pos_embed', needed to read the architecture"):
        dit_format.convert_state_dict({k: v for k, v in state.items() if k != "pos_embed"}, {"num_heads": "4"},
                                      "dit_tiny.pt")
    with pytest.raises(ValueError, match="hidden_size 64 is not an official size .* pass --option num_heads=N"):
        dit_format.read_config(state, {}, "dit_tiny.pt")


def test_other_size_training_checkpoint(tmp_path, tiny_vae):
    """Hidden 48 with 3 heads (an option), depth 3, patch 4, 16x16 latents, 5 classes + null, mlp ratio 2,
    no learned sigma; a train.py-style checkpoint whose "ema" entry is taken."""
    shapes = dit_shapes(hidden=48, depth=3, patch=4, channels=4, grid=4, classes_rows=6, mlp=96, out_channels=4)
    ema, raw = random_state_dict(shapes, 1), random_state_dict(shapes, 2)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in raw.items()},
                "ema": {k: torch.from_numpy(v) for k, v in ema.items()}, "steps": 7}, tmp_path / "ckpt.pt")
    record = convert_official("dit", tmp_path / "ckpt.pt", tmp_path / "pipe", {"vae": str(tiny_vae), "num_heads": "3"})
    assert record["weights"] == "training checkpoint [ema]"
    assert {k: record["config"][k] for k in ("input_size", "patch_size", "depth", "num_heads", "num_classes",
                                             "mlp_ratio", "learn_sigma")} == {
        "input_size": 16, "patch_size": 4, "depth": 3, "num_heads": 3, "num_classes": 5, "mlp_ratio": 2.0,
        "learn_sigma": False}
    den = load_denoiser(tmp_path / "pipe")
    rng = np.random.default_rng(3)
    x, t, y = rng.normal(size=(2, 4, 16, 16)).astype(np.float32), np.array([3, 871]), np.array([4, 5])
    got = nchw(jax.jit(den.apply_fn)(den.params, nhwc(x), jnp.asarray(t, jnp.int32), jnp.asarray(y, jnp.int32)))
    want = dit_forward(ema, x, t, y, heads=3, patch=4)
    assert np.abs(got - want).max() <= 1e-5 < np.abs(want - dit_forward(raw, x, t, y, heads=3, patch=4)).max()
    with pytest.raises(ValueError, match="num_heads=5 must be positive and divide hidden_size 48"):
        convert_official("dit", tmp_path / "ckpt.pt", tmp_path / "other", {"vae": str(tiny_vae), "num_heads": "5"})


@needs_fixture
def test_oracle_reproduces_the_golden():
    """The NumPy oracle of the other-size test is itself checked against the official outputs."""
    z = np.load(FIXTURE / "golden.npz")
    state = read_torch_checkpoint(FIXTURE / "dit_tiny.pt")
    assert np.abs(dit_forward(state, z["x"], z["t"], z["y"], heads=4, patch=2) - z["out"]).max() <= 1e-5


def test_options_are_checked(tmp_path, tiny_vae):
    with pytest.raises(ValueError, match="pass --option vae=PATH"):
        convert_official("dit", tmp_path / "x.pt", tmp_path / "o", {})
    with pytest.raises(ValueError, match="unknown option"):
        convert_official("dit", tmp_path / "x.pt", tmp_path / "o", {"vea": "x"})
    with pytest.raises(ValueError, match="weights='last' is not one of auto, ema, model"):
        convert_official("dit", tmp_path / "x.pt", tmp_path / "o", {"vae": str(tiny_vae), "weights": "last"})


def test_real_size_parameter_counts():
    """DiT-XL/2 built abstractly: 675,129,632 at 256 px (the published 675.13 M; models.py counts
    pos_embed), 676,014,368 at 512 px (the larger position table)."""
    def count(cfg):
        return sum(math.prod(v.shape) for v in traverse_util.flatten_dict(abstract_params(cfg)).values())

    assert count(DiTOfficialConfig()) == 675_129_632
    assert count(DiTOfficialConfig(input_size=64)) == 675_129_632 + (1024 - 256) * 1152


@needs_fixture
def test_audit_end_to_end(converted, tmp_path):
    from jaxmia.audit import load_config, run_audit
    from jaxmia.data import write_npz

    dst, _ = converted
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (20, 64, 64, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 20)
    ids = [f"img{i}" for i in range(20)]
    write_npz(tmp_path / "p.npz", ids[:10], images[:10], labels[:10])
    write_npz(tmp_path / "u.npz", ids[10:], images[10:], labels[10:])
    cfg = load_config(None, {"audit": {"features": "loss", "batch_size": 10, "null_splits": 0, "drc_images": 0,
                                       "mia_attacks": ["dl"]},
                             "cdi": {"permutations": 19, "curve_reps": 2}})
    report = run_audit(str(dst), str(tmp_path / "p.npz"), str(tmp_path / "u.npz"), tmp_path / "audit", cfg,
                       quiet=True)
    saved = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert saved["verdict"]["n_p"] == 10 and 0 < saved["verdict"]["p_value"] <= 1
    assert saved["model"]["sample_shape"] == [8, 8, 4] and report["model"]["digest"]
