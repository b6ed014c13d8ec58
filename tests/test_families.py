"""The model-family registry (configs/families/*.toml) and how load_denoiser uses it: values checked
against docs/methods/cdi.md §9 with NumPy oracles of the schedules; folders built with Flax (no torch)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from jaxmia import schedule as sched
from jaxmia.models import families, load_denoiser, save_unet, vae
from jaxmia.models.unet2d import UNet2DConfig, UNet2DModel, init_params

ALL = ["ddpm_pixel", "dit", "ldm", "sd", "uvit", "uvit_t2i"]


def test_registry_lists_the_families():
    assert families.list_families() == ALL
    for kind, class_name in families.AUTOENCODER_CLASSES.items():  # the two tables agree
        assert families.ENCODE_MODES[kind] == vae.ENCODE_MODES[class_name]
    for name in ALL:
        family = families.load_family(name)
        assert family.name == name and family.description and family.reference
        assert family.make_schedule().alphas_cumprod.shape[0] in (1000, 1001)


@pytest.mark.parametrize("name, beta, latent, cond, convention, learned_sigma", [
    ("ddpm_pixel", ("linear", 1e-4, 0.02), ("none", "none", None), "none", "standard", False),
    ("ldm", ("scaled_linear", 0.0015, 0.0195), ("vq", "pre_quantization", 1.0), "class", "standard", False),
    ("dit", ("linear", 1e-4, 0.02), ("kl", "sample", 0.18215), "class", "standard", True),
    ("uvit", ("scaled_linear", 0.00085, 0.012), ("kl", "sample", 0.18215), "class", "first_index_clean", False),
    ("uvit_t2i", ("scaled_linear", 0.00085, 0.012), ("kl", "sample", 0.23010), "text", "first_index_clean", False),
    ("sd", ("scaled_linear", 0.00085, 0.012), ("kl", "sample", 0.18215), "text", "standard", False),
])
def test_family_values(name, beta, latent, cond, convention, learned_sigma):
    """docs/methods/cdi.md §9's table, row by row."""
    f = families.load_family(name)
    assert (f.schedule.beta_schedule, f.schedule.beta_start, f.schedule.beta_end) == beta
    assert f.schedule.num_train_timesteps == 1000 and f.schedule.prediction_type == "epsilon"
    assert (f.latent.kind, f.latent.encode, f.latent.scale) == latent
    assert f.conditioning.kind == cond and f.schedule.timestep_convention == convention
    assert f.learned_sigma is learned_sigma and f.is_latent == (latent[0] != "none")
    if cond == "text":
        assert f.conditioning.context_shape == (77, 768)
    if name in ("dit", "uvit", "ldm"):  # ldm: cin256-v2's 1001-row ClassEmbedder, row 1000 the null label
        assert (f.conditioning.num_classes, f.conditioning.null_class) == (1000, 1000)


def test_schedules_against_numpy():
    # LDM: CompVis "sqrt-linear" betas.
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    ldm = families.load_family("ldm").make_schedule()
    np.testing.assert_allclose(ldm.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(ldm.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)
    assert not ldm.clip_sample
    # U-ViT: the shifted index, ā[0] = 1 and ā[n] = Π_{i=1..n}(1 − β_i), T + 1 entries.
    uvit = families.load_family("uvit").make_schedule()
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert uvit.alphas_cumprod.shape == (1001,) and float(uvit.alphas_cumprod[0]) == 1.0
    np.testing.assert_allclose(uvit.alphas_cumprod[1:], np.cumprod(1 - betas), rtol=1e-5)
    np.testing.assert_allclose(uvit.alphas_cumprod[500], np.prod(1 - betas[:500]), rtol=1e-5)
    # pixel DDPM: linear, clip x̂0 (pixels live in [-1, 1]).
    ddpm = families.load_family("ddpm_pixel").make_schedule()
    np.testing.assert_allclose(ddpm.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)
    assert ddpm.clip_sample


@pytest.fixture
def family_file(tmp_path):
    def write(text, name="mine"):
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        return path

    return write, (families.FAMILIES_DIR / "dit.toml").read_text().replace('name = "dit"', 'name = "mine"')


def test_bad_family_files_refused(family_file):
    write, good = family_file
    assert families.load_family(write(good)).latent.scale == 0.18215
    with pytest.raises(ValueError, match=r"unknown model family 'nope' \(known: ddpm_pixel, dit, ldm"):
        families.load_family("nope")
    cases = [
        ("extra = 1\n" + good, "unknown key.*'extra'"),
        (good + "extra = 1\n", "unknown key.*'conditioning.extra'"),
        (good.replace("[latent]", "[latent]\nbogus = 2"), "unknown key.*'latent.bogus'"),
        (good.replace("beta_end = 0.02\n", ""), "missing key.*'schedule.beta_end'"),
        (good.replace("num_train_timesteps = 1000", 'num_train_timesteps = "1000"'),
         "schedule.num_train_timesteps='1000' must be an int"),
        (good.replace('encode = "sample"', 'encode = "pre_quantization"'),
         "latent.encode='pre_quantization' is not a 'kl'"),
        (good.replace('kind = "kl"', 'kind = "gan"'), "latent.kind='gan' is not one of none, kl, vq"),
        (good.replace('beta_schedule = "linear"', 'beta_schedule = "cosine"'), "beta_schedule='cosine' is not one of"),
        (good.replace("scale = 0.18215", "scale = -1.0"), "latent.scale=-1.0 must be a positive number"),
        (good.replace("null_class = 1000", 'context_shape = [77, 768]'), "unknown key.*'conditioning.context_shape'"),
        (good.replace("learned_sigma = true", "learned_sigma = 1"), "learned_sigma=1 must be a bool"),
        (good + "[[", "not valid TOML"),
    ]
    for text, message in cases:
        with pytest.raises(ValueError, match=message):
            families.load_family(write(text))
    with pytest.raises(ValueError, match="name='mine' does not match the file name 'other'"):
        families.load_family(write(good, name="other"))
    record = families.load_family(write(good))
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.name = "x"


# --------------------------------------------------------------------------------------------------
# load_denoiser(..., family=...)
# --------------------------------------------------------------------------------------------------

LATENT_UNET = UNet2DConfig(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(8,), layers_per_block=1,
                           norm_num_groups=4, down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                           attention_head_dim=None)
KL = vae.AutoencoderKLConfig(block_out_channels=(4, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=8)
VQ = vae.VQModelConfig(block_out_channels=(4, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                       up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, sample_size=8, latent_channels=4,
                       num_vq_embeddings=16, scaling_factor=1.0)


def write_pipeline(root, unet_config, autoencoder=None, scheduler=None):
    save_unet(root / "unet", unet_config, init_params(UNet2DModel(unet_config), 0))
    if autoencoder is not None:
        kl = isinstance(autoencoder, vae.AutoencoderKLConfig)
        module, name = (vae.AutoencoderKL(autoencoder), "vae") if kl else (vae.VQModel(autoencoder), "vqvae")
        save_unet(root / name, autoencoder, vae.init_params(module, 1))
    if scheduler is not None:
        (root / "scheduler").mkdir(parents=True)
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_family_fills_a_uvit_pipeline(tmp_path):
    """U-ViT folders cannot say 'first_index_clean' or may lack a scale: the family fills both."""
    pipe = write_pipeline(tmp_path / "uvit", dataclasses.replace(LATENT_UNET, num_class_embeds=10),
                          KL, scheduler={"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    edit_json(pipe / "vae" / "config.json", scaling_factor=None)
    plain = load_denoiser(pipe)
    assert plain.schedule.alphas_cumprod.shape == (1000,)
    d = load_denoiser(pipe, family="uvit")
    assert d.schedule.alphas_cumprod.shape == (1001,) and float(d.schedule.alphas_cumprod[0]) == 1.0
    assert d.is_latent and d.x0_clip is None and d.image_shape == (8, 8, 3) and d.cond_kind == "class"
    assert d.digest == plain.digest  # same weights, same default mode (sample) and scale (0.18215)
    # The family's encode mode can be overridden explicitly; the digest records it.
    assert load_denoiser(pipe, family="uvit", encode="mean").digest != d.digest
    # An explicit, different scale in the folder is a conflict, never silently replaced.
    edit_json(pipe / "vae" / "config.json", scaling_factor=0.5)
    with pytest.raises(ValueError, match=r"scaling_factor=0.5 conflicts with model family 'uvit' \(latent scale 0.18215"):
        load_denoiser(pipe, family="uvit")
    edit_json(pipe / "vae" / "config.json", scaling_factor=0.18215)
    edit_json(pipe / "scheduler" / "scheduler_config.json", first_index_clean=False)
    with pytest.raises(ValueError, match="first_index_clean=False conflicts with model family 'uvit'"):
        load_denoiser(pipe, family="uvit")
    # A family whose conditioning differs is refused (U-ViT T2I takes text).
    with pytest.raises(ValueError, match="conditioning is 'class' but model family 'uvit_t2i' says 'text'"):
        load_denoiser(pipe, family="uvit_t2i")


def test_family_checks_dit_and_ldm(tmp_path):
    learned = dataclasses.replace(LATENT_UNET, out_channels=8, num_class_embeds=10)
    dit = write_pipeline(tmp_path / "dit", learned, KL)  # no scheduler: the family's
    d = load_denoiser(dit, family="dit")
    assert d.learned_sigma and d.schedule.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(d.schedule.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="no scheduler config.*family="):
        load_denoiser(dit)
    ldm = write_pipeline(tmp_path / "ldm", dataclasses.replace(LATENT_UNET, num_class_embeds=10), VQ,
                         scheduler={"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195,
                                    "clip_sample": False})
    d = load_denoiser(ldm, family="ldm")
    assert d.image_shape == (8, 8, 3) and d.sample_shape == (4, 4, 4) and not d.learned_sigma
    with pytest.raises(ValueError, match="learned_sigma is False but model family 'dit' says True"):
        load_denoiser(ldm, family="dit")
    with pytest.raises(ValueError, match="the autoencoder is VQModel but model family 'uvit' uses AutoencoderKL"):
        load_denoiser(ldm, family="uvit", schedule=sched.make_schedule())
    edit_json(ldm / "scheduler" / "scheduler_config.json", beta_schedule="linear")
    with pytest.raises(ValueError, match="beta_schedule='linear' conflicts with model family 'ldm'"):
        load_denoiser(ldm, family="ldm")


def test_family_on_pixel_models(tmp_path):
    pixel = dataclasses.replace(LATENT_UNET, in_channels=3, out_channels=3)
    pipe = write_pipeline(tmp_path / "px", pixel,
                          scheduler={"beta_schedule": "linear", "trained_betas": list(np.linspace(1e-4, 0.02, 1000))})
    d = load_denoiser(pipe, family="ddpm_pixel")
    assert d.x0_clip == 1.0 and not d.is_latent
    with pytest.raises(ValueError, match="the model is pixel-space but model family 'sd' says latent kind 'kl'"):
        load_denoiser(pipe, family="sd", schedule=sched.make_schedule())
    edit_json(pipe / "scheduler" / "scheduler_config.json", trained_betas=list(np.linspace(1e-4, 0.03, 1000)))
    with pytest.raises(ValueError, match="trained_betas differ from family 'ddpm_pixel'"):
        load_denoiser(pipe, family="ddpm_pixel")
    with pytest.raises(ValueError, match="encode='mean' applies to latent pipelines only"):
        load_denoiser(pipe, encode="mean", schedule=sched.make_schedule())
    with pytest.raises(ValueError, match="unknown model family 'cifar'"):
        load_denoiser(pipe, family="cifar")
    shutil.rmtree(pipe / "scheduler")
    assert load_denoiser(pipe, family="ddpm_pixel").schedule.clip_sample
