"""jaxmia.schedule against diffusers' PyTorch schedulers (the oracle) and closed-form identities."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia import schedule as sched

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-6


@pytest.mark.parametrize("beta_schedule,beta_start,beta_end", [
    ("linear", 1e-4, 0.02),
    ("scaled_linear", 0.00085, 0.012),
    ("squaredcos_cap_v2", 1e-4, 0.02),
])
def test_alphas_cumprod_match_diffusers(beta_schedule, beta_start, beta_end):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule,
                                  beta_start=beta_start, beta_end=beta_end)
    ours = sched.make_schedule(beta_schedule, 1000, beta_start, beta_end)
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(ours.betas), ref.betas.numpy(), atol=TOL, rtol=0)


def test_schedule_from_saved_diffusers_configs(tmp_path):
    for cls, kwargs in [(diffusers.DDPMScheduler, {"variance_type": "fixed_large"}),
                        (diffusers.DDIMScheduler, {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                   "beta_end": 0.012})]:
        ref = cls(**kwargs)
        ref.save_pretrained(tmp_path / cls.__name__)
        config = json.loads((tmp_path / cls.__name__ / "scheduler_config.json").read_text())
        ours = sched.schedule_from_config(config, source=cls.__name__)
        np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), atol=TOL, rtol=0)
        assert ours.prediction_type == "epsilon" and ours.num_train_timesteps == 1000


def test_add_noise_matches_q_sample(rng):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000)
    ours = sched.make_schedule("linear", 1000)
    x0 = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    t = np.array([0, 100, 500, 999])
    expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(t)).numpy()
    got = jax.jit(sched.q_sample)(ours, x0, t, eps)
    # diffusers accumulates ā with a float32 cumprod (relative error ~1e-6 after 100 steps); jaxmia's
    # float64 cumprod is the more accurate of the two, hence the looser bound here.
    np.testing.assert_allclose(np.asarray(got), expected, atol=5e-6, rtol=0)


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_step_matches_diffusers(rng, set_alpha_to_one):
    """One η=0 DDIM step of diffusers (clip off, 10 of 1000 steps) equals ``ddim_step`` to
    t − 1000 // 10; from t = 0 diffusers uses ``final_alpha_cumprod`` (1 when set_alpha_to_one,
    else ā_0), which is jaxmia's CLEAN target (resp. t = 0 again)."""
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=set_alpha_to_one,
                                  steps_offset=0, timestep_spacing="leading")
    ref.set_timesteps(10)
    ours = sched.make_schedule("linear", 1000)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    eps = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    step = jax.jit(sched.ddim_step)
    for t in (900, 500, 0):
        expected = ref.step(torch.from_numpy(eps), t, torch.from_numpy(x), eta=0.0).prev_sample.numpy()
        prev = t - 1000 // 10
        if prev < 0:
            prev = sched.CLEAN if set_alpha_to_one else 0
        got = step(ours, x, eps, t, prev)
        np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5, rtol=0)


def test_q_sample_without_noise_scales_x0(rng):
    s = sched.make_schedule("linear", 1000)
    x0 = rng.standard_normal((3, 4, 4, 1)).astype(np.float32)
    t = jnp.array([0, 250, 999])
    got = sched.q_sample(s, x0, t, jnp.zeros_like(x0))
    expected = np.sqrt(np.asarray(s.alphas_cumprod)[[0, 250, 999]])[:, None, None, None] * x0
    np.testing.assert_allclose(np.asarray(got), expected, atol=TOL, rtol=0)
    assert float(sched.alpha_bar(s, sched.CLEAN)) == 1.0


def test_ddim_round_trip_and_identity(rng):
    s = sched.make_schedule("linear", 1000)
    x_s = rng.standard_normal((4, 4, 3)).astype(np.float32)
    eps = rng.standard_normal((4, 4, 3)).astype(np.float32)  # a constant-ε model
    step = jax.jit(sched.ddim_step)
    for s_t, r_t in [(100, 400), (400, 100), (0, 999), (999, 0)]:
        x_r = step(s, x_s, eps, s_t, r_t)
        back = step(s, x_r, eps, r_t, s_t)
        np.testing.assert_allclose(np.asarray(back), x_s, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(step(s, x_s, eps, 300, 300)), x_s, atol=TOL, rtol=0)


def test_first_index_clean_table():
    betas = np.linspace(1e-4, 0.02, 50)
    s = sched.make_schedule(trained_betas=betas, first_index_clean=True)
    table = np.asarray(s.alphas_cumprod, np.float64)
    assert table.shape == (51,) and s.num_train_timesteps == 51
    assert table[0] == 1.0
    for n in (1, 10, 50):
        np.testing.assert_allclose(table[n], np.prod(1.0 - betas[:n]), rtol=1e-6)


def test_schedule_from_config_refuses_unknown_keys():
    with pytest.raises(ValueError, match="beta_schedul'"):
        sched.schedule_from_config({"beta_schedul": "linear"}, source="cfg.json")
    with pytest.raises(ValueError, match="cfg.json"):
        sched.schedule_from_config({"beta_schedule": "cosine"}, source="cfg.json")
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        sched.schedule_from_config({"rescale_betas_zero_snr": True}, source="cfg.json")
