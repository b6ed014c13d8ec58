"""``--format dit``: an official DiT checkpoint (facebookresearch/DiT) → a latent pipeline folder.

Input: ``DiT-XL-2-256x256.pt`` / ``DiT-XL-2-512x512.pt`` (a flat state dict, as ``download.py``
returns it and ``sample.py`` loads it), or a ``train.py`` checkpoint ``{"model", "ema", "opt",
"args"}``, whose ``"ema"`` entry is taken by default as the official ``find_model`` does
(``weights=model`` takes the raw weights). The file is read by jaxmia's restricted reader: nothing
in it runs.

Architecture from the shapes (``x_embedder.proj`` → hidden size, channels, patch; ``pos_embed`` →
grid, so input size; ``blocks.<i>`` → depth; ``mlp.fc1`` → mlp ratio; ``final_layer.linear`` →
learned σ; the label table → classes, its last row the null class). Not in the shapes: the head
count (option ``num_heads``, default that of the official model of the same width: DiT-S/B/L/XL
384/6, 768/12, 1024/16, 1152/16). ``pos_embed`` is loaded, not recomputed (the file may hold any
table).

Output (``dst``): ``transformer/`` (:class:`jaxmia.models.dit_official.DiT`), ``vae/`` (the
autoencoder the user supplies as a diffusers ``AutoencoderKL`` folder, ``vae=PATH``:
``stabilityai/sd-vae-ft-mse`` for the released models, as ``sample.py`` uses; its
``scaling_factor`` must be DiT's 0.18215), ``scheduler/scheduler_config.json`` (the official
``create_diffusion`` schedule: linear β from 1e-4 to 0.02 over 1000 steps, t ∈ 0..999, ε-prediction
with learned-range variance), ``model_index.json`` and ``jaxmia_conversion.json``. It agrees with
``configs/families/dit.toml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
from flax import traverse_util

from jaxmia.models import convert as rules
from jaxmia.models.dit_official import (FREQUENCY_EMBEDDING_SIZE, OFFICIAL_NUM_HEADS, DiTOfficialConfig,
                                        abstract_params)
from jaxmia.models.official.registry import register_format
from jaxmia.models.official.output import (check_keys, choice_option, count_indexed, int_option, num_heads,
                                           path_option, require, source_record, write_pipeline)
from jaxmia.models.torch_checkpoint import flat_state_dict, read_torch_checkpoint

FORMAT = "dit"
# sample.py: vae.decode(samples / 0.18215); train.py: x = vae.encode(x).latent_dist.sample().mul_(0.18215)
LATENT_SCALE = 0.18215
SCHEDULER_CONFIG = {
    # diffusion/__init__.py create_diffusion: get_named_beta_schedule("linear", 1000) =
    # linspace(1e-4, 0.02, 1000) in float64; learn_sigma -> ModelVarType.LEARNED_RANGE.
    "_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "first_index_clean": False,
    "clip_sample": False, "variance_type": "learned_range",
}
WEIGHTS = ("auto", "ema", "model")


def load_state_dict(src: Path, which: str) -> tuple[dict, str]:
    """(flat state dict, what was taken): a flat dict as is; a training checkpoint's ``ema``
    (``auto``/``ema``) or ``model`` entry."""
    obj = read_torch_checkpoint(src)
    training = isinstance(obj, Mapping) and any(isinstance(obj.get(k), Mapping) for k in ("ema", "model"))
    if not training:
        if which != "auto":
            raise ValueError(f"{src}: a flat state dict (a released DiT file) holds no {which!r} entry; "
                             f"leave the option weights unset")
        return flat_state_dict(obj, source=str(src)), "state dict"
    key = "ema" if which in ("auto", "ema") else "model"
    return flat_state_dict(obj, source=str(src), key=key), f"training checkpoint [{key}]"


def read_config(state: dict, options: dict, source: str) -> DiTOfficialConfig:
    hidden, in_channels, patch, patch_w = require(state, "x_embedder.proj.weight", source, 4)
    if patch != patch_w:
        raise ValueError(f"{source}: x_embedder.proj.weight has a {patch}x{patch_w} kernel; DiT patches are square")
    _, tokens, width = require(state, "pos_embed", source, 3)
    grid = math.isqrt(tokens)
    if grid * grid != tokens or width != hidden:
        raise ValueError(f"{source}: pos_embed {tuple(np.shape(state['pos_embed']))} is not a square grid of "
                         f"{hidden}-wide tokens")
    depth = count_indexed(state, "blocks.", ".attn.qkv.weight", source)
    if depth == 0:
        raise ValueError(f"{source}: no blocks.<i>.attn.qkv.weight keys: not a DiT checkpoint")
    mlp_hidden = require(state, "blocks.0.mlp.fc1.weight", source, 2)[0]
    out = require(state, "final_layer.linear.weight", source, 2)[0]
    if out not in (patch * patch * in_channels, 2 * patch * patch * in_channels):
        raise ValueError(f"{source}: final_layer.linear makes {out} features per token, neither p²·C = "
                         f"{patch * patch * in_channels} nor 2·p²·C (learned sigma)")
    freq = require(state, "t_embedder.mlp.0.weight", source, 2)[1]
    if freq != FREQUENCY_EMBEDDING_SIZE:
        raise ValueError(f"{source}: t_embedder.mlp.0 reads {freq} frequencies; the official DiT uses "
                         f"{FREQUENCY_EMBEDDING_SIZE}")
    rows = require(state, "y_embedder.embedding_table.weight", source, 2)[0]
    num_classes = int_option(options, "num_classes", FORMAT)
    if num_classes is None:
        num_classes = rows - 1  # label dropout in training (every released model): the last row is the null class
    if num_classes not in (rows - 1, rows) or num_classes < 1:
        raise ValueError(f"--format {FORMAT}: num_classes={num_classes} does not fit the {rows}-row label table "
                         f"(num_classes + 1 rows with a null class, num_classes rows without)")
    return DiTOfficialConfig(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden, depth=depth,
        num_heads=num_heads(options, hidden, OFFICIAL_NUM_HEADS, FORMAT, "hidden_size"),
        mlp_ratio=mlp_hidden / hidden, class_dropout_prob=0.1 if num_classes == rows - 1 else 0.0,
        num_classes=num_classes, learn_sigma=out == 2 * patch * patch * in_channels)


def convert_state_dict(state: dict, options: dict, source: str) -> tuple[DiTOfficialConfig, dict]:
    """(config, Flax params); every missing or unexpected key refused by its official name."""
    config = read_config(state, options, source)
    config.validate(source=source)
    target = abstract_params(config)
    check_keys(state, {rules.torch_key_of(p) for p in traverse_util.flatten_dict(target)}, source)
    return config, rules.torch_to_flax(state, target, source=source)


def load_vae(folder: Path):
    """(AutoencoderKLConfig, params) of a diffusers AutoencoderKL folder (safetensors or Flax msgpack)."""
    from jaxmia.models.loading import load_unet
    from jaxmia.models.vae import AutoencoderKLConfig

    _, config, params = load_unet(folder)
    if not isinstance(config, AutoencoderKLConfig):
        raise ValueError(f"{folder}: a {type(config).__name__}, not an AutoencoderKL folder")
    if not math.isclose(config.scaling_factor, LATENT_SCALE, rel_tol=1e-9):
        raise ValueError(f"{folder}: scaling_factor={config.scaling_factor} but DiT's latents are scaled by "
                         f"{LATENT_SCALE} (sample.py, train.py)")
    return config, params


@register_format(FORMAT, "official DiT .pt (facebookresearch/DiT; flat state dict or train.py checkpoint)", options={
    "vae": "diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-mse); required",
    "num_heads": "attention heads (default: the official model of that width, 384/6 768/12 1024/16 1152/16)",
    "num_classes": "classes without the null row (default: label-table rows - 1)",
    "weights": "training checkpoints: ema (default, as find_model) or model",
})
def convert(src: Path, dst: Path, **options) -> dict:
    """Converts ``src`` into the pipeline folder ``dst`` (new or empty); returns the conversion record."""
    from jaxmia.models.formats import require_empty_folder

    require_empty_folder(Path(dst))
    vae_dir = path_option(options, "vae", FORMAT, folder=True)
    if vae_dir is None:
        raise ValueError(f"--format {FORMAT}: DiT is a latent model; pass --option vae=PATH (a diffusers "
                         f"AutoencoderKL folder, e.g. stabilityai/sd-vae-ft-mse)")
    which = choice_option(options, "weights", WEIGHTS, FORMAT)
    state, taken = load_state_dict(Path(src), which)
    config, params = convert_state_dict(state, options, f"{src} [{taken}]")
    vae = load_vae(vae_dir)
    record = {"source": source_record(Path(src)), "weights": taken, "config": config.to_diffusers(),
              "vae": str(vae_dir), "latent_scale": LATENT_SCALE,
              "notes": "pos_embed loaded from the file; timestep sinusoid 10000^(-i/128), [cos, sin]"}
    return write_pipeline(Path(dst), pipeline_class="DiTPipeline", denoiser_config=config, denoiser_params=params,
                          scheduler_config=SCHEDULER_CONFIG, vae=vae, record=record)
