"""Loss sweeps: shape, values against a NumPy loop, and draws that depend only on (seed, id, purpose)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia.models import analytic_denoiser
from jaxmia.schedule import make_schedule

from features_util import SHAPE, draws, fast_compile, tiny_dataset, tiny_denoiser

SEED = 11
TIMESTEPS = (0, 250, 600, 999)
ONE, TWO = jax.devices()[:1], jax.devices()[:2]


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with fast_compile():
        yield


@pytest.fixture(scope="module")
def setup():
    schedule = make_schedule()
    points = np.random.default_rng(3).uniform(-1, 1, (3, *SHAPE)).astype(np.float32)
    return analytic_denoiser(points, schedule), points.astype(np.float64), np.asarray(schedule.alphas_cumprod, np.float64)


def eps_k_points_np(x, t, points, ab):
    """The exact denoiser of a K-point training set, in float64 NumPy (softmax posterior over points)."""
    mu = np.sqrt(ab[t]) * points
    d2 = np.sum((x[None] - mu) ** 2, axis=(1, 2, 3)) / (2 * (1 - ab[t]))
    w = np.exp(-(d2 - d2.min()))
    w /= w.sum()
    x0_hat = np.tensordot(w, points, axes=1)
    return (x - np.sqrt(ab[t]) * x0_hat) / np.sqrt(1 - ab[t])


def test_loss_sweep_matches_a_numpy_loop(setup):
    den, points, ab = setup
    data = tiny_dataset(5)
    got = F.loss_sweep(den, data, TIMESTEPS, n_draws=3, seed=SEED, batch_size=4, devices=ONE)
    assert got.shape == (5, len(TIMESTEPS), 3) and got.dtype == np.float64
    want = np.zeros_like(got)
    for r in range(3):
        eps = draws(SEED, data.ids, "sweep", r).astype(np.float64)
        for i, x0 in enumerate(data.images.astype(np.float64)):
            for j, t in enumerate(TIMESTEPS):
                x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps[i]
                want[i, j, r] = np.linalg.norm(eps_k_points_np(x_t, t, points, ab) - eps[i])
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
    assert np.std(want[:, 1:3], axis=2).min() > 1e-3  # the draws matter for a K-point model
    squared = F.loss_sweep(den, data, TIMESTEPS, n_draws=3, seed=SEED, batch_size=4, norm="squared_l2", devices=ONE)
    np.testing.assert_allclose(squared, want**2, rtol=5e-5, atol=1e-5)


def test_single_point_sweep_does_not_depend_on_the_draw():
    """docs/methods/cdi.md §11.6: with one training point the error is √(ā/(1−ā))·‖x0 − x*‖ for every ε."""
    schedule = make_schedule()
    x_star = np.linspace(-1, 1, 64, dtype=np.float32).reshape(SHAPE)
    data = tiny_dataset(3)
    got = F.loss_sweep(analytic_denoiser(x_star, schedule), data, (100, 500), n_draws=4, seed=SEED, batch_size=4, devices=ONE)
    ab = np.asarray(schedule.alphas_cumprod, np.float64)[[100, 500]]
    dist = np.linalg.norm((data.images - x_star).reshape(3, -1), axis=1)
    want = np.sqrt(ab / (1 - ab))[None, :, None] * dist[:, None, None]
    np.testing.assert_allclose(got, np.broadcast_to(want, got.shape), rtol=1e-5)


def test_draws_are_bit_identical_across_batch_sizes():
    ids = [f"img{i:03d}" for i in range(8)]
    full = draws(SEED, ids, "ml")
    for size in (1, 4):
        parts = np.concatenate([draws(SEED, ids[k:k + size], "ml") for k in range(0, 8, size)])
        np.testing.assert_array_equal(parts, full)
    assert not np.array_equal(draws(SEED, ids, "dl"), full)  # purposes are independent streams
    assert not np.array_equal(draws(SEED + 1, ids, "ml"), full)


@pytest.mark.slow  # the same runner is covered by the cdi invariance test in test_features_extract.py
def test_sweep_is_the_same_for_batch_sizes_and_devices():
    den = tiny_denoiser()
    data = tiny_dataset(8)
    by3 = F.loss_sweep(den, data, (100, 400), n_draws=2, seed=SEED, batch_size=3, devices=ONE)
    by8 = F.loss_sweep(den, data, (100, 400), n_draws=2, seed=SEED, batch_size=8, devices=TWO)
    np.testing.assert_allclose(by8, by3, rtol=1e-5, atol=1e-6)
    jit_err = jax.jit(jax.vmap(lambda x, e: F.denoising_error(den, x, 400, e)))
    eps = jnp.asarray(draws(SEED, data.ids, "sweep", 1))
    np.testing.assert_allclose(by3[:, 1, 1], jit_err(jnp.asarray(data.images), eps), rtol=1e-5)


def test_loss_sweep_refuses_bad_input():
    den = tiny_denoiser()
    data = tiny_dataset(2)
    with pytest.raises(ValueError, match="timesteps is empty"):
        F.loss_sweep(den, data, (), devices=ONE)
    with pytest.raises(ValueError, match="timestep 1000 is outside"):
        F.loss_sweep(den, data, (0, 1000), devices=ONE)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        F.loss_sweep(den, data, (0,), norm="l1", devices=ONE)
    with pytest.raises(ValueError, match="per_device_batch -1: must be an int >= 1"):
        F.loss_sweep(den, data, (0,), per_device_batch=-1, devices=TWO)
