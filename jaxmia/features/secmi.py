"""SecMI_stat: the t-error of deterministic DDIM inversion (Duan et al., ICML 2023, arXiv 2302.01316,
Alg. 1 and Eq. 9; docs/methods/cdi.md §4.2; docs/methods/mia.md §3.2).

From z = x0 treated as the state at index 0, invert with stride k up to ``t_cmp`` (z_det), take one
more inversion step t_cmp → t_cmp + k and one denoising step back (z_step), and score
‖z_det − z_step‖. Cost: t_cmp/k + 2 UNet calls (the first is ε_θ(x0, 0), shared with PIA/PIAN).

Two statistics go by this name (quirk Q2): CDI compares at t_cmp = 100 with the L2 norm (12 calls;
both CDI presets); the SecMI authors' code with t_sec = 100, k = 10 inverts to 90, goes
90 → 100 → 90 and sums squares (11 calls; the ``secmi_mia`` preset: ``secmi_t_cmp=90``,
``secmi_norm="squared_l2"``). jaxmia stores only the scalar, never the latents.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmia import schedule as sched
from jaxmia.features.norms import sample_norm
from jaxmia.features.pia import proximal_init, shared_e0
from jaxmia.features.registry import Cost, register_feature


def secmi_error(denoiser, x0, cond, *, t_cmp: int, stride: int, norm: str = "l2", e0=None):
    """SecMI's t-error of ONE example. ``e0`` = ε_θ(x0, 0, c) if already computed."""
    s = denoiser.schedule
    e0 = proximal_init(denoiser, x0, cond) if e0 is None else e0
    z = sched.ddim_step(s, x0, e0, 0, stride)

    def invert(z, t):
        return sched.ddim_step(s, z, denoiser.eps(z, t, cond), t, t + stride), None

    z_det, _ = jax.lax.scan(invert, z, jnp.arange(stride, t_cmp, stride, dtype=jnp.int32))
    t_up = t_cmp + stride
    z_up = sched.ddim_step(s, z_det, denoiser.eps(z_det, t_cmp, cond), t_cmp, t_up)
    z_step = sched.ddim_step(s, z_up, denoiser.eps(z_up, t_up, cond), t_up, t_cmp)
    return sample_norm(z_det - z_step, norm)


@register_feature(
    "secmi",
    columns=lambda cfg: ("secmi",),
    direction="lower",  # a member's deterministic reverse-forward step is reconstructed better
    work=lambda cfg, requested: {
        "e0": Cost(forward=1),
        "secmi_chain": Cost(forward=cfg.secmi_t_cmp // cfg.secmi_stride - 1 + 2),
    },
    reads=("secmi_t_cmp", "secmi_stride", "secmi_norm"),
    groups=("mia",),
    timesteps=lambda cfg: (cfg.secmi_t_cmp + cfg.secmi_stride,),
)
def secmi_kernel(denoiser, x0, cond, key, cfg, shared):
    """SecMI_stat (Duan et al. 2023): DDIM inversion t-error at t_cmp; column secmi."""
    e0 = shared_e0(denoiser, x0, cond, shared)
    return {"secmi": secmi_error(denoiser, x0, cond, t_cmp=cfg.secmi_t_cmp, stride=cfg.secmi_stride,
                                 norm=cfg.secmi_norm, e0=e0)}
