"""DRC restoration: exact paste-back, determinism, and the analytic-denoiser closed forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.drc import masks as M
from jaxmia.drc import metrics as D
from jaxmia.drc.restore import inpaint_one, jump_schedule, restore_one, restore_plan, sampling_timesteps
from jaxmia.models import Denoiser, analytic_denoiser
from jaxmia.schedule import make_schedule

SHAPE = (8, 8, 1)
SCHEDULE = make_schedule(num_train_timesteps=1000)
PLAN = restore_plan(1000, 0.5, 4)


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", prev)


# Static: plan (hashable move list), eta and init. The denoiser is a pytree argument, so denoisers
# that share an apply_fn (via .replace(params=...)) share one compilation.
jit_restore = jax.jit(restore_one, static_argnames=("plan", "eta", "init"))


def _points(rng, k, shape=SHAPE):
    return rng.uniform(-1, 1, (k,) + shape).astype(np.float32)


def _center(ratio=0.3):
    return M.center_mask(SHAPE[0], SHAPE[1], ratio)


def test_timesteps_and_plan():
    assert sampling_timesteps(1000, 0.5, 5) == (99, 199, 299, 399, 499)
    assert sampling_timesteps(1000, 1.0, 1) == (999,)
    assert sampling_timesteps(10, 0.3, 3) == (0, 1, 2)
    with pytest.raises(ValueError, match="steps"):
        sampling_timesteps(10, 0.3, 4)
    with pytest.raises(ValueError, match="strength"):
        sampling_timesteps(1000, 1.5, 4)
    plan = restore_plan(1000, 0.5, 5)
    assert plan.t_from == (499, 399, 299, 199, 99) and plan.t_to == (399, 299, 199, 99, -1)
    assert plan.t_prev == plan.t_from and plan.network_calls == 5


def _repaint_reference(t_T, jump_length, jump_n_sample):
    """RePaint's guided_diffusion/scheduler.py::get_schedule_jump (states t_T-1..0, then -1)."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize("steps,jump,n", [(6, 2, 3), (50, 10, 10), (7, 3, 1)])
def test_repaint_jump_schedule(steps, jump, n):
    assert jump_schedule(steps, jump, n) == [t + 1 for t in _repaint_reference(steps, jump, n)]
    plan = restore_plan(1000, 0.5, steps, jump, n)
    downs = sum(1 for a, b in zip(jump_schedule(steps, jump, n)[:-1], jump_schedule(steps, jump, n)[1:]) if b < a)
    assert plan.network_calls == downs
    # Jumps only go up, and every move starts from where the previous one ended.
    assert all(p <= f for p, f in zip(plan.t_prev, plan.t_from))
    assert plan.t_prev[1:] == plan.t_to[:-1]
    assert restore_plan(1000, 0.5, 50, 10, 10).network_calls == 410


def test_known_region_exact_deterministic_and_resampling(rng):
    den = analytic_denoiser(_points(rng, 3), SCHEDULE)
    x0 = jnp.asarray(rng.uniform(-1, 1, SHAPE).astype(np.float32))
    mask = M.patch_mask(8, 8, 0.4, jax.random.key(1))
    plan = restore_plan(1000, 0.5, 4, 2, 2)  # with RePaint jumps
    fn = functools.partial(jit_restore, plan=plan, eta=1.0, init="known")
    a = np.asarray(fn(den, x0, mask, jax.random.key(7)))
    b = np.asarray(fn(den, x0, mask, jax.random.key(7)))
    c = np.asarray(fn(den, x0, mask, jax.random.key(8)))
    known = np.asarray(mask) > 0
    np.testing.assert_array_equal(a[known], np.asarray(x0)[known])  # EXACTLY the original
    np.testing.assert_array_equal(a, b)  # deterministic for a fixed key
    assert not np.array_equal(a, c) and np.all(np.isfinite(a))


def test_empty_hole_returns_x0_exactly(rng):
    den = analytic_denoiser(_points(rng, 3), SCHEDULE)
    x0 = jnp.asarray(rng.uniform(-1, 1, SHAPE).astype(np.float32))
    out = jit_restore(den, x0, jnp.ones(SHAPE[:2]), jax.random.key(0), plan=PLAN)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x0))


def test_single_point_denoiser_restores_its_point(rng):
    x_star = _points(rng, 1)[0]
    den = analytic_denoiser(x_star, SCHEDULE)
    mask = _center(0.5)
    hole = ~(np.asarray(mask) > 0)
    # x* = x0: the hole is restored exactly.
    out = jit_restore(den, jnp.asarray(x_star), mask, jax.random.key(0), plan=PLAN)
    assert float(D.masked_mse(jnp.asarray(x_star), out, mask)) < 1e-10
    assert float(D.masked_ssim(jnp.asarray(x_star), out, mask, window=7)) == pytest.approx(1.0, abs=1e-5)
    # x* ≠ x0: the hole holds x*, the known region x0.
    x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    out = np.asarray(jit_restore(den, jnp.asarray(x0), mask, jax.random.key(0), plan=PLAN))
    np.testing.assert_allclose(out[hole], x_star[hole], atol=1e-5)
    np.testing.assert_array_equal(out[~hole], x0[~hole])
    # Pure-noise initialisation reaches the same closed form.
    out = np.asarray(jit_restore(den, jnp.asarray(x0), mask, jax.random.key(0), plan=PLAN, init="noise"))
    np.testing.assert_allclose(out[hole], x_star[hole], atol=1e-5)


def test_x0_clip_bounds_the_restoration(rng):
    x_star = 1.5 * _points(rng, 1)[0]  # a training point outside [-1, 1]
    den = analytic_denoiser(x_star, SCHEDULE).replace(x0_clip=1.0)
    mask = _center(0.5)
    hole = ~(np.asarray(mask) > 0)
    out = np.asarray(jit_restore(den, jnp.zeros(SHAPE), mask, jax.random.key(0), plan=PLAN))
    np.testing.assert_allclose(out[hole], np.clip(x_star, -1, 1)[hole], atol=1e-5)


def test_member_restored_to_itself_nonmember_filled_with_training_content(rng):
    points = _points(rng, 4)
    den = analytic_denoiser(points, SCHEDULE)
    mask = _center(0.3)
    restore = jax.jit(jax.vmap(lambda x, k: restore_one(den, x, mask, k, plan=PLAN)))
    nonmember = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    x = jnp.asarray(np.stack([points[2], nonmember]))
    out = restore(x, jax.random.split(jax.random.key(3), 2))
    mse = jax.vmap(D.masked_mse, in_axes=(0, 0, None))(x, out, mask)
    assert float(mse[0]) < 1e-8  # the member comes back
    assert float(mse[1]) > 0.05  # the non-member does not ...
    to_points = [float(D.masked_mse(jnp.asarray(p), out[1], mask)) for p in points]
    assert min(to_points) < 1e-8  # ... its hole holds a training image's content instead


def test_latent_denoiser_pastes_pixels_back(rng):
    """A VAE stand-in (2×2 mean-pool encoder, nearest-neighbour decoder) around an analytic latent denoiser."""
    image = rng.uniform(-1, 1, (8, 8, 1)).astype(np.float32)

    def encode(params, x, keys):
        del params, keys
        return x.reshape(x.shape[0], 4, 2, 4, 2, x.shape[-1]).mean(axis=(2, 4))

    def decode(params, z):
        del params
        return jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2)

    z_star = np.asarray(encode(None, image[None], None))[0]
    base = analytic_denoiser(z_star, SCHEDULE)
    den = Denoiser(params=base.params, schedule=SCHEDULE, apply_fn=base.apply_fn, sample_shape=(4, 4, 1),
                   x0_clip=None, encoder_params={}, encode_fn=encode, decode_fn=decode, image_shape=(8, 8, 1))
    mask = M.center_mask(8, 8, 0.3)  # 3×3 hole: not aligned with the 2×2 latent cells
    out = np.asarray(jax.jit(lambda x, m: inpaint_one(den, x, m, jax.random.key(0), plan=PLAN))(image, mask))
    known = np.asarray(mask) > 0
    np.testing.assert_array_equal(out[known], image[known])
    np.testing.assert_allclose(out[~known], np.asarray(decode(None, z_star[None]))[0][~known], atol=1e-5)
