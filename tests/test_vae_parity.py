"""Latent autoencoders against diffusers' PyTorch ``AutoencoderKL`` / ``VQModel`` (the oracle), and a
latent pipeline end to end: ``load_denoiser`` → ``jaxmia features`` (docs/methods/models.md §8-§9,
docs/methods/cdi.md §9). Tolerance 1e-4 max abs (outputs of order 1; measured ~1e-6)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from jaxmia import rng
from jaxmia.cli import main
from jaxmia.models import load_denoiser, load_unet
from jaxmia.models import vae
from jaxmia.table import load_table

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
KL = dict(  # attention in one encoder and one decoder level as well as in the mid blocks
    block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, latent_channels=4,
    sample_size=16, layers_per_block=1, act_fn="silu",
)
VQ = dict(  # vq_embed_dim != latent_channels: the denoiser sees quant_conv's 3 channels
    block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, latent_channels=4,
    vq_embed_dim=3, num_vq_embeddings=32, sample_size=16, layers_per_block=2, scaling_factor=1.0,
)


def randomize(model, seed):
    """diffusers' init plus random norm scales (1 ± 0.2) and biases, so none can hide."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    return model.eval()


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def maxdiff(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.fixture(scope="module")
def kl_folder(tmp_path_factory):
    model = randomize(diffusers.AutoencoderKL(**KL), 0)
    folder = tmp_path_factory.mktemp("kl") / "vae"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.fixture(scope="module")
def vq_folder(tmp_path_factory):
    model = randomize(diffusers.VQModel(**VQ), 1)
    with torch.no_grad():  # codebook spread like the latents, so quantisation picks varied entries
        model.quantize.embedding.weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("vq") / "vqvae"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------


def test_autoencoder_kl_parity_and_codec(kl_folder, images):
    """Posterior mean/log-variance, a sample with given noise and its decoding match diffusers; the
    codec's encode_fn is (posterior sample with the image's own key) × scaling_factor (or the mean
    × scale) and its decode_fn divides by the scale first."""
    model, folder = kl_folder
    module, config, params = load_unet(folder)
    assert isinstance(module, vae.AutoencoderKL) and config.scaling_factor == 0.18215
    with torch.no_grad():
        posterior = model.encode(nchw(images)).latent_dist
        noise = np.random.default_rng(1).standard_normal(nhwc(posterior.mean).shape).astype(np.float32)
        sample_t = posterior.mean + posterior.std * nchw(noise)
        decoded_t = model.decode(sample_t).sample
    spec = vae.build_autoencoder_kl(json.loads((folder / "config.json").read_text()))
    sampled, by_mean = vae.latent_codec(spec), vae.latent_codec(spec, mode="mean", scale=0.5)
    assert (sampled.mode, sampled.scale, sampled.shift, by_mean.mode) == ("sample", 0.18215, 0.0, "mean")
    assert sampled.latent_shape((16, 16, 3)) == (8, 8, 4) and sampled.image_shape((8, 8, 4)) == (16, 16, 3)
    keys = rng.keys_for(rng.root_key(0), rng.id_hashes(["a", "b"]), "encode")

    @jax.jit  # one compiled program for everything below
    def run(p, x, n, k):
        mean, logvar = module.apply({"params": p}, x, method=vae.AutoencoderKL.moments)
        sample = vae.posterior_sample(mean, logvar, n)
        keyed = vae.posterior_sample(mean, logvar, jax.vmap(lambda kk: jax.random.normal(kk, mean.shape[1:]))(k))
        return (mean, logvar, sample, by_mean.decode_fn(p, 0.5 * sample), sampled.encode_fn(p, x, k), keyed,
                by_mean.encode_fn(p, x, k))

    mean, logvar, sample, decoded, z, keyed, z_mean = run(params, images, noise, keys)
    diffs = {"mean": maxdiff(mean, nhwc(posterior.mean)), "logvar": maxdiff(logvar, nhwc(posterior.logvar)),
             "sample": maxdiff(sample, nhwc(sample_t)), "decode": maxdiff(decoded, nhwc(decoded_t))}
    print(f"AutoencoderKL parity (max abs): {diffs}")
    assert max(diffs.values()) <= TOL, diffs
    assert np.abs(nhwc(decoded_t)).max() > 0.1  # a non-trivial output
    # Row i uses only image i and key i (per-image convolutions and norms, one draw per key), so a
    # latent does not depend on its batch.
    np.testing.assert_allclose(z, 0.18215 * keyed, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(z_mean, 0.5 * mean, rtol=1e-6, atol=1e-6)
    assert maxdiff(z[0], z[1]) > 0.01 and maxdiff(z / 0.18215, mean) > 0.01  # keyed draws, not the mean
    with pytest.raises(ValueError, match="encode mode 'pre_quantization' is not one of AutoencoderKL's"):
        vae.latent_codec(spec, mode="pre_quantization")


def test_vq_model_parity(vq_folder, images):
    model, folder = vq_folder
    module, config, params = load_unet(folder)
    assert isinstance(module, vae.VQModel) and config.code_channels == 3
    with torch.no_grad():
        h_t = model.encode(nchw(images)).latents
        quantized_t = model.decode(h_t).sample
        unquantized_t = model.decode(h_t, force_not_quantize=True).sample
    @jax.jit  # one compiled program: encode, quantise, decode with and without quantisation
    def run(p, x):
        h = module.apply({"params": p}, x, method=vae.VQModel.encode)
        return (h, module.apply({"params": p}, h, method=vae.VQModel.quantized),
                module.apply({"params": p}, h, method=vae.VQModel.decode),
                module.apply({"params": p}, h, True, method=vae.VQModel.decode))

    h, codes, quantized, unquantized = run(params, images)
    codes = np.asarray(codes).reshape(-1, 3)
    diffs = {"encode": maxdiff(h, nhwc(h_t)), "decode_quantized": maxdiff(quantized, nhwc(quantized_t)),
             "decode_unquantized": maxdiff(unquantized, nhwc(unquantized_t))}
    print(f"VQModel parity (max abs): {diffs}; {len(np.unique(codes, axis=0))} distinct codes used")
    assert max(diffs.values()) <= TOL, diffs
    assert len(np.unique(codes, axis=0)) > 3  # the quantiser really chooses
    assert maxdiff(nhwc(quantized_t), nhwc(unquantized_t)) > 1e-2  # and it matters


def test_nearest_codes_matches_brute_force():
    r = np.random.default_rng(3)
    z, book = r.standard_normal((5, 7, 3)).astype(np.float32), r.standard_normal((11, 3)).astype(np.float32)
    brute = book[np.argmin(((z[..., None, :] - book) ** 2).sum(-1), axis=-1)]
    np.testing.assert_array_equal(vae.nearest_codes(jnp.asarray(z), jnp.asarray(book)), brute)


def test_old_attention_names_load(kl_folder, tmp_path):
    """Pre-0.14 checkpoints name the VAE attention query/key/value/proj_attn (docs/methods/models.md §4)."""
    _, folder = kl_folder
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old = {}
    for key, value in state.items():
        for new, legacy in renames.items():
            key = key.replace(new, legacy)
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((folder / "config.json").read_text())
    save_file(old, str(legacy / "diffusion_pytorch_model.safetensors"))
    from jaxmia.models import weights_digest

    assert weights_digest(load_unet(legacy)[2]) == weights_digest(load_unet(folder)[2])


def test_config_refusals(tmp_path):
    base = diffusers.AutoencoderKL(**KL).config
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in base.items() if not k.startswith("_")}
    config["_class_name"] = "AutoencoderKL"
    for change, message in (({"bogus": 1}, "unknown AutoencoderKL config key.*'bogus'"),
                            ({"latents_mean": [0.0] * 4}, "latents_mean=.*not supported"),
                            ({"down_block_types": ["CrossAttnDownBlock2D", "DownEncoderBlock2D"]},
                             r"down_block_types\[0\]='CrossAttnDownBlock2D' is not supported"),
                            ({"norm_num_groups": 3}, r"block_out_channels\[0\]=8 must be a positive multiple"),
                            ({"scaling_factor": "0.18"}, "scaling_factor='0.18' must be a number")):
        with pytest.raises(ValueError, match=message):
            vae.AutoencoderKLConfig.from_diffusers({**config, **change}, source="cfg")
    vq = {"_class_name": "VQModel", **{k: v for k, v in VQ.items()}, "norm_type": "spatial"}
    with pytest.raises(ValueError, match="norm_type='spatial' is not supported"):
        vae.VQModelConfig.from_diffusers(vq, source="cfg")


# --------------------------------------------------------------------------------------------------
# A latent pipeline end to end
# --------------------------------------------------------------------------------------------------

LATENT_UNET = dict(  # one level: the features program compiles it several times
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8,), layers_per_block=1,
    norm_num_groups=4, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), attention_head_dim=None,
)
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}


@pytest.fixture(scope="module")
def latent_pipeline(kl_folder, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("latent") / "pipe"
    shutil.copytree(kl_folder[1], root / "vae")
    randomize(diffusers.UNet2DModel(**LATENT_UNET), 2).save_pretrained(root / "unet", safe_serialization=True)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "unet": ["diffusers", "UNet2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    return root


def test_latent_pipeline_loads(latent_pipeline, kl_folder):
    d = load_denoiser(latent_pipeline)
    assert d.is_latent and d.sample_shape == (8, 8, 4) and d.image_shape == (16, 16, 3) == d.input_shape
    assert d.x0_clip is None and d.cond_kind == "none" and not d.learned_sigma
    assert d.encode_fn is not None and d.decode_fn is not None and d.encoder_params is not None
    # The digest covers the encode mode and the scale as well as both networks.
    assert load_denoiser(latent_pipeline, encode="mean").digest != d.digest
    with pytest.raises(ValueError, match="the denoiser of a latent pipeline.*load the pipeline folder"):
        load_denoiser(latent_pipeline / "unet")
    with pytest.raises(ValueError, match="AutoencoderKL is an autoencoder, not a denoiser"):
        load_denoiser(kl_folder[1], schedule=d.schedule)
    with pytest.raises(ValueError, match="encode mode 'quantized' is not one of AutoencoderKL's"):
        load_denoiser(latent_pipeline, encode="quantized")


def test_latent_features_end_to_end(latent_pipeline, tmp_path):
    """`jaxmia features --features loss,pia` runs on a latent pipeline: images in, one encoding per
    image (keyed by (seed, id, "encode"); checked in test_kl_codec_scales_and_keys), kernels on the
    8×8×4 latents, a table keyed by the latent model's digest."""
    ids = [f"img{i}" for i in range(4)]
    images = np.random.default_rng(5).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", images=images, ids=np.array(ids))
    out = tmp_path / "feats.npz"
    result = CliRunner().invoke(main, ["features", str(latent_pipeline), str(tmp_path / "data.npz"),
                                       "--features", "loss,pia", "--out", str(out), "--batch-size", "4",
                                       "--seed", "3"])
    assert result.exit_code == 0, result.output
    table = load_table(out)
    assert list(table.ids) == ids and {"dl", "pia"} <= set(table.names)
    assert np.all(np.isfinite(table.values)) and np.all(table.values[:, list(table.names).index("dl")] > 0)
    assert table.meta["model_digest"] == load_denoiser(latent_pipeline).digest
    # Images of the wrong size are refused against the pixel shape, not the latent one.
    np.savez(tmp_path / "small.npz", images=images[:, :8, :8], ids=np.array(ids))
    result = CliRunner().invoke(main, ["features", str(latent_pipeline), str(tmp_path / "small.npz"),
                                       "--features", "loss", "--out", str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and "(16, 16, 3)" in result.output
