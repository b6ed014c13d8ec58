"""Noise schedules and the closed-form moves of a DDPM, in pure ``jnp``.

Conventions (docs/methods/cdi.md §1, docs/methods/mia.md §1):

* ``alphas_cumprod[t]`` is ā_t for the model's own integer timestep t = 0..T-1; the table is
  indexed with the same integer the model receives, with no offset correction (docs/methods/cdi.md §9, Q8).
* ``t = -1`` (``CLEAN``) stands for the clean image, ā = 1. Samplers use it as the target of the
  last move.
* Every function takes per-example or broadcastable arrays and never reduces.

References:
  Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239, Eq. (4) for q(x_t | x_0).
  Song et al., "Denoising Diffusion Implicit Models", arXiv 2010.02502, Eq. (12) for the DDIM step.
"""

from __future__ import annotations

import hashlib
import json

import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct

CLEAN = -1  # pseudo-timestep of the clean image (ā = 1)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

# Keys of a diffusers scheduler_config.json that jaxmia reads, and those it may ignore because
# they only steer sampling of new images (never the forward process the attacks rely on).
_SCHEDULER_KEYS_USED = {
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
    "prediction_type", "clip_sample", "clip_sample_range", "first_index_clean",
}
_SCHEDULER_KEYS_IGNORED = {
    "_class_name", "_diffusers_version", "variance_type", "set_alpha_to_one", "steps_offset",
    "thresholding", "dynamic_thresholding_ratio", "sample_max_value", "timestep_spacing",
    "rescale_betas_zero_snr", "skip_prk_steps", "interpolation_type", "use_karras_sigmas",
    "timestep_type", "final_sigmas_type", "algorithm_type", "solver_order", "solver_type",
    "lower_order_final", "use_exponential_sigmas", "use_beta_sigmas", "sigma_min", "sigma_max",
    "euler_at_final", "lambda_min_clipped", "variance_type", "clip_sample_range", "_use_default_values",
}


@struct.dataclass
class Schedule:
    """An immutable DDPM noise schedule.

    Attributes:
      betas: (T,) float32 β_t.
      alphas_cumprod: (T,) float32 ā_t = Π_{i≤t} (1 − β_i) (or Π_{1≤i≤t} when ``first_index_clean``).
      num_train_timesteps: T.
      prediction_type: what the network predicts: ``epsilon``, ``v_prediction`` or ``sample``.
      clip_sample: whether samplers clip x̂0 to ``[-clip_sample_range, clip_sample_range]``.
    """

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    num_train_timesteps: int = struct.field(pytree_node=False)
    prediction_type: str = struct.field(pytree_node=False, default="epsilon")
    clip_sample: bool = struct.field(pytree_node=False, default=True)
    clip_sample_range: float = struct.field(pytree_node=False, default=1.0)


def beta_table(kind: str, num_train_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """β_1..β_T as float64, with diffusers' definitions of each named schedule."""
    n = int(num_train_timesteps)
    if kind == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if kind == "scaled_linear":  # Stable Diffusion / LDM "sqrt-linear"
        return np.linspace(beta_start**0.5, beta_end**0.5, n, dtype=np.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal, arXiv 2102.09672, Eq. (17)
        def f(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], np.float64)
    raise ValueError(f"unknown beta_schedule {kind!r}; known: {', '.join(BETA_SCHEDULES)}")


def make_schedule(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    *,
    trained_betas=None,
    prediction_type: str = "epsilon",
    clip_sample: bool = True,
    clip_sample_range: float = 1.0,
    first_index_clean: bool = False,
) -> Schedule:
    """Builds a :class:`Schedule`.

    Args:
      first_index_clean: the U-ViT convention (docs/methods/cdi.md §9): ā[0] = 1 and
        ā[n] = Π_{i=1..n}(1 − β_i), so the table has T + 1 entries and t = 0 is the clean input.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")
    if trained_betas is not None:
        betas = np.asarray(trained_betas, np.float64)
    else:
        betas = beta_table(beta_schedule, num_train_timesteps, beta_start, beta_end)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)):
        raise ValueError("betas must be a 1-D array with values in (0, 1)")
    alphas_cumprod = np.cumprod(1.0 - betas)
    if first_index_clean:
        alphas_cumprod = np.concatenate([[1.0], alphas_cumprod])
        betas = np.concatenate([[0.0], betas])
    return Schedule(
        betas=jnp.asarray(betas, jnp.float32),
        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
        num_train_timesteps=len(alphas_cumprod),
        prediction_type=prediction_type,
        clip_sample=bool(clip_sample),
        clip_sample_range=float(clip_sample_range),
    )


def schedule_from_config(config: Mapping[str, Any], *, source: str = "scheduler config") -> Schedule:
    """Builds a :class:`Schedule` from a diffusers ``scheduler_config.json`` dictionary.

    Unknown keys are refused by name, so a typo or an unsupported option never falls back to a
    default silently.
    """
    unknown = sorted(set(config) - _SCHEDULER_KEYS_USED - _SCHEDULER_KEYS_IGNORED)
    if unknown:
        raise ValueError(f"{source}: unsupported scheduler key(s) {', '.join(map(repr, unknown))}")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(f"{source}: rescale_betas_zero_snr=true is not supported")
    try:
        return _schedule_from_known_keys(config)
    except ValueError as err:  # name the file as well as the value
        raise ValueError(f"{source}: {err}") from None


def _schedule_from_known_keys(config: Mapping[str, Any]) -> Schedule:
    return make_schedule(
        beta_schedule=config.get("beta_schedule", "linear"),
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        trained_betas=config.get("trained_betas"),
        prediction_type=config.get("prediction_type", "epsilon"),
        clip_sample=bool(config.get("clip_sample", True)),
        clip_sample_range=float(config.get("clip_sample_range", 1.0)),
        first_index_clean=bool(config.get("first_index_clean", False)),
    )


def schedule_to_config(schedule: Schedule) -> dict:
    """The diffusers-style ``scheduler_config.json`` of a schedule (betas written explicitly)."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": schedule.num_train_timesteps,
        "trained_betas": [float(b) for b in np.asarray(schedule.betas, np.float64)],
        "prediction_type": schedule.prediction_type,
        "clip_sample": schedule.clip_sample,
        "clip_sample_range": schedule.clip_sample_range,
        "variance_type": "fixed_small",
    }


def schedule_digest(schedule: Schedule) -> str:
    """SHA-256 of what the schedule computes (ā table, β table, prediction type, clipping): part of a
    run's identity beside the weights digest, so a run under another schedule is never resumed."""
    digest = hashlib.sha256()
    for table in (schedule.alphas_cumprod, schedule.betas):
        digest.update(np.ascontiguousarray(np.asarray(table, "<f4")).tobytes())
    digest.update(json.dumps([schedule.num_train_timesteps, schedule.prediction_type, schedule.clip_sample,
                              schedule.clip_sample_range]).encode())
    return digest.hexdigest()


def alpha_bar(schedule: Schedule, t) -> jnp.ndarray:
    """ā_t, with ā = 1 at ``t == CLEAN`` (-1). ``t`` is an int array of any shape."""
    t = jnp.asarray(t, jnp.int32)
    table = schedule.alphas_cumprod
    return jnp.where(t < 0, jnp.float32(1.0), table[jnp.clip(t, 0, table.shape[0] - 1)])


def _bcast(a, x):
    return jnp.reshape(a, jnp.shape(a) + (1,) * (jnp.ndim(x) - jnp.ndim(a)))


def q_sample(schedule: Schedule, x0, t, eps):
    """Forward process q(x_t | x_0): √ā_t·x0 + √(1−ā_t)·ε (Ho et al. 2020, Eq. 4)."""
    ab = _bcast(alpha_bar(schedule, t), x0)
    return jnp.sqrt(ab) * x0 + jnp.sqrt(1.0 - ab) * eps


def predict_x0(schedule: Schedule, x_t, t, eps):
    """x̂0 = (x_t − √(1−ā_t)·ε̂) / √ā_t (Song et al. 2021, Eq. 12, "predicted x0")."""
    ab = _bcast(alpha_bar(schedule, t), x_t)
    return (x_t - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)


def ddim_step(schedule: Schedule, x_t, eps, t_from, t_to):
    """Deterministic DDIM move (η = 0) from ``t_from`` to ``t_to`` (docs/methods/cdi.md §3).

    Inversion when ``t_to > t_from``, denoising when ``t_to < t_from``; ``t_to == t_from`` is the
    identity. ``t_to = CLEAN`` lands on x̂0.
    """
    x0_hat = predict_x0(schedule, x_t, t_from, eps)
    ab_to = _bcast(alpha_bar(schedule, t_to), x_t)
    return jnp.sqrt(ab_to) * x0_hat + jnp.sqrt(1.0 - ab_to) * eps


def eta_step(schedule: Schedule, x_t, eps, t_from, t_to, eta, noise, *, clip: float | None = None):
    """Generalised DDIM denoising move with stochasticity η ∈ [0, 1] (Song et al. 2021, Eq. 12, 16).

    η = 0 is DDIM, η = 1 the DDPM ancestral step. ``clip`` bounds x̂0 (pixel models).
    """
    ab_from = _bcast(alpha_bar(schedule, t_from), x_t)
    ab_to = _bcast(alpha_bar(schedule, t_to), x_t)
    x0_hat = (x_t - jnp.sqrt(1.0 - ab_from) * eps) / jnp.sqrt(ab_from)
    if clip is not None:
        x0_hat = jnp.clip(x0_hat, -clip, clip)
        # Re-derive ε from the clipped x̂0 so the step stays on the DDIM trajectory.
        eps = (x_t - jnp.sqrt(ab_from) * x0_hat) / jnp.sqrt(1.0 - ab_from)
    sigma = eta * jnp.sqrt(jnp.clip((1.0 - ab_to) / (1.0 - ab_from), 0.0) * jnp.clip(1.0 - ab_from / ab_to, 0.0))
    direction = jnp.sqrt(jnp.clip(1.0 - ab_to - sigma**2, 0.0)) * eps
    return jnp.sqrt(ab_to) * x0_hat + direction + sigma * noise


def eps_from_prediction(schedule: Schedule, x_t, t, prediction):
    """Converts a network output to an ε prediction, whatever ``schedule.prediction_type`` is."""
    if schedule.prediction_type == "epsilon":
        return prediction
    ab = _bcast(alpha_bar(schedule, t), x_t)
    if schedule.prediction_type == "v_prediction":  # v = √ā ε − √(1−ā) x0  ⇒  ε = √ā v + √(1−ā) x_t
        return jnp.sqrt(ab) * prediction + jnp.sqrt(1.0 - ab) * x_t
    return (x_t - jnp.sqrt(ab) * prediction) / jnp.sqrt(1.0 - ab)  # "sample": x0 prediction
