"""``--format uvit`` / ``--format uvit_t2i``: official U-ViT checkpoints (baofff/U-ViT) → pipeline folders.

Inputs: the released ``imagenet{256,512}_uvit_{huge,large}.pth``, ``cifar10/celeba64/imagenet64_*.pth``
(``libs/uvit.py``, format ``uvit``) and ``mscoco_uvit_small*.pth`` (``libs/uvit_t2i.py``, format
``uvit_t2i``): flat state dicts, loaded upstream with ``nnet.load_state_dict(torch.load(path))``
(strict). A training run's ``nnet_ema.pth`` has the same layout. Latent models need the first
stage: ``autoencoder=PATH`` to ``autoencoder_kl.pth`` / ``autoencoder_kl_ema.pth``
(:mod:`jaxmia.models.official.kl_autoencoder`). Files are read by jaxmia's restricted reader.

Architecture from the shapes: ``patch_embed.proj`` → width, channels, patch; ``in_blocks.<i>`` →
depth = 2·(in-blocks); ``mlp.fc1`` → mlp ratio; ``qkv.bias``, ``time_embed.0``, ``final_layer``,
``skip_linear`` present or not → ``qkv_bias``, ``mlp_time_embed``, ``conv``, ``skip``; ``label_emb``
→ classes (none: unconditional); ``pos_embed`` → image size (after 2 extra tokens with classes, 1
without; T2I: 1 + ``num_clip_token``); ``context_embed`` → ``clip_dim``. Not in the shapes, hence
options with the official configs' values: ``num_heads`` (by width: 512/8, 768/12, 1024/16,
1152/16), ``num_clip_token`` (77), the latent scale (0.18215, ``libs/autoencoder.get_model``; the
COCO config sets 0.23010) and the timestep convention:

* ``timesteps=discrete`` (default; ``*_huge`` by ``train_ldm_discrete.py``, mscoco by
  ``train_t2i_discrete.py``): β = linspace(√0.00085, √0.012, 1000)², index n ∈ 0..1000 with n = 0
  clean (``first_index_clean``), the network fed n;
* ``timesteps=continuous`` (``*_large`` by ``train_ldm.py``, pixel models by ``train.py``): the VP-SDE
  with β(t) from 0.1 to 20, ā(t) = exp(−0.1·t − 9.95·t²), read at t = n/1000 (n ∈ 0..1000, n = 0
  clean) and written as ``trained_betas``; the network fed t·999 = 0.999·n (``timestep_scale``).

Output: ``transformer/`` (:mod:`jaxmia.models.uvit`), ``vae/`` (latent models; ``scaling_factor``
= the scale), ``scheduler/scheduler_config.json``, ``model_index.json``, ``jaxmia_conversion.json``.
Discrete-time latent models agree with ``configs/families/uvit.toml`` / ``uvit_t2i.toml``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from flax import traverse_util

from jaxmia.models import convert
from jaxmia.models.official import kl_autoencoder
from jaxmia.models.official.registry import register_format
from jaxmia.models.official.output import (check_keys, choice_option, count_indexed, float_option, int_option,
                                           num_heads, path_option, require, source_record, write_pipeline)
from jaxmia.models.torch_checkpoint import flat_state_dict, read_torch_checkpoint
from jaxmia.models.uvit import OFFICIAL_NUM_HEADS, UViTConfig, UViTT2IConfig, abstract_params

# libs/autoencoder.get_model's default, and configs/mscoco_uvit_small.py's autoencoder.scale_factor.
LATENT_SCALE = {"uvit": 0.18215, "uvit_t2i": 0.23010}
NUM_CLIP_TOKEN = 77  # configs/mscoco_uvit_small.py (CLIP ViT-L/14 token embeddings)
TIMESTEPS = ("discrete", "continuous")
VPSDE_BETA = (0.1, 20.0)  # sde.VPSDE(beta_min, beta_max)
CONTINUOUS_SCALE = 0.999  # sde.ScoreModel.predict: nnet(xt, t * 999)
T = 1000


def read_config(state: dict, options: dict, fmt: str, source: str):
    """The network config from the state dict's shapes and the options."""
    width, in_chans, patch, patch_w = require(state, "patch_embed.proj.weight", source, 4)
    if patch != patch_w:
        raise ValueError(f"{source}: patch_embed.proj.weight has a {patch}x{patch_w} kernel; U-ViT patches are square")
    n_in = count_indexed(state, "in_blocks.", ".attn.qkv.weight", source)
    n_out = count_indexed(state, "out_blocks.", ".attn.qkv.weight", source)
    if n_in == 0 or n_in != n_out:
        raise ValueError(f"{source}: {n_in} in_blocks and {n_out} out_blocks; U-ViT has depth // 2 of each (>= 1)")
    mlp_hidden = require(state, "in_blocks.0.mlp.fc1.weight", source, 2)[0]
    _, tokens, pos_width = require(state, "pos_embed", source, 3)
    if pos_width != width:
        raise ValueError(f"{source}: pos_embed is {pos_width} wide but patch_embed makes {width}-wide tokens")
    text = fmt == "uvit_t2i"
    common = dict(patch_size=patch, in_chans=in_chans, embed_dim=width, depth=2 * n_in,
                  num_heads=num_heads(options, width, OFFICIAL_NUM_HEADS, fmt, "embed_dim"),
                  mlp_ratio=mlp_hidden / width, qkv_bias="in_blocks.0.attn.qkv.bias" in state,
                  mlp_time_embed="time_embed.0.weight" in state, conv="final_layer.weight" in state,
                  skip="out_blocks.0.skip_linear.weight" in state)
    if text:
        if "label_emb.weight" in state:
            raise ValueError(f"{source}: has label_emb (a class-conditional libs/uvit.py model); use --format uvit")
        clip_dim = require(state, "context_embed.weight", source, 2)[1]
        num_clip_token = int_option(options, "num_clip_token", fmt)
        num_clip_token = NUM_CLIP_TOKEN if num_clip_token is None else num_clip_token
        if num_clip_token < 1:
            raise ValueError(f"--format {fmt}: num_clip_token={num_clip_token} must be positive")
        extras = 1 + num_clip_token
    else:
        if "context_embed.weight" in state:
            raise ValueError(f"{source}: has context_embed (a libs/uvit_t2i.py model); use --format uvit_t2i")
        if options.get("num_clip_token") is not None:
            raise ValueError(f"--format {fmt}: num_clip_token applies to --format uvit_t2i only")
        num_classes = require(state, "label_emb.weight", source, 2)[0] if "label_emb.weight" in state else -1
        extras = 2 if num_classes > 0 else 1
    grid = math.isqrt(max(tokens - extras, 0))
    if tokens <= extras or grid * grid != tokens - extras:
        what = f"1 time + {extras - 1} context tokens (num_clip_token)" if text else f"{extras} extra token(s)"
        raise ValueError(f"{source}: pos_embed has {tokens} tokens, which is not {what} plus a square patch grid")
    common["img_size"] = grid * patch
    if choice_option(options, "timesteps", TIMESTEPS, fmt) == "continuous":
        common["timestep_scale"] = CONTINUOUS_SCALE
    if text:
        return UViTT2IConfig(**common, clip_dim=clip_dim, num_clip_token=num_clip_token)
    return UViTConfig(**common, num_classes=num_classes)


def convert_state_dict(state: dict, options: dict, fmt: str, source: str):
    """(config, Flax params); every missing or unexpected key refused by its official name."""
    config = read_config(state, options, fmt, source)
    config.validate(source=source)
    target = abstract_params(config)
    check_keys(state, {convert.torch_key_of(p) for p in traverse_util.flatten_dict(target)}, source)
    return config, convert.torch_to_flax(state, target, source=source)


def vpsde_alpha_bar(n) -> np.ndarray:
    """ā at t = n / 1000 of U-ViT's VP-SDE: exp(−∫₀ᵗ β(s) ds), β(s) = β₀ + (β₁ − β₀)·s."""
    t = np.asarray(n, np.float64) / T
    b0, b1 = VPSDE_BETA
    return np.exp(-(b0 * t + 0.5 * (b1 - b0) * t**2))


def scheduler_config(timesteps: str, latent: bool) -> dict:
    base = {"_class_name": "DDPMScheduler", "num_train_timesteps": T, "prediction_type": "epsilon",
            "first_index_clean": True, "clip_sample": not latent}
    if timesteps == "discrete":  # train_ldm_discrete.py: stable_diffusion_beta_schedule()
        return {**base, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    ab = vpsde_alpha_bar(np.arange(T + 1))
    return {**base, "trained_betas": [float(b) for b in 1.0 - ab[1:] / ab[:-1]]}


def _convert(fmt: str, src: Path, dst: Path, options: dict) -> dict:
    from jaxmia.models.formats import require_empty_folder

    require_empty_folder(Path(dst))
    src = Path(src)
    timesteps = choice_option(options, "timesteps", TIMESTEPS, fmt)
    scale = float_option(options, "scale", fmt) or LATENT_SCALE[fmt]
    ae_path = path_option(options, "autoencoder", fmt, folder=False)
    state = flat_state_dict(read_torch_checkpoint(src), source=str(src))
    config, params = convert_state_dict(state, options, fmt, str(src))
    vae = None
    if ae_path is not None:
        ae_state = flat_state_dict(read_torch_checkpoint(ae_path), source=str(ae_path))
        ae_config = kl_autoencoder.read_config(ae_state, source=str(ae_path), scaling_factor=scale, sample_size=1)
        vae = kl_autoencoder.convert_state_dict(ae_state, source=str(ae_path), scaling_factor=scale,
                                                sample_size=config.img_size * ae_config.downsample_factor)
        if vae[0].latent_channels != config.in_chans:
            raise ValueError(f"{ae_path}: makes {vae[0].latent_channels}-channel latents but {src} takes "
                             f"{config.in_chans} channels")
    elif config.in_chans != 3:
        raise ValueError(f"--format {fmt}: {src} takes {config.in_chans}-channel latents; pass --option "
                         f"autoencoder=PATH (autoencoder_kl.pth or autoencoder_kl_ema.pth)")
    elif options.get("scale") is not None:
        raise ValueError(f"--format {fmt}: scale applies to latent models (with autoencoder=PATH) only")
    record = {"source": source_record(src), "config": config.to_diffusers(), "timesteps": timesteps,
              "autoencoder": None if ae_path is None else source_record(ae_path),
              "latent_scale": None if vae is None else scale}
    return write_pipeline(Path(dst), pipeline_class="UViTPipeline", denoiser_config=config, denoiser_params=params,
                          scheduler_config=scheduler_config(timesteps, vae is not None), vae=vae, record=record)


_OPTIONS = {
    "num_heads": "attention heads (default by width, the official configs: 512/8 768/12 1024/16 1152/16)",
    "autoencoder": "the first stage, autoencoder_kl.pth / autoencoder_kl_ema.pth (required for latent models)",
    "timesteps": "discrete (default: *_huge, mscoco) or continuous (VP-SDE: *_large, pixel models)",
}


@register_format("uvit", "official U-ViT .pth (baofff/U-ViT libs/uvit.py: class-conditional or unconditional)",
                 options={**_OPTIONS, "scale": f"latent scale (default {LATENT_SCALE['uvit']})"})
def convert_uvit(src: Path, dst: Path, **options) -> dict:
    return _convert("uvit", src, dst, options)


@register_format("uvit_t2i", "official U-ViT text-to-image .pth (baofff/U-ViT libs/uvit_t2i.py, MS-COCO)",
                 options={**_OPTIONS, "scale": f"latent scale (default {LATENT_SCALE['uvit_t2i']}, the COCO config's)",
                          "num_clip_token": f"context tokens (default {NUM_CLIP_TOKEN})"})
def convert_uvit_t2i(src: Path, dst: Path, **options) -> dict:
    return _convert("uvit_t2i", src, dst, options)
