"""Gradient Masking (GM; CDI, arXiv 2411.12858, docs/methods/cdi.md §4.5), and the ML values it yields.

For each t: x_t = q(x0, t, ε); g = ∂/∂x_t ‖ε_θ(x_t, t, c) − ε‖₂ (per sample, under vmap; the
reference differentiates the batch mean, which only rescales g by 1/B); M = the top int(ratio·D)
entries of |g| (ties: lowest flat index); x_m = (1−M)⊙x0 + M⊙ε (raw noise on the mask, clean
elsewhere, no √ā scaling: the reference definition); GM_t = ‖M⊙((ε − x0) − ε_θ(x_m, t, c))‖₂.

The forward pass inside the gradient at t is exactly ML_t = ‖ε_θ(x_t, t, c) − ε‖₂ when GM and ML
use the same draw ε (Q11, ``share_draws=True``, the default), so one pass serves both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmia import schedule as sched
from jaxmia.features.norms import l2, safe_l2
from jaxmia.features.registry import Cost, register_feature


def top_fraction_mask(scores, ratio: float):
    """Boolean mask of the int(ratio·D) largest entries of ``scores`` (any shape, D entries).

    Ties straddling the k-th position go to the lowest flat index (``lax.top_k`` semantics, the
    same selection as a stable descending argsort).
    """
    flat = scores.reshape(-1)
    k = int(ratio * flat.size)
    _, idx = jax.lax.top_k(flat, k)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(scores.shape)


def masked_input(x0, eps, mask):
    """x_m = (1 − M)⊙x0 + M⊙ε (docs/methods/cdi.md §4.5, step 3)."""
    return jnp.where(mask, eps, x0)


def gm_at(denoiser, x0, cond, eps, t, ratio: float):
    """(GM_t, ML_t) of ONE example at one timestep with the draw ``eps``.

    Cost: 2 forward passes and 1 backward pass.
    """
    x_t = sched.q_sample(denoiser.schedule, x0, t, eps)
    ml, g = jax.value_and_grad(lambda x: safe_l2(denoiser.eps(x, t, cond) - eps))(x_t)
    mask = top_fraction_mask(jnp.abs(g), ratio)
    e_hat = denoiser.eps(masked_input(x0, eps, mask), t, cond)
    gm = l2(jnp.where(mask, (eps - x0) - e_hat, 0.0))
    return gm, ml


def gm_ml_pass(denoiser, x0, cond, eps, timesteps, ratio: float) -> dict:
    """GM_t and ML_t of ONE example for every t (``lax.scan`` over timesteps): {"gm": (T,), "ml": (T,)}."""

    def one(_, t):
        return None, gm_at(denoiser, x0, cond, eps, t, ratio)

    _, (gm, ml) = jax.lax.scan(one, None, jnp.asarray(timesteps, jnp.int32))
    return {"gm": gm, "ml": ml}


def gm_columns(cfg) -> tuple:
    return tuple(f"gm_t{t:03d}" for t in cfg.gm_timesteps)


def gm_draw(cfg) -> tuple[str, int]:
    """(purpose, rep) of GM's noise draw: ML's draw when ``share_draws`` (Q11), its own otherwise."""
    return ("ml", 0) if cfg.share_draws else ("gm", 0)


def shared_gm_pass(denoiser, x0, cond, key, cfg, shared):
    """The GM/ML pass of one example, computed once per trace however many signals ask for it."""

    def compute():
        eps = key.normal(*gm_draw(cfg), x0.shape, x0.dtype)
        return gm_ml_pass(denoiser, x0, cond, eps, cfg.gm_timesteps, cfg.gm_ratio)

    return shared.get("gm_pass", compute)


def gm_pass_cost(cfg) -> Cost:
    n = len(cfg.gm_timesteps)
    return Cost(forward=2 * n, backward=n)


@register_feature(
    "grad_mask",
    columns=gm_columns,
    direction="none",  # raw CDI features: the scoring model learns their signs (docs/methods/cdi.md §4.9)
    work=lambda cfg, requested: {"gm_pass": gm_pass_cost(cfg)},
    reads=("gm_timesteps", "gm_ratio", "share_draws"),
    groups=("gm", "new"),
    timesteps=lambda cfg: cfg.gm_timesteps,
)
def grad_mask_kernel(denoiser, x0, cond, key, cfg, shared):
    """Gradient Masking GM_t at t = 0, 100, ..., 900 (docs/methods/cdi.md §4.5); columns gm_t000..gm_t900."""
    gm = shared_gm_pass(denoiser, x0, cond, key, cfg, shared)["gm"]
    return {c: gm[i] for i, c in enumerate(gm_columns(cfg))}
