"""Shared fixtures of the features tests: a tiny nonlinear Flax denoiser and tiny data sets."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.data import Dataset
from jaxmia.features.keys import SampleKey
from jaxmia.models import Denoiser
from jaxmia.schedule import make_schedule
from jaxmia import rng

SHAPE = (8, 8, 1)

# XLA promises the same bits only for the same compiled program on the same CPU. A program built
# for another device count or mesh may round differently, and by how much depends on the CPU the
# suite lands on (measured: up to 2.3e-5 relative in SecMI's small values on one machine, 0 on
# another). Bits are pinned where the program is the same (batch sizes, restarts, process counts
# at a fixed per-device shape); across device counts and meshes values are compared with this
# tolerance, relative to the value and to its column's scale (docs/scaling.md §9).
CROSS_PROGRAM_RTOL = 1e-4


def assert_close_across_programs(actual, desired, *, rtol: float = CROSS_PROGRAM_RTOL, err_msg: str = "") -> None:
    """|actual − desired| ≤ rtol · (|desired| + max |desired| of the column), element by element."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    scale = np.max(np.abs(desired), axis=0, keepdims=True) if desired.ndim > 1 else np.max(np.abs(desired))
    bound = rtol * (np.abs(desired) + scale)
    bad = ~(np.abs(actual - desired) <= bound)
    if np.any(bad):
        i = np.unravel_index(np.argmax(np.where(bad, np.abs(actual - desired) / np.maximum(bound, 1e-300), 0)),
                             bad.shape)
        raise AssertionError(f"{err_msg}: {int(bad.sum())} of {bad.size} values differ by more than rtol={rtol:g} "
                             f"(worst at {tuple(map(int, i))}: {actual[i]!r} vs {desired[i]!r})")


class TinyEps(nn.Module):
    """A 3-layer conv net with a sinusoidal time embedding (and a class embedding when conditional)."""

    num_classes: int = 0

    @nn.compact
    def __call__(self, x, t, cond=None):
        freqs = jnp.exp(-jnp.arange(4) * 2.0)
        ang = t.astype(jnp.float32)[:, None] / 100.0 * freqs[None]
        temb = nn.Dense(8)(jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1))
        h = nn.Conv(8, (3, 3))(x) + temb[:, None, None, :]
        if self.num_classes:
            h = h + nn.Embed(self.num_classes, 8)(cond)[:, None, None, :]
        h = nn.Conv(8, (3, 3))(jnp.tanh(h))
        return x * 0.3 + nn.Conv(x.shape[-1], (3, 3))(jnp.tanh(h))


@functools.lru_cache(maxsize=None)
def tiny_denoiser(num_classes: int = 0) -> Denoiser:
    module = TinyEps(num_classes=num_classes)
    t0 = jnp.zeros((1,), jnp.int32)
    c0 = jnp.zeros((1,), jnp.int32) if num_classes else None
    params = module.init(jax.random.key(1), jnp.zeros((1, *SHAPE)), t0, c0)

    def apply_fn(params, x, t, cond):
        return module.apply(params, x, t, cond)

    return Denoiser(
        params=params, schedule=make_schedule(), apply_fn=apply_fn, sample_shape=SHAPE,
        cond_kind="class" if num_classes else "none", digest=f"tiny-{num_classes}",
    )


def tiny_dataset(n: int = 10, seed: int = 0, *, labels: bool = False, prefix: str = "img") -> Dataset:
    r = np.random.default_rng(seed)
    images = r.uniform(-1, 1, (n, *SHAPE)).astype(np.float32)
    cond = r.integers(0, 3, n).astype(np.int32) if labels else None
    return Dataset([f"{prefix}{i:03d}" for i in range(n)], images, cond, f"tiny:{seed}")


@functools.lru_cache(maxsize=None)
def _jit_draws(purpose: str, shape: tuple):
    return jax.jit(jax.vmap(lambda root, h, rep: SampleKey(root=root, id_hash=h).normal(purpose, rep, shape),
                            in_axes=(None, 0, None)))


def draws(seed: int, ids, purpose: str, rep: int = 0, shape=SHAPE) -> np.ndarray:
    """The (N, H, W, C) noise draws of these ids, as the kernels make them."""
    hashes = jnp.asarray(rng.id_hashes(ids))
    return np.asarray(_jit_draws(purpose, tuple(shape))(rng.root_key(seed), hashes, jnp.uint32(rep)))


def fast_compile():
    """Context for tests: XLA without most optimisations compiles these tiny programs much faster."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        old = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", True)
        try:
            yield
        finally:
            jax.config.update("jax_disable_most_optimizations", old)

    return ctx()
