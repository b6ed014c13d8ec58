"""Training of jaxmia's own target models (the bundled demo target and the study targets).

The loss is the simple DDPM objective ‖ε − ε_θ(√ā_t x0 + √(1−ā_t) ε, t)‖² with t uniform
(Ho et al. 2020, Eq. 14), written for one example and vmapped. Training is deterministic for a
seed: batch order and noise come from keys folded with the step number.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxmia import schedule as sched
from jaxmia.models.denoiser import Denoiser
from jaxmia.progress import Progress


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # EMA weights are what gets saved, as for the SecMI / PIA targets
    seed: int = 0


def example_loss(params, denoiser: Denoiser, x0, cond, key):
    """Per-example simple DDPM loss (Ho et al. 2020, Eq. 14)."""
    t_key, e_key = jax.random.split(key)
    t = jax.random.randint(t_key, (), 0, denoiser.schedule.num_train_timesteps)
    eps = jax.random.normal(e_key, x0.shape, x0.dtype)
    x_t = sched.q_sample(denoiser.schedule, x0, t, eps)
    eps_hat = denoiser.replace(params=params).eps(x_t, t, cond)
    return jnp.mean((eps_hat - eps) ** 2)


def train_denoiser(denoiser: Denoiser, images, cfg: TrainConfig, cond=None, *, progress: bool = True,
                   callback=None, callback_every: int = 0):
    """Trains ``denoiser.params`` on ``images`` (N, H, W, C) in [-1, 1]; returns (denoiser, log).

    The returned denoiser carries the EMA weights. ``callback(step, ema_denoiser)`` runs every
    ``callback_every`` steps (e.g. to watch memorisation grow while calibrating a target).
    """
    images = jnp.asarray(images, jnp.float32)
    n = images.shape[0]
    warmup = min(cfg.warmup_steps, cfg.steps // 10)
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, max(cfg.steps, warmup + 1),
                                            end_value=cfg.learning_rate * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr))
    params = denoiser.params
    ema = jax.tree_util.tree_map(jnp.copy, params)  # a separate buffer: the step donates both
    state = (params, opt.init(params), ema)  # (params, optimiser state, EMA params)
    root = jax.random.key(cfg.seed)

    def batch_loss(p, idx, key):
        keys = jax.random.split(key, idx.shape[0])
        c = None if cond is None else cond[idx]
        per_example = jax.vmap(example_loss, in_axes=(None, None, 0, None if c is None else 0, 0))
        return jnp.mean(per_example(p, denoiser, images[idx], c, keys))

    @functools.partial(jax.jit, donate_argnums=0)
    def jit_train_step(state, step):
        p, o, ema = state
        k_idx, k_loss = jax.random.split(jax.random.fold_in(root, step))
        idx = jax.random.choice(k_idx, n, (cfg.batch_size,), replace=n < cfg.batch_size)
        loss, grads = jax.value_and_grad(batch_loss)(p, idx, k_loss)
        updates, o = opt.update(grads, o, p)
        p = optax.apply_updates(p, updates)
        ema = jax.tree_util.tree_map(lambda e, q: cfg.ema_decay * e + (1 - cfg.ema_decay) * q, ema, p)
        return (p, o, ema), loss

    losses = []
    with Progress("train", cfg.steps, unit="step", enabled=progress) as bar:
        for step in range(cfg.steps):
            state, loss = jit_train_step(state, step)
            if step % 100 == 0 or step == cfg.steps - 1:
                losses.append((step, float(loss)))
            bar.update(1)
            if callback is not None and callback_every and (step + 1) % callback_every == 0:
                callback(step + 1, denoiser.replace(params=state[2]))
        log = {"losses": losses, **bar.summary()}
    return denoiser.replace(params=state[2]), log
