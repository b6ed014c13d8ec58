"""DRC's label-free drc_score, the DDIM-inversion restoration, the model metric and shared noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.data import Dataset
from jaxmia.drc import DRCConfig, drc_score, fit_calibration, mean_z_score, network_calls_per_image, run_drc
from jaxmia.drc import masks as M
from jaxmia.drc import metrics as D
from jaxmia.drc.features import drc_one
from jaxmia.drc.restore import degrade, inpaint_one, invert_one, restore_plan
from jaxmia.models import Denoiser, analytic_denoiser
from jaxmia.rng import id_hashes, root_key
from jaxmia.schedule import make_schedule
from jaxmia.table import load_table

SHAPE = (8, 8, 1)
SCHEDULE = make_schedule(num_train_timesteps=1000)
AB = np.asarray(SCHEDULE.alphas_cumprod, np.float64)


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    prev = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", prev)


def _ab(t):
    return 1.0 if t < 0 else AB[t]


def test_drc_score_matches_numpy_and_calibrated_mean_z(rng):
    scores = rng.normal(size=(12, 4)) * np.array([1.0, 3.0, 0.1, 10.0]) + np.array([0.0, 5.0, -2.0, 40.0])
    want = np.mean([(scores[:, j] - scores[:, j].mean()) / np.sqrt(np.mean((scores[:, j] - scores[:, j].mean()) ** 2))
                    for j in range(4)], axis=0)
    np.testing.assert_allclose(drc_score(scores), want, rtol=1e-12, atol=1e-12)
    # Invariant to a per-task affine change with a positive scale (that is what standardising buys).
    np.testing.assert_allclose(drc_score(scores * np.array([2.0, 0.5, 7.0, 1.0]) + 3.0), want, rtol=1e-10, atol=1e-10)
    cal_scores = rng.normal(size=(6, 4))
    cal = fit_calibration(cal_scores, [f"c{i}" for i in range(6)], ["a", "b", "c", "d"])
    np.testing.assert_allclose(drc_score(scores, cal), ((scores - cal_scores.mean(0)) / cal_scores.std(0)).mean(1))
    np.testing.assert_array_equal(drc_score(scores, cal), mean_z_score(scores, cal))
    with pytest.raises(ValueError, match=r"constant scores for task column\(s\) \[1\]"):
        drc_score(np.stack([scores[:, 0], np.ones(12)], axis=1))
    with pytest.raises(ValueError, match="at least 2 images"):
        drc_score(scores[:1])


def _linear_denoiser(a):
    """ε(x, t) = a·x·(1 + t/1000): a denoiser whose DDIM paths NumPy can follow step by step."""
    return Denoiser(params={"a": jnp.float32(a)}, schedule=SCHEDULE,
                    apply_fn=lambda p, x, t, c: p["a"] * x * (1.0 + t[:, None, None, None] / 1000.0),
                    sample_shape=SHAPE, x0_clip=None, digest="linear")


def _numpy_invert(x0, mask, a, ts, hole_noise=None):
    """NumPy re-derivation of invert_one: DDIM up the timesteps (clean evaluated at t = 0), then down
    with the known region taken from the up path, and the original pasted back; with ``hole_noise``
    the hole at t_K is first replaced by √ā·x0 + √(1−ā)·ε."""
    eps = lambda x, t: a * x * (1.0 + max(t, 0) / 1000.0)  # noqa: E731
    x, path, src = x0.astype(np.float64), {-1: x0.astype(np.float64)}, [-1] + list(ts[:-1])
    for t_from, t_to in zip(src, ts):
        e = eps(x, t_from)
        x0_hat = (x - np.sqrt(1 - _ab(t_from)) * e) / np.sqrt(_ab(t_from))
        x = np.sqrt(_ab(t_to)) * x0_hat + np.sqrt(1 - _ab(t_to)) * e
        path[t_to] = x
    known = mask[..., None] > 0.5
    if hole_noise is not None:
        x = np.where(known, x, np.sqrt(_ab(ts[-1])) * x0 + np.sqrt(1 - _ab(ts[-1])) * hole_noise)
    downs = list(ts[::-1]), list(ts[:-1][::-1]) + [-1]
    for t_from, t_to in zip(*downs):
        e = eps(x, t_from)
        x0_hat = (x - np.sqrt(1 - _ab(t_from)) * e) / np.sqrt(_ab(t_from))
        x = np.where(known, path[t_to], np.sqrt(_ab(t_to)) * x0_hat + np.sqrt(1 - _ab(t_to)) * e)
    return np.where(known, x0, x)


def test_invert_matches_numpy_rederivation(rng):
    x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    mask = np.asarray(M.center_mask(8, 8, 0.3))
    plan = restore_plan(1000, 0.3, 4)
    out = jax.jit(lambda x, m: invert_one(_linear_denoiser(0.3), x, m, plan=plan))(x0, mask)
    want = _numpy_invert(x0, mask, 0.3, list(plan.timesteps))
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(out)[mask > 0], x0[mask > 0])  # known region exact
    assert float(np.abs(want - x0).max()) > 1e-3  # the hole really moved


def test_invert_single_point_closed_form(rng):
    """The one-point denoiser predicts x̂0 = x* at every t > 0: the hole becomes x*, for a member
    (x0 = x*, exact reconstruction) and a non-member alike."""
    x_star = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    den = analytic_denoiser(x_star, SCHEDULE)
    mask = M.center_mask(8, 8, 0.5)
    hole = ~(np.asarray(mask) > 0)
    plan = restore_plan(1000, 0.5, 5)
    fn = jax.jit(lambda x: invert_one(den, x, mask, plan=plan))
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(x_star))), x_star, atol=1e-5)
    x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    out = np.asarray(fn(jnp.asarray(x0)))
    np.testing.assert_allclose(out[hole], x_star[hole], atol=1e-4)
    np.testing.assert_array_equal(out[~hole], x0[~hole])


def _numpy_degrade(x0, mask, fill):
    known = mask[..., None] > 0.5
    value = np.zeros(x0.shape[-1]) if fill == "known" else (x0 * known).sum((0, 1)) / known.sum()
    return np.where(known, x0.astype(np.float64), value)


@pytest.mark.parametrize("fill", ["known", "mean"])
def test_invert_masked_matches_numpy_rederivation_and_never_sees_the_hole(rng, fill):
    """restore='invert_masked' = the NumPy inversion of the DEGRADED image; the hole's content cannot
    change the result (bit for bit), while restore='invert' does depend on it."""
    x0 = rng.uniform(-1, 1, (8, 8, 2)).astype(np.float32)
    mask = np.asarray(M.center_mask(8, 8, 0.3))
    hole = mask < 0.5
    den = Denoiser(params={"a": jnp.float32(0.3)}, schedule=SCHEDULE,
                   apply_fn=lambda p, x, t, c: p["a"] * x * (1.0 + t[:, None, None, None] / 1000.0),
                   sample_shape=(8, 8, 2), x0_clip=None, digest="linear")
    plan = restore_plan(1000, 0.3, 4)
    fn = jax.jit(lambda x, r: inpaint_one(den, x, mask, jax.random.key(0), plan=plan, init=fill, restore=r),
                 static_argnums=1)
    got = np.asarray(fn(x0, "invert_masked"))
    degraded = _numpy_degrade(x0, mask, fill)
    np.testing.assert_allclose(np.asarray(degrade(jnp.asarray(x0), mask, fill)), degraded, rtol=1e-6, atol=1e-7)
    want = _numpy_invert(degraded, mask, 0.3, list(plan.timesteps))
    np.testing.assert_allclose(got, np.where(mask[..., None] > 0.5, x0, want), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[~hole], x0[~hole])  # known region exact
    other = x0.copy()
    other[hole] = rng.uniform(-1, 1, other[hole].shape)  # another hole content, same known region
    np.testing.assert_array_equal(np.asarray(fn(other, "invert_masked")), got)
    assert float(np.abs(np.asarray(fn(other, "invert")) - np.asarray(fn(x0, "invert"))).max()) > 1e-3
    assert float(np.abs(got - np.asarray(fn(x0, "invert"))).max()) > 1e-3  # really a different restoration
    # invert_renoise: the same inversion, the hole of x_{t_start} re-drawn from q(degraded, t_start, ε)
    # with ε = normal(key) (the restoration's key), then the same regeneration.
    renoised = np.asarray(fn(x0, "invert_renoise"))
    eps = np.asarray(jax.random.normal(jax.random.key(0), x0.shape), np.float64)
    want = _numpy_invert(degraded, mask, 0.3, list(plan.timesteps), hole_noise=eps)
    np.testing.assert_allclose(renoised, np.where(mask[..., None] > 0.5, x0, want), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fn(other, "invert_renoise")), renoised)
    assert float(np.abs(renoised - got).max()) > 1e-2  # the re-drawn hole differs from the inverted blank


def test_invert_masked_latent_encodes_the_degraded_image(rng):
    """Latent models: the pixel image is degraded BEFORE the encoder, so the hole cannot leak through it."""
    image = rng.uniform(-1, 1, (8, 8, 1)).astype(np.float32)
    seen = []

    def encode(params, x, keys):
        seen.append(x)
        return x.reshape(x.shape[0], 4, 2, 4, 2, x.shape[-1]).mean(axis=(2, 4))

    base = _linear_denoiser(0.3)
    den = Denoiser(params=base.params, schedule=SCHEDULE, apply_fn=base.apply_fn, sample_shape=(4, 4, 1),
                   x0_clip=None, encoder_params={}, encode_fn=encode,
                   decode_fn=lambda p, z: jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2), image_shape=(8, 8, 1))
    mask = np.asarray(M.center_mask(8, 8, 0.5))
    plan = restore_plan(1000, 0.3, 3)
    out = np.asarray(inpaint_one(den, jnp.asarray(image), mask, jax.random.key(0), plan=plan,
                                 init="mean", restore="invert_masked"))
    np.testing.assert_allclose(np.asarray(seen[0])[0], _numpy_degrade(image, mask, "mean"), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out[mask > 0.5], image[mask > 0.5])


def test_invert_config_errors_name_the_field():
    for restore in ("invert", "invert_masked", "invert_renoise"):
        with pytest.raises(ValueError, match=r"DRCConfig\.eta: got 0\.5, expected 0 with restore='" + restore):
            DRCConfig(restore=restore, eta=0.5)
        with pytest.raises(ValueError, match=r"DRCConfig\.n_resample: got 3"):
            DRCConfig(restore=restore, n_resample=3)
    with pytest.raises(ValueError, match=r"DRCConfig\.init: got 'noise', expected 'known' or 'mean'"):
        DRCConfig(restore="invert_masked", init="noise")
    with pytest.raises(ValueError, match=r"DRCConfig\.init: got 'mean', expected 'known' with restore='invert'"):
        DRCConfig(restore="invert", init="mean")
    cfg = DRCConfig(restore="invert_masked", init="mean", steps=4, ratios=(0.2, 0.4), metrics=("mse",),
                    score_metric="mse")  # 2 kinds × 2 ratios, no model metric
    assert network_calls_per_image(cfg) == 4 * 2 * 4 == network_calls_per_image(cfg.replace(restore="invert_renoise"))
    with pytest.raises(ValueError, match=r"DRCConfig\.init: got 'noise', expected 'known' or 'mean' with restore='invert_renoise'"):
        cfg.replace(restore="invert_renoise", init="noise")


def test_model_distance_closed_form(rng):
    """One-point denoiser: ε̂(q(x, t, ε)) − ε̂(q(y, t, ε)) = √ā_t (x − y)/√(1 − ā_t), so the
    distance is ā_t/(1 − ā_t)·mean((x − y)²) whatever ε and x*."""
    den = analytic_denoiser(rng.uniform(-1, 1, SHAPE).astype(np.float32), SCHEDULE)
    x, y, noise = (rng.uniform(-1, 1, SHAPE).astype(np.float32) for _ in range(3))
    t = 50
    eps_x = den.eps(jnp.sqrt(AB[t]) * x + jnp.sqrt(1 - AB[t]) * noise, jnp.int32(t))
    got = float(D.model_distance(eps_x, den, jnp.asarray(y), t, jnp.asarray(noise)))
    want = AB[t] / (1 - AB[t]) * np.mean((x.astype(np.float64) - y) ** 2)
    assert got == pytest.approx(want, rel=1e-4)


def test_model_metric_latent_closed_form(rng):
    """Latent models: original and restorations are encoded with one key and compared in the latent
    space; with a one-point latent denoiser the distance is ā_t/(1 − ā_t)·mean((E(x) − E(x̂))²)."""
    pool = lambda x: x.reshape(x.shape[0], 4, 2, 4, 2, x.shape[-1]).mean(axis=(2, 4))  # noqa: E731
    keys_seen = []

    def encode(params, x, keys):
        keys_seen.append(keys)
        return pool(x)

    image = jnp.asarray(rng.uniform(-1, 1, SHAPE).astype(np.float32))
    base = analytic_denoiser(rng.uniform(-1, 1, (4, 4, 1)).astype(np.float32), SCHEDULE)
    den = Denoiser(params=base.params, schedule=SCHEDULE, apply_fn=base.apply_fn, sample_shape=(4, 4, 1),
                   x0_clip=None, encoder_params={}, encode_fn=encode,
                   decode_fn=lambda p, z: jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2), image_shape=SHAPE)
    cfg = DRCConfig(kinds=("center", "patches"), ratios=(0.5,), steps=3, metrics=("mse", "model"), score_metric="model",
                    restore="invert_renoise", ssim_window=7, model_timestep=20)
    out = drc_one(den, image, None, id_hashes(["a"])[0], root_key(0), cfg=cfg)
    z_x, z_y = np.asarray(pool(image[None]), np.float64), np.asarray(pool(out["restored"]), np.float64)
    want = AB[20] / (1 - AB[20]) * np.mean((z_x - z_y) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(out["scores"]["model"]), want, rtol=1e-4)
    assert want.min() > 1e-4
    last = jax.random.key_data(keys_seen[-1])
    assert last.shape[0] == 3 and (last == last[0]).all()  # one encoder key for original and restorations


def test_drc_one_new_options_and_call_count(rng):
    den = analytic_denoiser(rng.uniform(-1, 1, SHAPE).astype(np.float32), SCHEDULE)
    image = jnp.asarray(rng.uniform(-1, 1, SHAPE).astype(np.float32))
    root, hashes = root_key(0), id_hashes(["a", "b"])
    cfg = DRCConfig(kinds=("center", "patches"), ratios=(0.25,), steps=3, metrics=("mse", "model"),
                    score_metric="model", restore="invert", ssim_window=7, model_timestep=20)
    one = jax.jit(lambda h: drc_one(den, image, None, h, root, cfg=cfg)["scores"])
    a = one(hashes[0])
    # Deterministic restoration: the mse does not depend on the image id; the model metric's ε does.
    np.testing.assert_array_equal(np.asarray(a["mse"]), np.asarray(one(hashes[1])["mse"]))
    out = drc_one(den, image, None, hashes[0], root, cfg=cfg)
    mse = np.mean((np.asarray(out["restored"]) - np.asarray(image)[None]) ** 2, axis=(1, 2, 3))
    frac = np.asarray(out["hole_fraction"])
    np.testing.assert_allclose(np.asarray(a["mse"]), mse / frac, rtol=1e-4)
    # One-point denoiser: model = ā/(1 − ā)·(whole-image MSE), test_model_distance_closed_form.
    np.testing.assert_allclose(np.asarray(a["model"]), AB[20] / (1 - AB[20]) * mse, rtol=1e-3)
    assert network_calls_per_image(cfg) == 2 * (2 * 3) + 1 + 2
    assert network_calls_per_image(cfg.replace(restore="repaint", metrics=("mse",), score_metric="mse")) == 2 * 3
    with pytest.raises(ValueError, match="eta"):
        cfg.replace(eta=1.0)
    with pytest.raises(ValueError, match="restore"):
        DRCConfig(restore="ddpm")


def test_shared_noise_and_drc_score_column(tmp_path, rng):
    """shared_noise keys the noise by task only: two copies of one image under different ids get
    identical scores; keyed by id they differ. The table's drc_score is the NumPy re-derivation."""
    den = analytic_denoiser(rng.uniform(-1, 1, (3,) + SHAPE).astype(np.float32), SCHEDULE)
    img = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    others = rng.uniform(-1, 1, (2,) + SHAPE).astype(np.float32)
    data = Dataset(["p", "q", "r", "s"], np.concatenate([img[None], img[None], others]), None, "t")
    base = DRCConfig(kinds=("center", "patches"), ratios=(0.25,), steps=3, ssim_window=7, eta=1.0, restore="repaint",
                     metrics=("mse", "psnr", "ssim"), score_metric="psnr")
    tabs = {}
    for shared in (False, True):
        run_drc(den, data, base.replace(shared_noise=shared), tmp_path / str(shared), evidence=0, progress=False,
                devices=jax.devices()[:1])
        tabs[shared] = load_table(tmp_path / str(shared) / "drc_scores.npz")
    cols = [n for n in tabs[True].names if n.startswith("drc_psnr_")]
    same = tabs[True].select(cols).values
    np.testing.assert_array_equal(same[0], same[1])
    keyed = tabs[False].select(cols).values
    assert not np.array_equal(keyed[0], keyed[1])
    for table in tabs.values():
        psnr = table.select(cols).values.astype(np.float64)
        want = ((psnr - psnr.mean(0)) / psnr.std(0)).mean(1)
        assert table.names[-1] == "drc_score" and "drc_score" in table.meta["higher_is_member"]
        np.testing.assert_allclose(table.select(["drc_score"]).values[:, 0], want, rtol=1e-5, atol=1e-6)
