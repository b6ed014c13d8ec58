"""Denoising-loss sweeps: the error on a grid of timesteps x noise draws, for one image or many.

The building block of ``loss`` (DL: one t, 5 draws) and ``multi_loss`` (ML: 10 t, one shared draw),
and a user-facing API, :func:`loss_sweep`, for researchers sweeping the loss over t and draws.

Draw r of an image is ``normal(fold_in(key_for(root, id, purpose), r))`` and is shared by all the
timesteps of the grid (common random numbers: the curve over t is not blurred by fresh noise at
each t; this is ML's convention, docs/methods/cdi.md §4.4).

The grid runs as a ``lax.scan`` over the flattened (t, draw) pairs, not a vmap over timesteps: on
CPU a vmap over timesteps was slower (docs/methods/models.md §10). Examples are vmapped, and run
by the one batch loop of :func:`jaxmia.runtime.map_examples`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import schedule as sched
from jaxmia.features.keys import SAMPLE_KEY_AXES, SampleKey
from jaxmia.features.norms import check_norm, sample_norm


def denoising_error(denoiser, x0, t, eps, cond=None, *, norm: str = "l2"):
    """‖ε_θ(q(x0, t, ε), t, c) − ε‖ for ONE example (Carlini et al. 2023, arXiv 2301.13188, §5;
    Matsumoto et al. 2023 with ``norm="squared_l2"``).

    Args:
      x0: (H, W, C) clean input (the latent for latent models). t: scalar int. eps: (H, W, C).
      norm: ``l2`` (CDI's DL and ML) or ``squared_l2`` (the naive loss attack).
    """
    x_t = sched.q_sample(denoiser.schedule, x0, t, eps)
    return sample_norm(denoiser.eps(x_t, t, cond) - eps, norm)


def error_grid(denoiser, x0, cond, noise_key, timesteps: Sequence[int], n_draws: int, *, norm: str = "l2"):
    """(T, R) denoising errors of ONE example: row t, column r uses draw r (shared over t).

    ``noise_key`` is the example's key for one purpose; draw r comes from ``fold_in(noise_key, r)``.
    """
    ts = jnp.asarray(timesteps, jnp.int32)
    grid_t = jnp.repeat(ts, n_draws)
    grid_r = jnp.tile(jnp.arange(n_draws, dtype=jnp.uint32), len(timesteps))

    def one(_, tr):
        t, r = tr
        eps = jax.random.normal(jax.random.fold_in(noise_key, r), x0.shape, x0.dtype)
        return None, denoising_error(denoiser, x0, t, eps, cond, norm=norm)

    _, errs = jax.lax.scan(one, None, (grid_t, grid_r))
    return errs.reshape(len(timesteps), n_draws)


@functools.lru_cache(maxsize=32)
def _sweep_kernel(timesteps: tuple, n_draws: int, norm: str, purpose: str):
    """ONE example's (T, R) :func:`error_grid`, keyed by its purpose (cached: one program per grid)."""

    def per_example(denoiser, x0, cond, key: SampleKey):
        return error_grid(denoiser, x0, cond, key.purpose_key(purpose), timesteps, n_draws, norm=norm)

    return per_example


def _sweep_program(timesteps: tuple, n_draws: int, norm: str, purpose: str, with_cond: bool, mesh=None):
    """jit(vmap over examples) of :func:`error_grid` (:func:`jaxmia.runtime.jit_examples`); static: the
    grid, norm, purpose, cond presence and the mesh (with one, each data-axis device runs its own rows)."""
    from jaxmia import runtime

    return runtime.jit_examples(_sweep_kernel(timesteps, n_draws, norm, purpose), mesh, with_cond)


def loss_sweep(
    denoiser,
    data,
    timesteps: Sequence[int],
    n_draws: int = 1,
    seed: int = 0,
    batch_size: int | None = None,
    *,
    norm: str = "l2",
    purpose: str = "sweep",
    devices=None,
    per_device_batch: int | None = None,
    mesh_shape: tuple | None = None,
    shard_min_size: int | None = None,
) -> np.ndarray:
    """The denoising loss of many images on a grid of timesteps x noise draws.

    Args:
      denoiser: a :class:`~jaxmia.models.Denoiser` (latent models encode each image once, keyed).
      data: a ``Dataset`` (ids, images, cond) or an (N, H, W, C) array (ids "0".."N-1").
      timesteps: the grid of integer timesteps. n_draws: noise draws per image, shared over t.
      seed: root seed; draws depend only on (seed, image id, purpose, draw index).
      batch_size: images per step (default: one chunk of ``per_device_batch`` x data-axis devices;
        it does not change the values).
      norm: ``l2`` or ``squared_l2``.
      devices, per_device_batch, mesh_shape, shard_min_size: the device mesh, as in
        :func:`jaxmia.features.extract`.

    Returns:
      float64 array (images, timesteps, draws), rows in the order of ``data``.
    """
    from jaxmia import compile_cache, runtime

    compile_cache.ensure_default()  # compile once: the persistent cache
    check_norm(norm)
    ts = tuple(int(t) for t in timesteps)
    if not ts:
        raise ValueError("loss_sweep: timesteps is empty")
    if int(n_draws) < 1:
        raise ValueError(f"loss_sweep: n_draws must be >= 1 (got {n_draws})")
    data = runtime.as_dataset(data)
    runtime.check_images(denoiser, data)
    runtime.check_timesteps(denoiser, max(ts), source="loss_sweep timesteps")
    with_cond = runtime.uses_cond(denoiser, data)
    placed = runtime.place(denoiser, seed, batch_size, devices, per_device_batch=per_device_batch, mesh_shape=mesh_shape,
                           shard_min_size=runtime.DEFAULT_SHARD_MIN_SIZE if shard_min_size is None else shard_min_size)
    if not data.ids:
        return np.zeros((0, len(ts), int(n_draws)), np.float64)
    mapped = runtime.map_examples(_sweep_kernel(ts, int(n_draws), norm, purpose), data, placement=placed,
                                  with_cond=with_cond, progress=False)
    return np.asarray(mapped.columns(data.ids), np.float64)
