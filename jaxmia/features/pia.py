"""PIA and PIAN: proximal initialisation (Kong et al., ICLR 2024, arXiv 2305.18355, §4; docs/methods/cdi.md §4.3).

* e0 = ε_θ(x0, 0, c): the clean input treated as the state at index 0 (ā_0 < 1 for DiT/LDM,
  = 1 for U-ViT; docs/methods/cdi.md Q8, reproduced as is).
* PIA = ‖e0 − ε_θ(√ā_t·x0 + √(1−ā_t)·e0, t, c)‖_p, t = 200.
* PIAN: ẽ0 = e0 · s / mean|e0| per sample, used both to build x̃_t and as the target.
  s = √(2/π) (``pian_scale="gaussian_mean_abs"``, the PIA paper and code; default) or √(π/2)
  (``"cdi_reference"``, CDI's constant, quirk Q1).
* The norm: p = 5 with the root in both CDI presets; the PIA code (``pia_mia`` preset) uses p = 4
  and omits the root (``pia_root=False``), which does not change the ranking.

PIA, PIAN and SecMI all start with ε_θ(x0, 0, c); it is computed once per example (shared "e0").
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxmia import schedule as sched
from jaxmia.features.norms import lp
from jaxmia.features.registry import Cost, register_feature

PIAN_SCALE_VALUES = {
    "gaussian_mean_abs": math.sqrt(2.0 / math.pi),  # E|N(0,1)|
    "cdi_reference": math.sqrt(math.pi / 2.0),
}


def proximal_init(denoiser, x0, cond):
    """e0 = ε_θ(x0, 0, c) for ONE example (1 UNet call)."""
    return denoiser.eps(x0, 0, cond)


def shared_e0(denoiser, x0, cond, shared):
    return shared.get("e0", lambda: proximal_init(denoiser, x0, cond))


def pia_error(denoiser, x0, cond, e, t, p, *, root: bool = True):
    """‖e − ε_θ(√ā_t·x0 + √(1−ā_t)·e, t, c)‖_p for ONE example (1 UNet call)."""
    x_t = sched.q_sample(denoiser.schedule, x0, t, e)
    return lp(e - denoiser.eps(x_t, t, cond), p, root=root)


def pian_normalise(e0, scale: str):
    """ẽ0 = e0 · s / mean|e0|, so that mean|ẽ0| = s (PIA code, class PIAN; docs/methods/cdi.md §4.3)."""
    return e0 * (PIAN_SCALE_VALUES[scale] / jnp.mean(jnp.abs(e0)))


@register_feature(
    "pia",
    columns=lambda cfg: ("pia",),
    direction="lower",
    work=lambda cfg, requested: {"e0": Cost(forward=1), "pia_query": Cost(forward=1)},
    reads=("pia_timestep", "pia_p", "pia_root"),
    groups=("mia",),
    timesteps=lambda cfg: (0, cfg.pia_timestep),
)
def pia_kernel(denoiser, x0, cond, key, cfg, shared):
    """PIA (Kong et al. 2024): ℓp error of the proximal-initialised one-step prediction; column pia."""
    e0 = shared_e0(denoiser, x0, cond, shared)
    return {"pia": pia_error(denoiser, x0, cond, e0, cfg.pia_timestep, cfg.pia_p, root=cfg.pia_root)}


@register_feature(
    "pian",
    columns=lambda cfg: ("pian",),
    direction="lower",
    work=lambda cfg, requested: {"e0": Cost(forward=1), "pian_query": Cost(forward=1)},
    reads=("pia_timestep", "pia_p", "pia_root", "pian_scale"),
    groups=("mia",),
    timesteps=lambda cfg: (0, cfg.pia_timestep),
)
def pian_kernel(denoiser, x0, cond, key, cfg, shared):
    """PIAN (Kong et al. 2024): PIA with e0 rescaled to a Gaussian's mean |value|; column pian."""
    e0 = pian_normalise(shared_e0(denoiser, x0, cond, shared), cfg.pian_scale)
    return {"pian": pia_error(denoiser, x0, cond, e0, cfg.pia_timestep, cfg.pia_p, root=cfg.pia_root)}
