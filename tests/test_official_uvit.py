"""``--format uvit`` / ``uvit_t2i`` and U-ViT's KL autoencoder: official checkpoints → folder →
load_denoiser, against the official PyTorch goldens (``shared/fixtures/official/uvit*``), other
sizes against a NumPy oracle (and diffusers' PyTorch AutoencoderKL), key reporting, the
families, the timestep conventions, the audit end to end, and the real-size parameter counts."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from official_oracle import OFFICIAL, random_state_dict, uvit_forward, uvit_shapes

from jaxmia.models import condition_spec, load_denoiser, load_unet, spec_from_family
from jaxmia.models.official import convert_official
from jaxmia.models.official import kl_autoencoder
from jaxmia.models.official import uvit as uvit_format
from jaxmia.models.torch_checkpoint import read_torch_checkpoint
from jaxmia.models.uvit import UViTConfig, UViTT2IConfig, abstract_params
from jaxmia.models.vae import AutoencoderKL, posterior_sample

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


AE = OFFICIAL / "uvit_autoencoder" / "autoencoder_kl.pth"
needs_fixture = pytest.mark.skipif(not AE.is_file(), reason="shared/fixtures/official absent")


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    if not AE.is_file():
        pytest.skip("shared/fixtures/official absent")
    root = tmp_path_factory.mktemp("uvit")
    records = {
        "uvit": convert_official("uvit", OFFICIAL / "uvit" / "nnet_ema.pth", root / "uvit",
                                 {"autoencoder": str(AE), "num_heads": "4"}),
        "uvit_t2i": convert_official("uvit_t2i", OFFICIAL / "uvit_t2i" / "nnet_ema.pth", root / "uvit_t2i",
                                     {"autoencoder": str(AE), "num_heads": "4", "num_clip_token": "7"}),
    }
    return root, records


@needs_fixture
@pytest.mark.parametrize("fmt", ["uvit", "uvit_t2i"])
def test_golden_forward(pipes, fmt):
    root, records = pipes
    z = np.load(OFFICIAL / fmt / "golden.npz")
    meta = json.loads(str(z["meta"]))["kwargs"]
    config = records[fmt]["config"]
    for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
                "mlp_time_embed", "conv") + (("clip_dim", "num_clip_token") if fmt == "uvit_t2i" else ("num_classes",)):
        assert config[key] == meta[key], key
    den = load_denoiser(root / fmt)
    assert den.cond_kind == ("text" if fmt == "uvit_t2i" else "class") and not den.learned_sigma
    cond = jnp.asarray(z["context"]) if fmt == "uvit_t2i" else jnp.asarray(z["y"], jnp.int32)
    # Golden timesteps are floats (437.25); the Denoiser feeds ints, so the network is called directly.
    out = nchw(jax.jit(den.apply_fn)(den.params, nhwc(z["x"]), jnp.asarray(z["timesteps"]), cond))
    assert np.abs(out - z["out"]).max() <= 1e-5
    # Through the attack interface at the integer steps 1 and 1000.
    eps = nchw(den.eps_batch(nhwc(z["x"][[0, 2]]), jnp.asarray([1, 1000]), cond[jnp.asarray([0, 2])]))
    assert np.abs(eps - z["out"][[0, 2]]).max() <= 1e-5


@needs_fixture
def test_autoencoder_golden(pipes):
    root, _ = pipes
    z = np.load(OFFICIAL / "uvit_autoencoder" / "golden.npz")
    module, config, params = load_unet(root / "uvit" / "vae")
    assert config.scaling_factor == pytest.approx(float(z["scale_factor"]))
    x = nhwc(z["x"])

    @jax.jit
    def encode(params, x):
        moments = module.apply({"params": params}, x, method=lambda m, x: m.quant_conv(m.encoder(x)))
        return moments, module.apply({"params": params}, x, method=AutoencoderKL.moments)

    moments, (mean, logvar) = encode(params, x)
    assert np.abs(nchw(moments) - z["moments"]).max() <= 1e-5
    z_sample = config.scaling_factor * posterior_sample(mean, logvar, nhwc(z["eps"]))
    assert np.abs(nchw(z_sample) - z["z_sample"]).max() <= 1e-5
    # The pipeline's codec: decode divides by the scale; encode "mean" = scale * mean.
    den = load_denoiser(root / "uvit")
    assert np.abs(nchw(den.decode_fn(den.encoder_params, nhwc(z["z"]))) - z["dec"]).max() <= 1e-5
    den_mean = load_denoiser(root / "uvit", encode="mean")
    enc = den_mean.encode_fn(den_mean.encoder_params, x, jax.random.split(jax.random.key(0), 2))
    assert np.abs(nchw(enc) - 0.18215 * z["mean"]).max() <= 1e-5


@needs_fixture
def test_families_agree_with_the_folders(pipes):
    root, _ = pipes
    for fmt in ("uvit", "uvit_t2i"):
        den = load_denoiser(root / fmt, family=fmt)  # refuses a schedule, scale or conditioning disagreement
        betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
        ab = np.asarray(den.schedule.alphas_cumprod)
        assert ab.shape == (1001,) and ab[0] == 1.0
        np.testing.assert_allclose(ab[1:], np.cumprod(1 - betas), rtol=1e-6)
    assert json.loads((root / "uvit_t2i" / "vae" / "config.json").read_text())["scaling_factor"] == 0.2301
    assert json.loads((root / "uvit" / "vae" / "config.json").read_text())["scaling_factor"] == 0.18215
    den = load_denoiser(root / "uvit")
    assert condition_spec(den).num_labels == 11  # the fixture's table: 10 classes + null 10
    with pytest.raises(ValueError, match="declares num_labels=1001 but the model's parameters give num_labels=11"):
        condition_spec(den, family="uvit")  # the real family: 1000 classes + null 1000
    assert (spec_from_family("uvit").num_labels, spec_from_family("uvit").null_label) == (1001, 1000)
    assert condition_spec(load_denoiser(root / "uvit_t2i")).context_dim == 32
    with pytest.raises(ValueError, match="scaling_factor=0.18215 conflicts with model family 'uvit_t2i'"):
        other = root / "t2i_wrong_scale"
        convert_official("uvit_t2i", OFFICIAL / "uvit_t2i" / "nnet_ema.pth", other,
                         {"autoencoder": str(AE), "num_heads": "4", "num_clip_token": "7", "scale": "0.18215"})
        load_denoiser(other, family="uvit_t2i")


@needs_fixture
def test_missing_and_unexpected_keys_are_named():
    state = read_torch_checkpoint(OFFICIAL / "uvit" / "nnet_ema.pth")
    broken = {k: v for k, v in state.items() if k != "out_blocks.1.skip_linear.bias"}
    broken["extra.weight"] = np.ones(3, np.float32)
    with pytest.raises(ValueError) as err:
        uvit_format.convert_state_dict(broken, {"num_heads": "4"}, "uvit", "nnet_ema.pth")
    assert "missing key(s): out_blocks.1.skip_linear.bias" in str(err.value)
    assert "unexpected key(s): extra.weight" in str(err.value)
    ae = read_torch_checkpoint(AE)
    broken = {k: v for k, v in ae.items() if k != "decoder.up.1.upsample.conv.bias"}
    broken["loss.logvar"] = np.zeros((), np.float32)
    with pytest.raises(ValueError) as err:
        kl_autoencoder.convert_state_dict(broken, source="ae.pth", scaling_factor=0.18215, sample_size=16)
    assert "missing key(s): decoder.up.1.upsample.conv.bias" in str(err.value)
    assert "unexpected key(s): loss.logvar" in str(err.value)
    t2i = read_torch_checkpoint(OFFICIAL / "uvit_t2i" / "nnet_ema.pth")
    with pytest.raises(ValueError, match="not 1 time \\+ 77 context tokens"):  # the default 77 tokens do not fit
        uvit_format.read_config(t2i, {"num_heads": "4"}, "uvit_t2i", "nnet_ema.pth")
    with pytest.raises(ValueError, match="use --format uvit_t2i"):
        uvit_format.read_config(t2i, {"num_heads": "4"}, "uvit", "nnet_ema.pth")


def _save(state, path):
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def test_other_sizes_against_the_oracle(tmp_path):
    """Unconditional pixel-space U-ViT (patch 4, width 48 / 6 heads, depth 6, qkv bias, time MLP, final
    conv, 16x16x3) and a T2I one (5 tokens of width 16, no conv, 3 heads, depth 2), both random."""
    rng = np.random.default_rng(0)
    uncond = random_state_dict(uvit_shapes(width=48, depth=6, patch=4, channels=3, tokens=1 + 16, mlp=96,
                                           qkv_bias=True, time_mlp=True, conv=True), 1)
    _save(uncond, tmp_path / "uncond.pth")
    rec = convert_official("uvit", tmp_path / "uncond.pth", tmp_path / "uncond", {"num_heads": "6"})
    assert (rec["config"]["num_classes"], rec["config"]["img_size"], rec["config"]["mlp_ratio"]) == (-1, 16, 2.0)
    den = load_denoiser(tmp_path / "uncond")
    assert den.cond_kind == "none" and not den.is_latent
    x, t = rng.normal(size=(2, 3, 16, 16)).astype(np.float32), np.array([3.0, 999.0])
    got = nchw(jax.jit(den.apply_fn, static_argnums=3)(den.params, nhwc(x), jnp.asarray(t), None))
    assert np.abs(got - uvit_forward(uncond, x, t, heads=6, patch=4)).max() <= 1e-5

    t2i = random_state_dict(uvit_shapes(width=24, depth=2, patch=2, channels=4, tokens=1 + 5 + 9, mlp=72, clip=16), 2)
    _save(t2i, tmp_path / "t2i.pth")
    cfg, params = uvit_format.convert_state_dict(t2i, {"num_heads": "3", "num_clip_token": "5"}, "uvit_t2i", "t2i")
    assert (cfg.img_size, cfg.clip_dim, cfg.num_clip_token, cfg.conv) == (6, 16, 5, False)
    from jaxmia.models.uvit import UViT

    x, ctx = rng.normal(size=(2, 4, 6, 6)).astype(np.float32), rng.normal(size=(2, 5, 16)).astype(np.float32)
    got = nchw(jax.jit(UViT(cfg).apply)({"params": params}, nhwc(x), jnp.asarray(t), jnp.asarray(ctx)))
    assert np.abs(got - uvit_forward(t2i, x, t, ctx, heads=3, patch=2)).max() <= 1e-5
    with pytest.raises(ValueError, match="takes a context of shape \\(B, 5, 16\\)"):
        UViT(cfg).apply({"params": params}, nhwc(x), jnp.asarray(t), jnp.asarray(ctx[:, :4]))


@needs_fixture
@pytest.mark.parametrize("fmt,cond", [("uvit", "y"), ("uvit_t2i", "context")])
def test_oracle_reproduces_the_golden(fmt, cond):
    """The NumPy oracle of the other-size test is itself checked against the official outputs."""
    z = np.load(OFFICIAL / fmt / "golden.npz")
    state = read_torch_checkpoint(OFFICIAL / fmt / "nnet_ema.pth")
    assert np.abs(uvit_forward(state, z["x"], z["timesteps"], z[cond], heads=4, patch=2) - z["out"]).max() <= 1e-5


def test_other_autoencoder_size_against_diffusers():
    """A 3-level KL autoencoder with 2 res-blocks per level and attention at the lowest level, random
    (diffusers' PyTorch AutoencoderKL, renamed to the CompVis keys): shapes read back, outputs equal."""
    from diffusers import AutoencoderKL as TorchAutoencoderKL

    torch.manual_seed(0)
    ref = TorchAutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32, 64), layers_per_block=2,
                             down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                             up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
                             latent_channels=3, norm_num_groups=32).eval()
    state = {kl_autoencoder.diffusers_to_ldm_key(k, 3): v.numpy() for k, v in ref.state_dict().items()}
    assert "encoder.down.2.attn.1.proj_out.weight" in state and "decoder.up.2.attn.2.q.weight" in state
    config, params = kl_autoencoder.convert_state_dict(state, source="ae", scaling_factor=0.5, sample_size=16)
    assert config.block_out_channels == (32, 32, 64) and config.layers_per_block == 2
    assert config.down_block_types[2] == "AttnDownEncoderBlock2D" and config.up_block_types[0] == "AttnUpDecoderBlock2D"
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        want_mean = ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
        want_dec = ref.decode(torch.from_numpy(want_mean)).sample.numpy()
    module = AutoencoderKL(config)

    @jax.jit
    def run(params, x):
        mean, _ = module.apply({"params": params}, x, method=AutoencoderKL.moments)
        return mean, module.apply({"params": params}, mean, method=AutoencoderKL.decode)

    mean, dec = run(params, nhwc(x))
    assert np.abs(nchw(mean) - want_mean).max() <= 1e-5 and np.abs(nchw(dec) - want_dec).max() <= 1e-5


def test_continuous_timesteps(tmp_path):
    """timesteps=continuous: ā read off U-ViT's VP-SDE at n/1000, the network fed 0.999·n."""
    state = random_state_dict(uvit_shapes(width=16, depth=2, patch=2, channels=3, tokens=1 + 4, mlp=32), 3)
    _save(state, tmp_path / "s.pth")
    convert_official("uvit", tmp_path / "s.pth", tmp_path / "c", {"num_heads": "2", "timesteps": "continuous"})
    den = load_denoiser(tmp_path / "c")
    t = np.arange(1001) / 1000
    np.testing.assert_allclose(np.asarray(den.schedule.alphas_cumprod), np.exp(-(0.1 * t + 9.95 * t**2)), rtol=2e-5)
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    got = nchw(den.eps_batch(nhwc(x), jnp.asarray([500])))
    assert np.abs(got - uvit_forward(state, x, np.array([499.5]), heads=2, patch=2)).max() <= 1e-5
    with pytest.raises(ValueError, match="timesteps='ddim' is not one of discrete, continuous"):
        convert_official("uvit", tmp_path / "s.pth", tmp_path / "d", {"num_heads": "2", "timesteps": "ddim"})
    with pytest.raises(ValueError, match="takes 4-channel latents; pass --option autoencoder=PATH"):
        _save(random_state_dict(uvit_shapes(width=16, depth=2, patch=2, channels=4, tokens=2 + 4, mlp=32,
                                            num_classes=3), 4), tmp_path / "latent.pth")
        convert_official("uvit", tmp_path / "latent.pth", tmp_path / "e", {"num_heads": "2"})


def test_real_size_parameter_counts():
    """Published: U-ViT-H/2 501 M, U-ViT-L/2 287 M, U-ViT-S (T2I, COCO) 45 M, its deep variant 58 M."""
    def count(cfg):
        return sum(math.prod(v.shape) for v in traverse_util.flatten_dict(abstract_params(cfg)).values())

    counts = {"H/2-256": count(UViTConfig()), "H/4-512": count(UViTConfig(img_size=64, patch_size=4)),
              "L/2-256": count(UViTConfig(embed_dim=1024, depth=20, conv=True)),
              "T2I-S": count(UViTT2IConfig(embed_dim=512, depth=12, num_heads=8)),
              "T2I-S-deep": count(UViTT2IConfig(embed_dim=512, depth=16, num_heads=8))}
    assert counts == {"H/2-256": 500_832_016, "H/4-512": 500_942_656, "L/2-256": 286_763_172,
                      "T2I-S": 44_692_644, "T2I-S-deep": 58_345_636}
    for name, published in (("H/2-256", 501e6), ("L/2-256", 287e6), ("T2I-S", 45e6), ("T2I-S-deep", 58e6)):
        assert abs(counts[name] - published) < 0.5e6, name


@needs_fixture
@pytest.mark.parametrize("fmt", ["uvit", "uvit_t2i"])
def test_audit_end_to_end(pipes, tmp_path, fmt):
    """Latent encoding, class labels (uvit) or pre-computed text embeddings in the data .npz (uvit_t2i)."""
    from jaxmia.audit import load_config, run_audit
    from jaxmia.data import write_npz

    root, _ = pipes
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (20, 16, 16, 3)).astype(np.float32)
    cond = rng.integers(0, 10, 20) if fmt == "uvit" else rng.normal(size=(20, 7, 32)).astype(np.float32)
    ids = [f"img{i}" for i in range(20)]
    write_npz(tmp_path / "p.npz", ids[:10], images[:10], cond[:10])
    write_npz(tmp_path / "u.npz", ids[10:], images[10:], cond[10:])
    cfg = load_config(None, {"audit": {"features": "loss", "batch_size": 10, "null_splits": 0, "drc_images": 0,
                                       "mia_attacks": ["dl"]},
                             "cdi": {"permutations": 19, "curve_reps": 2}})
    run_audit(str(root / fmt), str(tmp_path / "p.npz"), str(tmp_path / "u.npz"), tmp_path / "audit", cfg, quiet=True)
    saved = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert saved["verdict"]["n_p"] == 10 and 0 < saved["verdict"]["p_value"] <= 1
    assert saved["model"]["sample_shape"] == [8, 8, 4]


def test_configs_round_trip_and_refuse_bad_keys():
    from jaxmia.models import build_model
    from jaxmia.models.dit_official import DiTOfficialConfig

    for cfg in (UViTConfig(num_classes=-1, conv=True), UViTT2IConfig(num_clip_token=5), DiTOfficialConfig(depth=3)):
        data = json.loads(json.dumps(cfg.to_diffusers()))  # what config.json holds
        assert type(cfg).from_diffusers(data) == cfg and build_model(data).config == cfg
    with pytest.raises(ValueError, match="unknown UViT config key\\(s\\) 'clip_dim'"):
        UViTConfig.from_diffusers({"_class_name": "UViT", "clip_dim": 768})
    with pytest.raises(ValueError, match="depth='28' must be an integer"):
        UViTT2IConfig.from_diffusers({"_class_name": "UViTT2I", "depth": "28"})
    with pytest.raises(ValueError, match="_class_name is 'UViT', not 'UViTT2I'"):
        UViTT2IConfig.from_diffusers({"_class_name": "UViT"})
    with pytest.raises(ValueError, match="num_heads=7 must divide embed_dim=1152"):
        UViTConfig.from_diffusers({"num_heads": 7})
