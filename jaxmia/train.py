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
import numpy as np
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


def train_denoiser(denoiser: Denoiser, images, cfg: TrainConfig, cond=None, *, progress: bool = True):
    """Trains ``denoiser.params`` on ``images`` (N, H, W, C) in [-1, 1]; returns (denoiser, log).

    The returned denoiser carries the EMA weights.
    """
    images = jnp.asarray(images, jnp.float32)
    n = images.shape[0]
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, cfg.steps,
                                            end_value=cfg.learning_rate * 0.1)
    opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(lr))
    params = denoiser.params
    state = (params, opt.init(params), params)  # (params, optimiser state, EMA params)
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
        log = {"losses": losses, **bar.summary()}
    return denoiser.replace(params=state[2]), log


def batch_denoising_loss(denoiser: Denoiser, images, t: int, seed: int, ids, n_draws: int = 5,
                         batch_size: int = 64) -> np.ndarray:
    """Mean over ``n_draws`` of ‖ε − ε_θ(x_t, t)‖₂ per image (CDI's DL, cdi-spec.md §4.1), keyed by id.

    A small self-contained helper for the training report; the attack kernels live in
    ``jaxmia.features``.
    """
    from jaxmia import rng

    hashes = jnp.asarray(rng.id_hashes(ids))
    root = rng.root_key(seed)

    def one(x0, h):
        def draw(r):
            eps = jax.random.normal(jax.random.fold_in(rng.key_for(root, h, "dl"), r), x0.shape)
            x_t = sched.q_sample(denoiser.schedule, x0, t, eps)
            return jnp.linalg.norm((denoiser.eps(x_t, t) - eps).ravel())
        return jnp.mean(jax.vmap(draw)(jnp.arange(n_draws)))

    jit_losses = jax.jit(jax.vmap(one))
    out = []
    for lo in range(0, len(ids), batch_size):
        out.append(np.asarray(jit_losses(jnp.asarray(images[lo:lo + batch_size]), hashes[lo:lo + batch_size])))
    return np.concatenate(out)
