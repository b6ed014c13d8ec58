"""jaxmia.runtime.map_examples: the one batch loop of extract, loss_sweep and run_drc.

Properties of the loop itself, on tiny per-example kernels: values keyed by (seed, id, purpose)
whatever the batch size (bit-exact), padding rows never reach a result, per-row extras travel with
their row, an interrupted-then-resumed run equals an uninterrupted one, latent models are encoded
once per id with the key (seed, id, "encode"), and two devices agree with one to rounding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia import rng, runtime
from jaxmia.data import Dataset
from jaxmia.models import analytic_denoiser
from jaxmia.schedule import make_schedule

from features_util import SHAPE, assert_close_across_programs, draws, fast_compile, tiny_dataset, tiny_denoiser

SEED = 11
ONE, TWO = jax.devices()[:1], jax.devices()[:2]


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with fast_compile():
        yield


@functools.lru_cache(maxsize=None)
def probe_kernel():
    """ONE example: its id hash, its pixel sum, a keyed draw's sum and its extra (the row number)."""

    def per_example(denoiser, x0, cond, key, row):
        return {"id_hash": key.id_hash, "x_sum": jnp.sum(x0), "draw": jnp.sum(key.normal("probe", 0, x0.shape)),
                "row": row}

    return per_example


@functools.lru_cache(maxsize=None)
def loss_kernel():
    """ONE example's denoising error at t=300 with its "probe" draw (a network call per row)."""

    def per_example(denoiser, x0, cond, key):
        return F.denoising_error(denoiser, x0, 300, key.normal("probe", 0, x0.shape), cond)

    return per_example


def _probe(data, batch_size, per_device_batch, devices, **kwargs):
    placed = runtime.place(tiny_denoiser(), SEED, batch_size, devices, per_device_batch=per_device_batch)
    rows = np.arange(len(data.ids), dtype=np.float32)
    return runtime.map_examples(probe_kernel(), data, placement=placed, with_cond=False, extra=(rows,),
                                progress=False, **kwargs)


def test_rows_are_their_own_whatever_the_batching_and_padding_never_leaks():
    data = tiny_dataset(7)
    want_draw = draws(SEED, data.ids, "probe").reshape(7, -1).sum(axis=1)
    results = {}
    for batch_size, pdb, devices in ((1, 2, ONE), (3, 2, ONE), (7, 2, ONE), (5, 1, TWO), (4, 2, TWO)):
        seen = []

        def collect(step, seen=seen):
            seen.append(list(step.ids))
            return step.rows()

        mapped = _probe(data, batch_size, pdb, devices, collect=collect)
        cols = mapped.columns(data.ids)
        # Steps hold only real rows, each id once, in data order; padding rows never come back.
        assert [i for ids in seen for i in ids] == data.ids
        assert all(len(ids) == min(batch_size, 7 - k * batch_size) for k, ids in enumerate(seen))
        assert sorted(mapped.rows) == sorted(data.ids) and mapped.resumed_rows == 0
        np.testing.assert_array_equal(cols["id_hash"], rng.id_hashes(data.ids))
        np.testing.assert_array_equal(cols["row"], np.arange(7, dtype=np.float32))  # extras travel with their row
        np.testing.assert_allclose(cols["x_sum"], data.images.reshape(7, -1).sum(axis=1), rtol=1e-5)
        np.testing.assert_allclose(cols["draw"], want_draw, rtol=1e-5, atol=1e-5)
        results[(batch_size, pdb, len(devices))] = cols
    # Same per-device shape and device count: the same program, so bit-identical whatever the batch size.
    for key in ((3, 2, 1), (7, 2, 1)):
        for name in results[key]:
            np.testing.assert_array_equal(results[key][name], results[(1, 2, 1)][name], err_msg=f"{key} {name}")
    for name in ("x_sum", "draw"):  # another device count compiles another program: equal to rounding
        assert_close_across_programs(results[(4, 2, 2)][name], results[(1, 2, 1)][name], err_msg=name)


def test_a_subset_of_ids_runs_in_the_given_order_and_an_empty_one_runs_nothing():
    data = tiny_dataset(6)
    ids = ["img004", "img001", "img005"]
    mapped = _probe(data, 2, 2, ONE, ids=ids)
    assert list(mapped.rows) == ids
    np.testing.assert_array_equal(mapped.columns(ids)["row"], np.array([4, 1, 5], np.float32))
    assert _probe(data, 2, 2, ONE, ids=[]).rows == {}


def test_resumed_run_equals_the_uninterrupted_one(tmp_path):
    den, data = tiny_denoiser(), tiny_dataset(7)
    placed = runtime.place(den, SEED, 3, TWO, per_device_batch=1)
    identity = {"kernel": "loss_t300", "seed": SEED}

    def collect(step):  # float64 row vectors, as partial files hold
        return {sid: np.array([v], np.float64) for sid, v in zip(step.ids, step.outputs)}

    def run(partial=None, **kwargs):
        return runtime.map_examples(loss_kernel(), data, placement=placed, with_cond=False, collect=collect,
                                    partial=partial, progress=False, **kwargs)

    full = run().rows
    path = runtime.partial_path(tmp_path / "t.npz")
    partial = runtime.PartialRows(path, identity, 1)

    class Stop(Exception):
        pass

    def stop_after_first(info):
        assert info["n_batches"] == 3 and info["n_images"] == 7
        raise Stop

    with pytest.raises(Stop):
        run(partial, on_batch=stop_after_first)
    with np.load(path) as z:
        assert z["ids"].tolist() == data.ids[:3] and z["values"].shape == (3, 1)
    steps = []
    resumed = run(partial, on_batch=steps.append)
    assert resumed.resumed_rows == 3 and [s["batch"] for s in steps] == [1, 2]  # only the 4 rows left ran
    assert sorted(resumed.rows) == sorted(full)
    for sid in data.ids:
        np.testing.assert_array_equal(resumed.rows[sid], full[sid])
    assert run(partial, resume=False).resumed_rows == 0
    with pytest.raises(ValueError, match=r"different configuration \(seed: 11 -> 12\)"):
        run(runtime.PartialRows(path, {**identity, "seed": 12}, 1))
    other = Dataset(["img000", "zzz"], data.images[:2], None, "other")
    with pytest.raises(ValueError, match=r"holds id\(s\) not in the data \('img001'"):
        runtime.map_examples(loss_kernel(), other, placement=placed, with_cond=False, collect=collect,
                             partial=partial, progress=False)


def test_two_devices_agree_with_one_and_cond_is_passed_per_row():
    den, data = tiny_denoiser(3), tiny_dataset(5, labels=True)
    out = {}
    for devices in (ONE, TWO):
        placed = runtime.place(den, SEED, 4, devices, per_device_batch=2)
        out[len(devices)] = runtime.map_examples(loss_kernel(), data, placement=placed, with_cond=True,
                                                 progress=False).columns(data.ids)
    assert_close_across_programs(out[2], out[1], err_msg="2 devices vs 1")
    jit_err = jax.jit(jax.vmap(lambda x, e, c: F.denoising_error(den, x, 300, e, c)))
    eps = jnp.asarray(draws(SEED, data.ids, "probe"))
    np.testing.assert_allclose(out[1], jit_err(jnp.asarray(data.images), eps, jnp.asarray(data.cond)), rtol=1e-5)
    wrong = jit_err(jnp.asarray(data.images), eps, jnp.asarray((data.cond + 1) % 3))
    assert not np.allclose(out[1], wrong, rtol=1e-4)


def test_latent_models_are_encoded_once_per_id_unless_the_kernel_encodes():
    x_star = np.zeros((4, 4, 1), np.float32)

    def encode_fn(params, images, keys):
        noise = jax.vmap(lambda k: jax.random.normal(k, (4, 4, 1)))(keys)
        return images[:, ::2, ::2, :] * params["scale"] + 0.1 * noise

    den = analytic_denoiser(x_star, make_schedule()).replace(
        encoder_params={"scale": jnp.float32(0.5)}, encode_fn=encode_fn, image_shape=SHAPE)
    data = tiny_dataset(5)
    keys = rng.keys_for(rng.root_key(SEED), jnp.asarray(rng.id_hashes(data.ids)), "encode")
    latents = np.asarray(encode_fn({"scale": 0.5}, jnp.asarray(data.images), keys))
    kernel = _identity_kernel()
    placed = runtime.place(den, SEED, 3, TWO, per_device_batch=1)
    got = runtime.map_examples(kernel, data, placement=placed, with_cond=False, progress=False).columns(data.ids)
    np.testing.assert_allclose(got, latents, rtol=1e-6, atol=1e-6)
    raw = runtime.map_examples(kernel, data, placement=placed, with_cond=False, encode_latents=False,
                               progress=False).columns(data.ids)
    np.testing.assert_array_equal(raw, data.images)


@functools.lru_cache(maxsize=None)
def _identity_kernel():
    return lambda denoiser, x0, cond, key: x0


def test_resolve_run_is_the_identity_extract_records():
    den, data = tiny_denoiser(), tiny_dataset(3)
    cfg = F.make_config("cdi", dl_n_draws=1)
    table = F.extract(den, data, "loss", config=cfg, seed=SEED, batch_size=2, per_device_batch=1, devices=TWO,
                progress=False)
    from jaxmia.features.extract import resolve_run

    resolved = resolve_run(den, data, "loss", config=cfg, seed=SEED, batch_size=2, per_device_batch=1, devices=TWO)
    assert resolved.identity == table.meta["identity"]
    assert resolved.identity["per_device_batch"] == 1 and resolved.placed.chunk == 2
    with pytest.raises(ValueError, match=r"images of shape \(4, 4, 1\)"):
        resolve_run(den, np.zeros((2, 4, 4, 1), np.float32), "loss")
