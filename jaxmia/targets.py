"""jaxmia's own target models: small DDPMs trained on bundled data with a known member split.

Nothing can be downloaded here, so the project trains its targets on data installed packages
ship: the demo target on scikit-learn's ``load_digits`` (:mod:`jaxmia.data.demo`), the RGB target
on 32×32 patches of three photographs (:mod:`jaxmia.data.photos`). A target folder is diffusers-shaped:

  unet/config.json, unet/diffusion_flax_model.msgpack   the network (Flax msgpack)
  scheduler/scheduler_config.json                        the noise schedule
  split.json                                             member / non-member ids, seed, size
  recipe.json                                            how it was trained, timings, loss curve
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import numpy as np

from jaxmia import schedule as sched
from jaxmia.data.demo import DEMO_SIZE, digits
from jaxmia.data.photos import DOWNSCALE, PATCH, PHOTO_SOURCES, patches_digest, photo_patches, photo_split
from jaxmia.models import Denoiser, build_model, init_params, save_unet, weights_digest
from jaxmia.train import TrainConfig, train_denoiser


def demo_unet_config(size: int = DEMO_SIZE, channels: int = 1) -> dict:
    """The demo target's UNet: 3 levels (16, 32, 32) at 8, 4 and 2 px, attention at 4 px."""
    return {
        "_class_name": "UNet2DModel",
        "sample_size": size,
        "in_channels": channels,
        "out_channels": channels,
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": None,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


@dataclass(frozen=True)
class TargetRecipe:
    n_members: int = 200
    split_seed: int = 0
    size: int = DEMO_SIZE
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2500, batch_size=32, learning_rate=3e-3))
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000


def digits_split(n_members: int, seed: int) -> tuple[list, list]:
    """A seeded member / non-member split of the 1,797 digits."""
    ids, _, _ = digits(DEMO_SIZE)
    if not 0 < n_members < len(ids):
        raise ValueError(f"n_members must be in 1..{len(ids) - 1}, got {n_members}")
    order = np.random.default_rng(seed).permutation(len(ids))
    members = sorted(ids[i] for i in order[:n_members])
    nonmembers = sorted(ids[i] for i in order[n_members:])
    return members, nonmembers


def rgb_unet_config() -> dict:
    """The RGB target's UNet: the demo UNet's widths (16, 32, 32) at 32, 16 and 8 px on 3 channels,
    attention only at 8 px (attention at 16 px made a training step about 4x slower on the 2-core CPU)."""
    config = demo_unet_config(PATCH, 3)
    config["down_block_types"] = ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    config["up_block_types"] = ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    return config


@dataclass(frozen=True)
class RGBRecipe:
    member_fraction: float = 1 / 6  # of each photo's patches: 32 of the 192
    split_seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2500, batch_size=16, learning_rate=3e-3))
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    num_train_timesteps: int = 1000


def _train_and_write(out: Path, member_images, config: dict, recipe, split: dict, progress: bool) -> dict:
    """Trains ``config``'s UNet on ``member_images`` with ``recipe`` and writes the target folder."""
    spec = build_model(config, source="target config")
    schedule = sched.make_schedule(recipe.beta_schedule, recipe.num_train_timesteps, recipe.beta_start,
                                   recipe.beta_end)
    denoiser = Denoiser(
        params=init_params(spec.module, recipe.train.seed),
        schedule=schedule,
        apply_fn=spec.apply_fn,
        sample_shape=tuple(spec.sample_shape),
    )
    start = time.perf_counter()
    trained, log = train_denoiser(denoiser, member_images, recipe.train, progress=progress)
    seconds = time.perf_counter() - start

    save_unet(out / "unet", config, trained.params)
    sched_cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": recipe.num_train_timesteps,
                 "beta_schedule": recipe.beta_schedule, "beta_start": recipe.beta_start,
                 "beta_end": recipe.beta_end, "prediction_type": "epsilon", "clip_sample": True,
                 "variance_type": "fixed_small"}
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=2) + "\n")
    (out / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2) + "\n")
    (out / "split.json").write_text(json.dumps(split, indent=1) + "\n")
    record = {
        "recipe": asdict(recipe),
        "train_seconds": round(seconds, 1),
        "devices": [str(d) for d in jax.devices()],
        "weights_sha256": weights_digest(trained.params),
        "log": log,
    }
    (out / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def train_digits_target(out, recipe: TargetRecipe, *, progress: bool = True) -> dict:
    """Trains a target on a member split of the digits and writes the target folder; returns the recipe record."""
    members, nonmembers = digits_split(recipe.n_members, recipe.split_seed)
    ids, images, _ = digits(recipe.size)
    where = {i: k for k, i in enumerate(ids)}
    split = {"dataset": "sklearn.datasets.load_digits", "size": recipe.size, "seed": recipe.split_seed,
             "members": members, "nonmembers": nonmembers}
    return _train_and_write(Path(out), images[[where[i] for i in members]], demo_unet_config(recipe.size, 1),
                            recipe, split, progress)


def train_rgb_target(out, recipe: RGBRecipe, *, progress: bool = True) -> dict:
    """Trains the RGB target on a balanced member split of the photo patches and writes its folder."""
    members, nonmembers = photo_split(recipe.member_fraction, recipe.split_seed)
    ids, images, _ = photo_patches(PATCH, DOWNSCALE)
    where = {i: k for k, i in enumerate(ids)}
    split = {"dataset": "jaxmia.data.photos", "size": PATCH, "downscale": DOWNSCALE, "seed": recipe.split_seed,
             "member_fraction": recipe.member_fraction, "patches_sha256": patches_digest(images),
             "sources": {name: {"file": f"{pkg}/{rel}", "licence": lic}
                         for name, (pkg, rel, lic) in PHOTO_SOURCES.items()},
             "members": members, "nonmembers": nonmembers}
    return _train_and_write(Path(out), images[[where[i] for i in members]], rgb_unet_config(), recipe, split,
                            progress)
