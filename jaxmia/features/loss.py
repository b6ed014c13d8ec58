"""Loss signals: Denoising Loss (DL) and Multiple Loss (ML) (docs/methods/cdi.md §4.1, §4.4; docs/methods/mia.md §3.1).

* ``loss``: DL = mean over ``dl_n_draws`` independent draws ε_r (purpose "dl", rep r) of
  ‖ε_θ(q(x0, t, ε_r), t, c) − ε_r‖ at t = ``dl_timestep`` (CDI: t = 100, 5 draws, unsquared L2).
  The ``loss_mia`` preset gives the naive loss attack (t = 200, one draw, squared L2).
* ``multi_loss``: ML_t = ‖ε_θ(q(x0, t, ε), t, c) − ε‖₂ for t = 0, 100, ..., 900 with ONE draw ε
  (purpose "ml") shared by all t (Q5). ``ml_n_draws > 1`` averages draws per t (opt-in).

Sharing: when ``grad_mask`` runs too and draws are shared (Q11), ML_t is the forward value of GM's
gradient pass and costs nothing extra. DL is never shared with ML_100: DL's draws stay
independent of ML's draw, as in the reference (one saved call of ~60 is not worth the correlation).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxmia.features.grad_mask import gm_pass_cost, shared_gm_pass
from jaxmia.features.registry import Cost, register_feature
from jaxmia.features.sweep import error_grid


@register_feature(
    "loss",
    columns=lambda cfg: ("dl",),
    direction="lower",  # members are denoised better (Carlini et al. 2023)
    work=lambda cfg, requested: {"dl": Cost(forward=cfg.dl_n_draws)},
    reads=("dl_timestep", "dl_n_draws", "dl_norm"),
    groups=("mia",),
    timesteps=lambda cfg: (cfg.dl_timestep,),
)
def loss_kernel(denoiser, x0, cond, key, cfg, shared):
    """Denoising Loss (Carlini et al. 2023; docs/methods/cdi.md §4.1): mean over draws of the error at t; column dl."""
    errs = error_grid(denoiser, x0, cond, key.purpose_key("dl"), (cfg.dl_timestep,), cfg.dl_n_draws, norm=cfg.dl_norm)
    return {"dl": jnp.mean(errs)}


def ml_columns(cfg) -> tuple:
    return tuple(f"ml_t{t:03d}" for t in cfg.ml_timesteps)


def ml_from_gm_pass(cfg, requested) -> bool:
    """ML reads GM's forward passes: same draw, same timesteps, one draw, and GM requested."""
    return (
        "grad_mask" in requested
        and cfg.share_draws
        and cfg.ml_n_draws == 1
        and tuple(cfg.ml_timesteps) == tuple(cfg.gm_timesteps)
    )


def _ml_work(cfg, requested):
    if ml_from_gm_pass(cfg, requested):
        return {"gm_pass": gm_pass_cost(cfg)}
    return {"ml_pass": Cost(forward=len(cfg.ml_timesteps) * cfg.ml_n_draws)}


@register_feature(
    "multi_loss", columns=ml_columns, work=_ml_work, direction="lower",
    reads=("ml_timesteps", "ml_n_draws", "ml_norm", "share_draws", "gm_timesteps", "gm_ratio"),  # GM's pass when shared
    groups=("ml", "new"),
    timesteps=lambda cfg: cfg.ml_timesteps,
)
def multi_loss_kernel(denoiser, x0, cond, key, cfg, shared):
    """Multiple Loss (docs/methods/cdi.md §4.4): the error at t = 0, 100, ..., 900, one shared draw; columns ml_t000..."""
    if ml_from_gm_pass(cfg, shared.requested):
        ml = shared_gm_pass(denoiser, x0, cond, key, cfg, shared)["ml"]
        ml = ml if cfg.ml_norm == "l2" else ml**2
    else:
        ml = jnp.mean(error_grid(denoiser, x0, cond, key.purpose_key("ml"), cfg.ml_timesteps, cfg.ml_n_draws,
                                 norm=cfg.ml_norm), axis=1)
    return {c: ml[i] for i, c in enumerate(ml_columns(cfg))}
