"""CompVis LDM (``jaxmia convert --format ldm``): the official fixture's goldens, another size against
a PyTorch restatement of the official code, every refusal by name, the family, real sizes, the audit.

Fixture: ``shared/fixtures/official/ldm`` (tiny random weights in the official format; goldens from
CompVis/latent-diffusion @ a506df5, see its README). Tolerance 1e-5 max abs in float32; VQ code
choices exactly equal.
"""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia

from jaxmia.models import condition_spec, load_denoiser, load_family, load_unet, spec_from_family, vae
from jaxmia.models.class_token import ClassTokenUNet
from jaxmia.models.conditioning import ConditionSpec
from jaxmia.models.official import FORMATS, convert_official
from jaxmia.models.official import ldm
from jaxmia.models.unet2d_condition import UNet2DConditionConfig, UNet2DConditionModel
from jaxmia.models.unet2d_condition import abstract_params as unet_abstract_params

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")
import ldm_oracle as oracle  # noqa: E402  (tests/ is on sys.path under pytest)

from official_oracle import OFFICIAL  # noqa: E402  (one place that finds shared/fixtures/official)

FIXTURE = OFFICIAL / "ldm"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "model.ckpt").is_file(),
                                   reason="shared/fixtures/official not present")
TOL = 1e-5

# configs/latent-diffusion/cin256-v2.yaml @ a506df5, the model section (the release's config), shipped.
CIN256_V2 = (Path(jaxmia.__file__).parent / "configs" / "official" / "ldm-cin256-v2.yaml").read_text()


def nhwc(a):
    return np.transpose(np.asarray(a), (0, 2, 3, 1))


def maxdiff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", False)


@pytest.fixture(scope="module")
def golden():
    with np.load(FIXTURE / "golden.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = tmp_path_factory.mktemp("ldm") / "pipe"
    record = convert_official("ldm", FIXTURE / "model.ckpt", dst)
    return dst, record


def unet_of(denoiser):
    """The converted UNet2DConditionModel on its own (to feed a multi-token context), jitted."""
    module = denoiser.apply_fn.args[0]
    assert isinstance(module, ClassTokenUNet)
    inner = UNet2DConditionModel(module.config.unet)
    return jax.jit(lambda x, t, ctx: inner.apply({"params": denoiser.params["unet"]}, x, t, ctx))


def vq_methods(folder):
    """(encode, quantized, decode(h, force_not_quantize), params) of a converted vqvae/, jitted."""
    module, _, params = load_unet(folder)

    def method(name, *static):
        return jax.jit(lambda *a: module.apply({"params": params}, *a, method=getattr(vae.VQModel, name)),
                       static_argnums=static)

    return method("encode"), method("quantized"), method("decode", 1), params


# ------------------------------------------------------------------------------------------------
# The official fixture
# ------------------------------------------------------------------------------------------------


@needs_fixture
def test_fixture_goldens(converted, golden):
    dst, record = converted
    d = load_denoiser(dst)
    assert d.cond_kind == "class" and d.sample_shape == (8, 8, 3) and d.image_shape == (32, 32, 3) and d.is_latent
    x, t, y = jnp.asarray(nhwc(golden["x"])), jnp.asarray(golden["t"], jnp.int32), jnp.asarray(golden["y"], jnp.int32)
    # eps: label -> ClassEmbedder row -> one token -> UNet (y includes the null class 10).
    assert maxdiff(jax.jit(d.eps_batch)(x, t, y), nhwc(golden["eps"])) <= TOL
    np.testing.assert_array_equal(np.asarray(d.params["class_embedder"]["embedding"])[golden["y"]][:, None],
                                  golden["context"])
    # eps_multi: three context tokens, so attn2's queries matter (one key makes softmax identically 1).
    eps_multi = unet_of(d)(x, t, jnp.asarray(golden["context_multi"]))
    assert maxdiff(eps_multi, nhwc(golden["eps_multi"])) <= TOL
    # The first stage.
    _, quantized, decode, params = vq_methods(dst / "vqvae")
    image = jnp.asarray(nhwc(golden["image"]))
    h = jax.jit(d.encode_fn)(d.encoder_params, image, None)  # encode_first_stage · scale_factor (1.0)
    assert maxdiff(h, nhwc(golden["h"])) <= TOL and maxdiff(h, nhwc(golden["z"])) <= TOL
    quant = np.asarray(quantized(h))
    codebook = np.asarray(params["quantize"]["embedding"]["embedding"])
    np.testing.assert_array_equal(quant, codebook[golden["vq_indices"]])  # the same code everywhere, exactly
    assert maxdiff(quant, nhwc(golden["vq_quant"])) <= TOL
    decode_first_stage = jax.jit(d.decode_fn)  # divides by the scale (1.0 here), quantises, decodes
    assert maxdiff(decode_first_stage(d.encoder_params, jnp.asarray(nhwc(golden["z"]))), nhwc(golden["dec"])) <= TOL
    assert maxdiff(decode_first_stage(d.encoder_params, jnp.asarray(nhwc(golden["h"]))), nhwc(golden["dec_h"])) <= TOL
    assert maxdiff(decode(jnp.asarray(nhwc(golden["h"])), True), nhwc(golden["dec_noquant"])) <= TOL
    # Schedule and scale.
    np.testing.assert_array_equal(np.asarray(d.schedule.betas), golden["betas"])
    np.testing.assert_array_equal(np.asarray(d.schedule.alphas_cumprod), golden["alphas_cumprod"])
    scale = json.loads((dst / "vqvae" / "config.json").read_text())["scaling_factor"]
    assert scale == float(golden["scale_factor"]) == 1.0
    meta = json.loads(str(golden["meta"]))
    assert record["null_class"] == meta["null_class"] == 10 and record["num_classes"] == 11
    assert record["heads_per_level"] == [4, 4] and record["keys"]["missing"] == record["keys"]["unexpected"] == 0
    assert record["keys"]["unet"] + record["keys"]["first_stage"] + 1 + record["keys"]["buffers"] == 370
    assert json.loads((dst / "jaxmia_conversion.json").read_text()) == record
    assert "ldm" in FORMATS and set(FORMATS["ldm"].options) == {"config", "null_class"}


@needs_fixture
def test_oracle_reproduces_the_fixture(golden):
    """tests/ldm_oracle.py restates the official code: same keys (strict load) and outputs as the goldens."""
    params = yaml.safe_load((FIXTURE / "config.yaml").read_text())["model"]["params"]
    model = oracle.LatentDiffusion(params).eval()
    sd = torch.load(FIXTURE / "model.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    buffers = {k: sd.pop(k) for k in ldm.SCHEDULE_BUFFERS}
    model.load_state_dict(sd, strict=True)
    for name, table in oracle.schedule_buffers(params).items():
        assert torch.equal(table, buffers[name]), name
    T = torch.from_numpy
    with torch.no_grad():
        assert maxdiff(model.eps(T(golden["x"]), T(golden["t"]), T(golden["y"])), golden["eps"]) <= TOL
        fs = model.first_stage_model
        h = fs.encode(T(golden["image"]))
        assert maxdiff(h, golden["h"]) <= TOL
        assert torch.equal(fs.quantize.indices(h), T(golden["vq_indices"]))
        assert maxdiff(fs.decode(T(golden["z"])), golden["dec"]) <= TOL


@needs_fixture
def test_family_agrees_with_the_converted_folder(converted):
    dst, _ = converted
    fam = load_family("ldm")
    d = load_denoiser(dst, family="ldm")  # schedule, latent kind/scale, conditioning kind, learned_sigma checked
    plain = load_denoiser(dst)
    assert d.digest == plain.digest  # the family's encode mode (pre_quantization) and scale are the folder's
    np.testing.assert_array_equal(np.asarray(d.schedule.alphas_cumprod), np.asarray(plain.schedule.alphas_cumprod))
    scheduler = json.loads((dst / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"]) == (
        fam.schedule.beta_schedule, fam.schedule.beta_start, fam.schedule.beta_end)
    assert json.loads((dst / "vqvae" / "config.json").read_text())["scaling_factor"] == fam.latent.scale
    # The fixture's table: 11 rows, the last one (10) the null class; the released model: 1001, null 1000.
    assert condition_spec(d) == ConditionSpec("class", num_labels=11)
    unet_cfg, vq_cfg = ldm.pipeline_configs(ldm.parse_config(yaml.safe_load(CIN256_V2)))
    assert (unet_cfg.num_classes, unet_cfg.null_class) == (1001, 1000)
    assert spec_from_family("ldm") == ConditionSpec("class", num_labels=1001, null_label=1000)
    assert (fam.conditioning.num_classes, fam.conditioning.null_class) == (1000, unet_cfg.null_class)
    assert fam.latent.scale == vq_cfg.scaling_factor == 1.0 and vq_cfg.code_channels == 3
    assert fam.latent.encode == "pre_quantization" and fam.latent.autoencoder_class == "VQModel"


# ------------------------------------------------------------------------------------------------
# Refusals, each by name
# ------------------------------------------------------------------------------------------------


def _write_checkpoint(folder: Path, sd: dict, config_text: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "global_step": 0, **extra}, folder / "model.ckpt")
    (folder / "config.yaml").write_text(config_text)
    return folder / "model.ckpt"


@pytest.fixture(scope="module")
def fixture_sd():
    return torch.load(FIXTURE / "model.ckpt", weights_only=True, map_location="cpu")["state_dict"]


@needs_fixture
def test_missing_and_unexpected_keys_are_named(tmp_path, fixture_sd):
    config = (FIXTURE / "config.yaml").read_text()
    sd = dict(fixture_sd)
    dropped = "model.diffusion_model.output_blocks.1.1.transformer_blocks.0.attn2.to_q.weight"
    del sd[dropped]
    sd["model.diffusion_model.label_emb.weight"] = torch.zeros(11, 128)
    ckpt = _write_checkpoint(tmp_path / "a", sd, config, epoch=3, optimizer_states=[{"lr": 1e-4}])
    with pytest.raises(ValueError, match=rf"1 missing key\(s\): '{dropped}'.*"
                                         r"1 unexpected key\(s\): 'model.diffusion_model.label_emb.weight'"):
        convert_official("ldm", ckpt, tmp_path / "out_a")
    sd = dict(fixture_sd)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    del sd["posterior_mean_coef2"]
    sd["first_stage_model.loss.logvar"] = torch.zeros(())
    del sd["first_stage_model.quantize.embedding.weight"]
    ckpt = _write_checkpoint(tmp_path / "b", sd, config)
    with pytest.raises(ValueError, match=r"missing key\(s\): 'posterior_mean_coef2'.*"
                                         r"unexpected key\(s\): 'model_ema.decay'"):
        convert_official("ldm", ckpt, tmp_path / "out_b")
    del sd["model_ema.decay"]
    sd["posterior_mean_coef2"] = fixture_sd["posterior_mean_coef2"]
    ckpt = _write_checkpoint(tmp_path / "c", sd, config)
    with pytest.raises(ValueError, match=r"no 'first_stage_model.quantize.embedding.weight'"):
        convert_official("ldm", ckpt, tmp_path / "out_c")
    sd["first_stage_model.quantize.embedding.weight"] = fixture_sd["first_stage_model.quantize.embedding.weight"]
    ckpt = _write_checkpoint(tmp_path / "d", sd, config)
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): 'first_stage_model.loss.logvar'"):
        convert_official("ldm", ckpt, tmp_path / "out_d")
    # A tensor of the wrong shape is named by its official key.
    sd = dict(fixture_sd)
    sd["model.diffusion_model.middle_block.1.proj_out.weight"] = torch.zeros(64, 64, 3, 3)
    ckpt = _write_checkpoint(tmp_path / "e", sd, config)
    with pytest.raises(ValueError, match=r"'model.diffusion_model.middle_block.1.proj_out.weight' "
                                         r"has shape \(64, 64, 3, 3\)"):
        convert_official("ldm", ckpt, tmp_path / "out_e")
    assert not (tmp_path / "out_e").exists() or not any((tmp_path / "out_e").iterdir())


def _edited(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


@needs_fixture
@pytest.mark.parametrize("old, new, message", [
    ("target: ldm.modules.encoders.modules.ClassEmbedder", "target: ldm.modules.encoders.modules.FrozenCLIPEmbedder",
     r"cond_stage_config.target='ldm.modules.encoders.modules.FrozenCLIPEmbedder' is not supported"),
    ("target: torch.nn.Identity", "target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
     r"lossconfig.target='taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator' is not supported"),
    ("    use_ema: false\n", "", r"model.params.use_ema=True is not supported"),
    ("        num_heads: 4\n", "        num_heads: 4\n        use_scale_shift_nrm: true\n",
     r"unknown unet_config.params key\(s\) 'use_scale_shift_nrm'"),
    ("    conditioning_key: crossattn\n", "", r"conditioning_key='concat' is not supported"),
    ("        model_channels: 32", "        model_channels: 64",
     r"unet_config.params.model_channels: the config says 64, the tensor shapes say 32"),
    ("        - 2\n        num_res_blocks: 1", "        - 1\n        num_res_blocks: 1",
     r"attention_resolutions \(as levels 2\*\*l\): the config says \(True, False\), "
     r"the tensor shapes say \(False, True\)"),
    ("          z_channels: 3", "          z_channels: 4",
     r"ddconfig.z_channels: the config says 4, the tensor shapes say 3"),
    ("    linear_end: 0.0195", "    linear_end: 0.02",
     r"betas differs from the config's scaled_linear schedule 0.0015..0.02"),
    ("    linear_start: 0.0015\n", "    linear_start: 0.0015\n    beta_schedule: sqrt\n",
     r"beta_schedule='sqrt' is not supported"),
    ("        n_classes: 11", "        n_classes: 12", r"embedding.weight has shape \(11, 32\) but .*\(12, 32\)"),
])
def test_config_refusals(tmp_path, fixture_sd, old, new, message):
    config = _edited((FIXTURE / "config.yaml").read_text(), old, new)
    ckpt = _write_checkpoint(tmp_path / "src", dict(fixture_sd), config)
    with pytest.raises(ValueError, match=message):
        convert_official("ldm", ckpt, tmp_path / "out")


@needs_fixture
def test_option_and_file_refusals(tmp_path, converted):
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'ema'"):
        convert_official("ldm", FIXTURE / "model.ckpt", tmp_path / "o", {"ema": "true"})
    with pytest.raises(ValueError, match=r"null_class='x' must be 'last', 'none' or a class index"):
        convert_official("ldm", FIXTURE / "model.ckpt", tmp_path / "o", {"null_class": "x"})
    with pytest.raises(FileNotFoundError, match=r"nope.yaml: LDM config not found"):
        convert_official("ldm", FIXTURE / "model.ckpt", tmp_path / "o", {"config": str(tmp_path / "nope.yaml")})
    with pytest.raises(ValueError, match="destination exists and is not an empty folder"):
        convert_official("ldm", FIXTURE / "model.ckpt", converted[0])
    (tmp_path / "bad.yaml").write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ValueError, match="not a YAML file safe_load accepts"):
        ldm.read_config(tmp_path / "bad.yaml")
    assert not Path("pwned").exists()
    record = convert_official("ldm", FIXTURE / "model.ckpt", tmp_path / "none", {"null_class": "none"})
    assert record["null_class"] is None
    assert json.loads((tmp_path / "none" / "unet" / "config.json").read_text())["null_class"] is None


# ------------------------------------------------------------------------------------------------
# Another size of the same architecture, against the PyTorch restatement
# ------------------------------------------------------------------------------------------------

OTHER = {  # 3 UNet levels with attention at factors 1 and 4 only, 2 res blocks, head width 16 (2 and 4 heads),
    # depth-2 transformers, FiLM ResBlocks, 4-channel codes from 3-channel VQ latents, an attention level
    # in the first stage, 7 classes, another beta range, a learned scale_factor buffer.
    "linear_start": 0.001, "linear_end": 0.02, "timesteps": 1000, "image_size": 8, "channels": 4,
    "conditioning_key": "crossattn", "use_ema": False, "scale_by_std": True, "monitor": "val/loss",
    "unet_config": {"target": ldm.TARGETS["unet_config"], "params": {
        "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32, "attention_resolutions": [4, 1],
        "num_res_blocks": 2, "channel_mult": [1, 2, 2], "num_head_channels": 16, "use_spatial_transformer": True,
        "transformer_depth": 2, "context_dim": 24, "use_scale_shift_norm": True, "use_checkpoint": True}},
    "first_stage_config": {"target": ldm.TARGETS["first_stage_config"], "params": {
        "embed_dim": 4, "n_embed": 40, "lossconfig": {"target": "torch.nn.Identity"},
        "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2], "num_res_blocks": 2, "attn_resolutions": [8], "dropout": 0.0}}},
    "cond_stage_config": {"target": ldm.TARGETS["cond_stage_config"], "params": {"n_classes": 7, "embed_dim": 24}},
}


@pytest.fixture(scope="module")
def other_size(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_other")
    torch.manual_seed(1)
    model = oracle.perturb_(oracle.LatentDiffusion(OTHER), seed=2, std=0.05)
    sd = {**model.state_dict(), **oracle.schedule_buffers(OTHER), "scale_factor": torch.tensor(0.7)}
    config = {"model": {"base_learning_rate": 1e-4, "target": ldm.TARGETS["model"], "params": OTHER},
              "lightning": {"trainer": {"max_epochs": 1}}}
    ckpt = _write_checkpoint(root / "src", sd, yaml.safe_dump(config), epoch=0)
    record = convert_official("ldm", ckpt, root / "pipe", {"null_class": "6"})
    return model, root / "pipe", record


def test_other_size_matches_the_official_forward(other_size):
    model, dst, record = other_size
    assert record["unet_layout"]["channel_mult"] == [1, 2, 2] and record["unet_layout"]["attention_levels"] == [
        True, False, True]
    assert record["heads_per_level"] == [2, 4, 4] and record["unet_layout"]["transformer_depth"] == 2
    assert record["vq_layout"]["attention_levels"] == [False, True] and record["latent_scale"] == pytest.approx(0.7)
    assert record["config_sections_not_read"] == ["lightning"] and record["null_class"] == 6
    d = load_denoiser(dst)
    assert d.sample_shape == (8, 8, 4) and d.image_shape == (16, 16, 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    t, y = np.array([0, 321, 999]), np.array([0, 4, 6])
    ctx = rng.standard_normal((3, 5, 24)).astype(np.float32)
    image = np.clip(rng.standard_normal((2, 3, 16, 16)), -1, 1).astype(np.float32)
    T = torch.from_numpy
    with torch.no_grad():
        ref_eps = model.eps(T(x), T(t), T(y)).numpy()  # ClassEmbedder -> (B, 1, D) -> UNet
        ref_multi = model.model.diffusion_model(T(x), T(t), T(ctx)).numpy()
        fs = model.first_stage_model
        ref_h = fs.encode(T(image))
        ref_idx = fs.quantize.indices(ref_h).numpy()
        ref_dec = fs.decode((0.7 * ref_h) / 0.7).numpy()  # decode_first_stage(z) = decode(z / scale), z = 0.7·h
    # The multi-token path tests every mapped weight (one token would hide attn2's queries); the label
    # path is the same network fed the table rows (its wrapper is checked on the fixture's eps golden).
    assert maxdiff(unet_of(d)(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(ctx)), nhwc(ref_multi)) <= TOL
    table = model.cond_stage_model.embedding.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(d.params["class_embedder"]["embedding"]), table)
    assert maxdiff(unet_of(d)(jnp.asarray(nhwc(x)), jnp.asarray(t), jnp.asarray(table[y][:, None].repeat(5, 1))),
                   nhwc(ref_eps)) <= TOL  # five copies of the label's token attend exactly like one
    z = jax.jit(d.encode_fn)(d.encoder_params, jnp.asarray(nhwc(image)), None)
    assert maxdiff(z, 0.7 * nhwc(ref_h.numpy())) <= TOL
    _, quantized, _, params = vq_methods(dst / "vqvae")
    quant = np.asarray(quantized(z / 0.7))
    np.testing.assert_array_equal(quant, np.asarray(params["quantize"]["embedding"]["embedding"])[ref_idx])
    assert maxdiff(jax.jit(d.decode_fn)(d.encoder_params, z), nhwc(ref_dec)) <= TOL


# ------------------------------------------------------------------------------------------------
# Real sizes (abstract shapes only)
# ------------------------------------------------------------------------------------------------


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def test_real_size_parameter_counts():
    from jaxmia.models.class_token import abstract_params

    unet_cfg, vq_cfg = ldm.pipeline_configs(ldm.parse_config(yaml.safe_load(CIN256_V2)))
    tree = abstract_params(unet_cfg)
    unet = _count(tree["unet"])
    assert round(unet / 1e6, 2) == 400.92  # the README's "DiffusionWrapper has 400.92 M params"
    assert _count(tree["class_embedder"]) == 1001 * 512
    assert unet_cfg.unet.attention_head_dim == (1, 1, 1, 1) and unet_cfg.unet.down_block_types[0] == "DownBlock2D"
    # The VQ-f4 first stage, against diffusers' VQModel of the same config (on the meta device: no memory).
    # Both networks against the PyTorch restatement of the official classes (meta device: no memory).
    params = yaml.safe_load(CIN256_V2)["model"]["params"]
    with torch.device("meta"):
        official = oracle.LatentDiffusion(params)
    assert unet == sum(p.numel() for p in official.model.diffusion_model.parameters())
    vq = _count(vae.abstract_params(vae.VQModel(vq_cfg)))
    assert vq == sum(p.numel() for p in official.first_stage_model.parameters())
    # An SD-1.5-shaped UNet2DConditionModel (published 859.52 M).
    sd15 = UNet2DConditionConfig(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    sd15_count = _count(unet_abstract_params(sd15))
    assert round(sd15_count / 1e6, 2) == 859.52
    print(f"\ncin256-v2 UNet {unet:,} (+ class table {1001 * 512:,}); VQ-f4 {vq:,}; SD-1.5 UNet {sd15_count:,}")


# ------------------------------------------------------------------------------------------------
# The audit, end to end on the converted fixture
# ------------------------------------------------------------------------------------------------


@needs_fixture
def test_audit_runs_on_the_converted_fixture(converted, tmp_path):
    from jaxmia.audit import load_config, run_audit
    from jaxmia.data import write_npz

    dst, _ = converted
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (40, 32, 32, 3)).astype(np.float32)
    labels = np.arange(40) % 11  # every class, the null class 10 included
    ids = [f"img{i:02d}" for i in range(40)]
    write_npz(tmp_path / "p.npz", ids[:20], images[:20], labels[:20])
    write_npz(tmp_path / "u.npz", ids[20:], images[20:], labels[20:])
    cfg = load_config(None, {"audit": {"features": "loss", "batch_size": 8, "null_splits": 10, "drc_images": 1},
                             "features": {"dl_n_draws": 1},
                             "cdi": {"permutations": 49, "curve_reps": 5},
                             "drc": {"kinds": ["center"], "ratios": [0.25], "steps": 2}})
    report = run_audit(str(dst), str(tmp_path / "p.npz"), str(tmp_path / "u.npz"), tmp_path / "audit", cfg, quiet=True)
    saved = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert 0 < saved["verdict"]["p_value"] <= 1 and saved["verdict"]["n_p"] == 20
    assert saved["model"]["sample_shape"] == [8, 8, 3] and saved["model"]["digest"] == load_denoiser(dst).digest
    assert set(saved["mia_context"]) == {"dl"} and saved["drc"]["published"]["evidence"]
    assert report["verdict"] == saved["verdict"] and (tmp_path / "audit" / "report.html").is_file()
