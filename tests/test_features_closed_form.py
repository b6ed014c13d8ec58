"""Closed-form checks of every signal with the analytic single-point denoiser (docs/methods/cdi.md §11, 6-11)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia.data import Dataset
from jaxmia.models import Denoiser, analytic_denoiser
from jaxmia.schedule import make_schedule

from features_util import SHAPE, draws, fast_compile

SEED = 3
D = int(np.prod(SHAPE))


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with fast_compile():
        yield


@pytest.fixture(scope="module")
def setup():
    schedule = make_schedule()
    r = np.random.default_rng(7)
    x_star = r.uniform(-1, 1, SHAPE).astype(np.float32)
    images = np.concatenate([r.uniform(-1, 1, (5, *SHAPE)), x_star[None]]).astype(np.float32)  # last = x*
    data = Dataset([f"a{i}" for i in range(6)], images, None, "closed-form")
    ab = np.asarray(schedule.alphas_cumprod, np.float64)
    return analytic_denoiser(x_star, schedule), data, x_star.astype(np.float64), ab


def eps_np(x, t, x_star, ab):
    """The analytic denoiser in float64 NumPy: (x − √ā_t·x*)/√(1−ā_t)."""
    return (x - np.sqrt(ab[t]) * x_star) / np.sqrt(1 - ab[t])


def flat(a):
    return a.reshape(len(a), -1)


@pytest.fixture(scope="module")
def table(setup):
    den, data, _, _ = setup
    names = "loss,secmi,pia,pian,multi_loss,grad_mask"
    return F.extract(den, data, names, seed=SEED, batch_size=6, progress=False, devices=jax.devices()[:1])


def test_dl_and_ml_match_closed_form(setup, table):
    _, data, x_star, ab = setup
    dist = np.linalg.norm(flat(data.images - x_star), axis=1)
    np.testing.assert_allclose(table.column("dl"), np.sqrt(ab[100] / (1 - ab[100])) * dist, rtol=1e-5, atol=1e-5)
    for t in range(0, 1000, 100):
        want = np.sqrt(ab[t] / (1 - ab[t])) * dist
        np.testing.assert_allclose(table.column(f"ml_t{t:03d}"), want, rtol=1e-5, atol=1e-4)
    assert table.column("dl")[-1] < 1e-4  # x0 = x*: the training point has zero loss


def _pia_numpy(x0, x_star, ab, *, t=200, p=5.0, scale=None):
    """PIA / PIAN by their definition (Kong et al. 2024), float64, independent of the closed form."""
    e0 = eps_np(x0, 0, x_star, ab)
    if scale is not None:
        e0 = e0 * scale / np.mean(np.abs(e0), axis=(1, 2, 3), keepdims=True)
    x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * e0
    d = e0 - eps_np(x_t, t, x_star, ab)
    return np.sum(np.abs(flat(d)) ** p, axis=1) ** (1 / p)


def test_pia_and_pian(setup, table):
    _, data, x_star, ab = setup
    x0 = data.images.astype(np.float64)
    closed = np.sqrt(ab[200] / (1 - ab[200])) * np.sum(np.abs(flat(x0 - x_star)) ** 5, axis=1) ** 0.2
    np.testing.assert_allclose(_pia_numpy(x0, x_star, ab), closed, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(table.column("pia"), _pia_numpy(x0, x_star, ab), rtol=1e-5, atol=1e-4)
    pian = _pia_numpy(x0[:-1], x_star, ab, scale=math.sqrt(2 / math.pi))
    np.testing.assert_allclose(table.column("pian")[:-1], pian, rtol=1e-5)
    assert table.column("pia")[-1] < 1e-3 * table.column("pia")[:-1].min()  # zero iff x0 = x*


def test_pian_normalisation(setup):
    e0 = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype(np.float32) * np.arange(1.0, 5.0, dtype=np.float32)[:, None, None, None]
    for scale, value in (("gaussian_mean_abs", math.sqrt(2 / math.pi)), ("cdi_reference", math.sqrt(math.pi / 2))):
        e = jax.jit(jax.vmap(lambda e: F.pian_normalise(e, scale)))(e0)
        np.testing.assert_allclose(np.mean(np.abs(np.asarray(e)), axis=(1, 2, 3)), value, rtol=1e-6)
    assert F.make_config("cdi_reference").pian_scale == "cdi_reference"
    assert F.make_config("cdi").pian_scale == "gaussian_mean_abs"


def test_pian_reference_scale_and_pia_mia_preset(setup):
    den, data, x_star, ab = setup
    x0 = data.images[:3].astype(np.float64)
    ref = F.extract(den, data.subset(data.ids[:3]), "pian,pia", config="cdi_reference", batch_size=4,
                    progress=False, devices=jax.devices()[:1])
    np.testing.assert_allclose(ref.column("pian"), _pia_numpy(x0, x_star, ab, scale=math.sqrt(math.pi / 2)), rtol=1e-5)
    pia4 = F.extract(den, data.subset(data.ids[:3]), "pia", config="pia_mia", batch_size=4,
                     progress=False, devices=jax.devices()[:1])
    # PIA code: p = 4 and no root
    np.testing.assert_allclose(pia4.column("pia"), _pia_numpy(x0, x_star, ab, p=4.0) ** 4, rtol=2e-5)


def test_secmi_error_is_zero_for_every_input(setup, table):
    den, data, _, _ = setup
    scale = np.linalg.norm(flat(data.images), axis=1)
    assert np.all(table.column("secmi") < 1e-5 * scale + 1e-5)
    mia = F.extract(den, data, "secmi", config="secmi_mia", batch_size=6, progress=False, devices=jax.devices()[:1])
    assert np.all(mia.column("secmi") < 1e-9 + 1e-10 * scale)  # squared norm of a ~1e-6 error


def test_secmi_call_counts():
    assert F.get_feature("secmi").cost(F.make_config("cdi")).forward == 12
    assert F.get_feature("secmi").cost(F.make_config("secmi_mia")).forward == 11


def test_gm_matches_numpy_rederivation(setup, table):
    den, data, x_star, ab = setup
    eps = draws(SEED, data.ids, "ml").astype(np.float64)  # GM shares ML's draw (Q11)
    x0 = data.images.astype(np.float64)
    k = int(0.2 * D)
    # the gradient with JAX, everything else with NumPy
    jit_grad = jax.jit(jax.vmap(jax.grad(lambda x, e, t: jnp.linalg.norm((den.eps(x, t) - e).ravel())), (0, 0, None)))
    for t in (0, 300, 900):
        x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
        grad = jit_grad(jnp.asarray(x_t, jnp.float32), jnp.asarray(eps, jnp.float32), t)
        g = np.abs(flat(np.asarray(grad)))
        mask = np.zeros_like(g, bool)
        for i, row in enumerate(g):
            mask[i, np.argsort(-row, kind="stable")[:k]] = True
        mask = mask.reshape(x0.shape)
        assert np.all(mask.reshape(len(mask), -1).sum(axis=1) == k)
        x_m = np.where(mask, eps, x0)
        target = np.where(mask, (eps - x0) - eps_np(x_m, t, x_star, ab), 0.0)
        # the last image is x* itself: its residual is 0 and g is round-off, so its mask is arbitrary
        np.testing.assert_allclose(table.column(f"gm_t{t:03d}")[:-1], np.linalg.norm(flat(target), axis=1)[:-1],
                                   rtol=1e-5, atol=1e-4)


def test_gm_mask_invariants_and_zero_model():
    r = np.random.default_rng(0)
    x0, eps = (jnp.asarray(r.normal(size=SHAPE), jnp.float32) for _ in range(2))
    schedule = make_schedule()
    # ε_θ(x) = x − x0: on the mask x_m = ε, so it returns exactly ε − x0 there: GM must be 0.
    den = Denoiser(params={"x0": x0}, schedule=schedule, apply_fn=lambda p, x, t, c: x - p["x0"][None],
                   sample_shape=SHAPE, digest="eps-minus-x0")
    gm, ml = jax.jit(lambda: F.gm_at(den, x0, None, eps, 300, 0.2))()
    assert float(gm) == 0.0 and float(ml) > 1.0
    g = jnp.asarray(r.normal(size=SHAPE), jnp.float32)
    mask = F.top_fraction_mask(jnp.abs(g), 0.2)
    assert int(mask.sum()) == int(0.2 * D)
    assert float(jnp.abs(g)[mask].min()) >= float(jnp.abs(g)[~mask].max())
    x_m = F.masked_input(x0, eps, mask)
    np.testing.assert_array_equal(np.asarray(x_m)[np.asarray(mask)], np.asarray(eps)[np.asarray(mask)])
    np.testing.assert_array_equal(np.asarray(x_m)[~np.asarray(mask)], np.asarray(x0)[~np.asarray(mask)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_fraction_mask_breaks_ties_by_lowest_index(seed):
    scores = np.random.default_rng(seed).integers(0, 4, 64).astype(np.float32)  # many ties
    for ratio in (0.1, 0.2, 0.5):
        k = int(ratio * 64)
        want = np.zeros(64, bool)
        want[np.argsort(-scores, kind="stable")[:k]] = True
        got = np.asarray(jax.jit(lambda s: F.top_fraction_mask(s, ratio))(jnp.asarray(scores)))
        np.testing.assert_array_equal(got, want)


def test_noise_opt_without_iterations(setup):
    den, data, x_star, ab = setup
    cfg = F.make_config("cdi", no_max_iter=0)
    dev = jax.devices()[:1]
    tab = F.extract(den, data, "noise_opt", config=cfg, seed=SEED, batch_size=6, progress=False, devices=dev)
    x0 = data.images.astype(np.float64)
    np.testing.assert_array_equal(tab.column("no_delta_norm"), 0.0)
    np.testing.assert_allclose(tab.column("no_loss"), np.sqrt(ab[100] / (1 - ab[100])) * np.linalg.norm(flat(x0 - x_star), axis=1),
                               rtol=1e-5, atol=1e-4)
    # reference mode (host SciPy, double-noised final loss): the error at √ā·x_t + √(1−ā)·ε
    ref_cfg = F.make_config("cdi_reference", no_max_iter=0)
    ref = F.extract(den, data, "noise_opt", config=ref_cfg, seed=SEED, batch_size=6, progress=False, devices=dev)
    eps = draws(SEED, data.ids, "no").astype(np.float64)
    x_t = np.sqrt(ab[100]) * x0 + np.sqrt(1 - ab[100]) * eps
    np.testing.assert_array_equal(ref.column("no_delta_norm"), 0.0)
    np.testing.assert_allclose(ref.column("no_loss"), np.sqrt(ab[100] / (1 - ab[100])) * np.linalg.norm(flat(x_t - x_star), axis=1),
                               rtol=1e-5)


def test_lbfgs_decreases_a_cone_and_reports_the_value_at_its_point():
    """J(δ) = ‖a + δ/0.3‖₂ (the analytic model's NO objective up to constants): 5 iterations must not
    increase it, and the returned value must be J at the returned point (read from the line search)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(3, *SHAPE)), jnp.float32)

    def run(a):
        fn = lambda d: jnp.sqrt(jnp.sum((a + d / 0.3 + 0.1 * jnp.sin(d)) ** 2))  # noqa: E731
        best_x, best_v, v0 = F.lbfgs_minimise(fn, jnp.zeros_like(a), max_iter=5)
        return best_v, fn(best_x), v0

    best_v, at_best, v0 = (np.asarray(v) for v in jax.jit(jax.vmap(run))(a))
    np.testing.assert_allclose(v0, np.linalg.norm(np.asarray(a).reshape(3, -1), axis=1), rtol=1e-6)
    assert np.all(best_v < 0.5 * v0)
    np.testing.assert_allclose(best_v, at_best, rtol=1e-6)


def test_costs_count_shared_work_once():
    cfg = F.make_config("cdi")
    assert F.plan_cost(["cdi"], cfg) == F.Cost(forward=45, backward=16, exact=False)
    assert F.plan_cost(["pia", "pian"], cfg).forward == 3
    assert F.plan_cost(["secmi", "pia", "pian"], cfg).forward == 14
    assert F.plan_cost(["grad_mask", "multi_loss"], cfg) == F.Cost(forward=20, backward=10)
    unshared = F.make_config("cdi", share_draws=False)
    assert F.plan_cost(["grad_mask", "multi_loss"], unshared) == F.Cost(forward=30, backward=10)
    assert F.plan_cost(["cdi"], F.make_config("cdi_reference")) == F.Cost(forward=56, backward=16, exact=False)
    assert F.get_feature("loss").cost(cfg) == F.Cost(forward=5)
    assert len(F.cdi_columns(cfg)) == 26


@pytest.mark.parametrize("names, shared_sites, unshared_sites", [
    (("pia", "pian"), 3, 4),  # e0 once
    (("secmi", "pia", "pian"), 6, 8),  # e0 shared with SecMI's first inversion step
    (("grad_mask", "multi_loss"), 2, 3),  # ML read from GM's gradient pass (per scan body)
])
def test_shared_work_is_traced_once(setup, names, shared_sites, unshared_sites):
    """Count the network call sites in the traced program: shared intermediates appear once."""
    den, data, _, _ = setup
    calls = []

    def counting_apply(params, x, t, cond):
        calls.append(1)
        return den.apply_fn(params, x, t, cond)

    counting = den.replace(apply_fn=counting_apply)
    args = (counting, jnp.zeros((2, *SHAPE)), None, jax.random.key(0), jnp.zeros((2, 2), jnp.uint32))
    jax.make_jaxpr(F.jit_features(names, F.make_config(), False))(*args)
    assert len(calls) == shared_sites
    calls.clear()
    separately = [F.jit_features((n,), F.make_config(), False) for n in names]
    for program in separately:
        jax.make_jaxpr(program)(*args)
    assert len(calls) == unshared_sites


def test_config_and_registry_errors():
    with pytest.raises(ValueError, match="'no_mdoe'"):
        F.make_config("cdi", no_mdoe="reference")
    with pytest.raises(ValueError, match="unknown feature preset 'cdx'.*cdi_reference"):
        F.make_config("cdx")
    with pytest.raises(ValueError, match="unknown feature 'los'; known: .*loss"):
        F.parse_features("los,secmi")
    with pytest.raises(ValueError, match="pian_scale"):
        F.make_config("cdi", pian_scale="half")
    with pytest.raises(ValueError, match="secmi_t_cmp"):
        F.make_config("cdi", secmi_t_cmp=95)
    with pytest.raises(ValueError, match="column 'pia'"):
        F.plan_columns(["cdi", "pia"], F.make_config())
    assert F.parse_overrides(["no_mode=reference", "share_draws=false", "ml_timesteps=0,500", "gm_ratio=0.1"]) == {
        "no_mode": "reference", "share_draws": False, "ml_timesteps": (0, 500), "gm_ratio": 0.1}
    with pytest.raises(ValueError, match="share_draws='maybe' must be a bool"):
        F.parse_overrides(["share_draws=maybe"])
    with pytest.raises(ValueError, match="dl_n_draws='5' must be an integer"):
        F.make_config("cdi", dl_n_draws="5")
    with pytest.raises(ValueError, match="share_draws=1 must be a bool"):
        F.make_config("cdi", share_draws=1)
    cfg = F.make_config("secmi_mia", ml_timesteps=[0, 500])
    assert F.config_from_dict(cfg.to_dict()) == cfg and cfg.ml_timesteps == (0, 500)
    ref = F.make_config("cdi_reference")
    assert (ref.no_mode, ref.no_double_noise, ref.share_draws, ref.ml_n_draws) == ("reference", True, False, 1)
    assert (ref.secmi_t_cmp, ref.secmi_norm, ref.pia_p) == (100, "l2", 5.0)
