"""The lane pool (jaxmia.features.lanes): NO without waiting on the slowest lane, bit for bit.

Fixture: the exact denoiser of one training point x* (docs/methods/cdi.md §11). NO's objective is then a
cone, J(δ) = ‖√ā·(x0 − x*) + δ‖₂ / √(1 − ā) with apex at distance r = √ā·‖x0 − x*‖: a far image
(r ≫ 5) takes 5 accepted unit-length steepest-descent moves (6 evaluations: the gradient never
changes, so no curvature pair is stored), while an image close to x* (r ≪ 1) overshoots the apex
and halves its step many times per line search (tens of evaluations). Mixing the two is the case
where a vmapped while loop wastes most.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia.data import Dataset
from jaxmia.features import lanes, runner
from jaxmia.features.registry import LaneStage
from jaxmia.models import analytic_denoiser
from jaxmia.schedule import make_schedule

from features_util import SHAPE, fast_compile

SEED = 3
ONE, TWO = jax.devices()[:1], jax.devices()[:2]
PDB = 2  # per-device batch of every run here: 2 slots per device


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with fast_compile():
        yield


@pytest.fixture(scope="module")
def setup():
    r = np.random.default_rng(0)
    x_star = r.uniform(-0.5, 0.5, SHAPE).astype(np.float32)
    den = analytic_denoiser(x_star, make_schedule())
    n = 10
    far = np.arange(n) % 2 == 0  # alternate: far (fast), near (slow)
    scale = np.where(far, 8.0, 1e-3)[:, None, None, None]
    direction = r.normal(size=(n, *SHAPE))
    direction /= np.linalg.norm(direction.reshape(n, -1), axis=1)[:, None, None, None]
    images = (x_star + scale * direction).astype(np.float32)
    data = Dataset([f"x{i:02d}" for i in range(n)], images, None, "cone")
    ab = float(np.asarray(den.schedule.alphas_cumprod)[100])
    return den, data, far, x_star, ab


@pytest.fixture(scope="module")
def runs(setup):
    den, data, far, _, _ = setup
    kw = dict(seed=SEED, progress=False, per_device_batch=PDB)
    slow_only = data.subset([i for i, f in zip(data.ids, far) if not f])
    reordered = data.subset(data.ids[::-1])
    return {
        "mixed": F.extract(den, data, "noise_opt", batch_size=4, devices=ONE, **kw),
        "batch1": F.extract(den, data, "noise_opt", batch_size=1, devices=ONE, **kw),
        "reordered_two_devices": F.extract(den, reordered, "noise_opt", batch_size=6, devices=TWO, **kw),
        "slow_only": F.extract(den, slow_only, "noise_opt", batch_size=4, devices=ONE, **kw),
    }


def test_far_lanes_match_the_closed_form(setup, runs):
    """r > 5: five unit moves toward the apex, so ‖δ*‖ = 5 and J(δ*) = (r − 5)/√(1 − ā)."""
    _, data, far, x_star, ab = setup
    table = runs["mixed"]
    r = np.sqrt(ab) * np.linalg.norm((data.images - x_star).reshape(len(far), -1), axis=1)
    np.testing.assert_allclose(table.column("no_delta_norm")[far], 5.0, rtol=1e-5)
    np.testing.assert_allclose(table.column("no_loss")[far], (r[far] - 5) / np.sqrt(1 - ab), rtol=1e-4)
    # near lanes: a decrease from J(0) = r/√(1 − ā), and δ* within a few r of the apex
    j0 = r / np.sqrt(1 - ab)
    assert np.all(table.column("no_loss")[~far] < 0.5 * j0[~far])
    assert np.all(np.abs(table.column("no_delta_norm")[~far] - r[~far]) < r[~far])


def test_lane_counts_match_a_while_loop_of_the_same_step(runs, setup):
    """The pool's schedule changes no decision: every lane makes as many evaluations as ONE
    example's while loop over the same step; and the mix is heterogeneous (fast and slow lanes)."""
    den, data, _, _, _ = setup
    stats = runs["mixed"].meta["lanes"][0]
    assert stats["columns"] == ["no_loss", "no_delta_norm"] and stats["lanes"] == 10
    pool_evals = _lane_evals(setup, ONE)
    want = _while_loop_evals(den, data, F.make_config("cdi"))
    assert [pool_evals[i] for i in data.ids] == want.tolist()
    assert want.max() >= 2 * want.min()
    assert stats["evals_needed"] == want.sum()


def test_bit_identical_whatever_the_batch_mates_batch_size_and_devices(runs):
    base = runs["mixed"]
    for name in ("batch1", "reordered_two_devices", "slow_only"):
        other = runs[name]
        np.testing.assert_array_equal(other.values, base.rows(other.ids.tolist()).values, err_msg=name)


def test_work_done_is_close_to_work_needed(runs, setup):
    """The pool computes idle slots only at the end of the run (at most one per slot and call); a
    vmapped while loop over the same chunks runs every lane as long as the slowest of its chunk."""
    _, data, _, _, _ = setup
    stats = runs["mixed"].meta["lanes"][0]
    evals = _lane_evals(setup, ONE)
    per_row = np.array([evals[i] for i in data.ids])
    vmapped = sum(PDB * per_row[lo:lo + PDB].max() for lo in range(0, len(per_row), PDB))
    assert stats["slot_evals"] == stats["calls"] * PDB
    assert stats["evals_needed"] <= stats["slot_evals"] <= stats["evals_needed"] + PDB * per_row.max()
    assert stats["efficiency"] == stats["evals_needed"] / stats["slot_evals"] >= 0.85
    assert stats["slot_evals"] < vmapped


def test_same_iterates_as_the_while_loop(setup, runs):
    """The lanes run lbfgs_minimise's state machine: the same values up to float rounding."""
    den, data, _, _, _ = setup
    cfg = F.make_config("cdi")
    eps = jnp.asarray(_draws(data.ids))
    example = jax.jit(jax.vmap(lambda x, e: F.noise_opt_example(den, x, None, e, cfg)))
    no_loss, delta_norm = (np.asarray(v) for v in example(jnp.asarray(data.images), eps))
    np.testing.assert_allclose(runs["mixed"].column("no_loss"), no_loss, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(runs["mixed"].column("no_delta_norm"), delta_norm, rtol=1e-4, atol=1e-6)


def test_evals_per_call_changes_no_bits(setup, runs):
    den, data, _, _, _ = setup
    got = _pool_run(den, data, F.make_config("cdi"), ONE, evals_per_call=3)[0]
    base = runs["mixed"]
    for i, sid in enumerate(base.ids):
        assert got[sid] == {"no_loss": base.values[i, 0], "no_delta_norm": base.values[i, 1]}


def test_double_noise_costs_one_more_evaluation(setup):
    """no_double_noise: one more evaluation per lane (checked without iterations), at √ā·(x_t + δ*) + √(1−ā)·ε; for a far lane
    δ* = −5·u (u the unit direction of √ā·(x0 − x*)), so the re-noised loss has a closed form."""
    den, data, far, x_star, ab = setup
    cfg = F.make_config("cdi", no_double_noise=True)
    table = F.extract(den, data, "noise_opt", config=cfg, seed=SEED, progress=False, per_device_batch=PDB,
                      batch_size=4, devices=ONE)
    _, evals = _pool_run(den, data, cfg, ONE)
    assert table.meta["lanes"][0]["evals_needed"] == sum(evals.values())
    x0, eps = data.images.astype(np.float64), _draws(data.ids).astype(np.float64)
    v = np.sqrt(ab) * (x0 - x_star)
    delta = -5 * v / np.linalg.norm(v.reshape(len(v), -1), axis=1)[:, None, None, None]
    x_t = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    point = np.sqrt(ab) * (x_t + delta) + np.sqrt(1 - ab) * eps
    want = np.linalg.norm(((point - np.sqrt(ab) * x_star) / np.sqrt(1 - ab) - eps).reshape(len(v), -1), axis=1)
    np.testing.assert_allclose(table.column("no_loss")[far], want[far], rtol=1e-4)
    np.testing.assert_allclose(table.column("no_delta_norm")[far], 5.0, rtol=1e-5)
    # no iterations: one evaluation at δ = 0, plus the re-noised one: ‖ε_θ(√ā·x_t + √(1−ā)·ε) − ε‖
    # = √(ā/(1−ā))·‖x_t − x*‖ for this model
    for double, n_evals in ((False, 1), (True, 2)):
        cfg0 = F.make_config("cdi", no_max_iter=0, no_double_noise=double)
        got, evals = _pool_run(den, data, cfg0, ONE)
        assert set(evals.values()) == {n_evals}
        assert all(got[i]["no_delta_norm"] == 0.0 for i in data.ids)
        x_base = x_t if double else x0
        want0 = np.sqrt(ab / (1 - ab)) * np.linalg.norm((x_base - x_star).reshape(len(v), -1), axis=1)
        np.testing.assert_allclose([got[i]["no_loss"] for i in data.ids], want0, rtol=1e-5, atol=1e-6)


def test_a_synthetic_stage_with_known_lengths():
    """The driver alone: lane i makes n_i = 1 + (i mod 4)·7 steps, each adding Σ ε_θ(x0, 0); any
    slot, any neighbour: the sum is n_i·Σ ε_θ(x0, 0) and the pool's counts are exact."""
    x_star = np.zeros(SHAPE, np.float32)
    den = analytic_denoiser(x_star, make_schedule())
    n = 9
    lengths = 1 + (np.arange(n) % 4) * 7
    images = np.stack([np.full(SHAPE, float(k), np.float32) for k in lengths]) / 100.0

    def init(d, x0, cond, key, cfg):
        return {"x0": x0, "n": jnp.round(x0[0, 0, 0] * 100).astype(jnp.int32), "k": jnp.int32(0),
                "acc": jnp.float32(0)}

    def step(d, s, cfg):
        return dict(s, k=s["k"] + 1, acc=s["acc"] + jnp.sum(d.eps(s["x0"], 0)))

    stage = LaneStage(columns=lambda cfg: ("acc",), init=init, step=step, running=lambda s, cfg: s["k"] < s["n"],
                      outputs=lambda s, cfg: {"acc": s["acc"]}, evals=lambda s: s["k"])
    data = Dataset([f"s{i}" for i in range(n)], images, None, "synthetic")
    placed = runner.place(den, 0, 4, TWO, per_device_batch=2)
    pool = lanes.LanePool(placed, stage, F.make_config("cdi"), False)
    got = {}
    for batch in runner.batches(data, data.ids, 4):
        for sub in runner.chunks(batch, placed.chunk):
            x, _, h = runner.shard_inputs(placed, sub, False)
            pool.submit(sub.ids, sub.mask, x, None, h)
        got.update(pool.run())
    got.update(pool.run(drain=True))
    ab = float(np.asarray(den.schedule.alphas_cumprod)[0])
    eps0 = images.reshape(n, -1).sum(1) / np.sqrt(1 - ab)  # ε(x, 0) = x/√(1 − ā₀) with x* = 0
    np.testing.assert_allclose([got[i]["acc"] for i in data.ids], lengths * eps0, rtol=1e-5)
    assert pool.lane_evals == dict(zip(data.ids, lengths.tolist()))
    assert pool.stats["evals_needed"] == lengths.sum() and pool.stats["slot_evals"] == 4 * pool.stats["calls"]
    assert pool.stats["slot_evals"] <= lengths.sum() + 4 * lengths.max()


def test_submit_checks_the_chunk_shape(setup):
    den, data, _, _, _ = setup
    placed = runner.place(den, 0, 2, ONE, per_device_batch=2)
    pool = lanes.LanePool(placed, F.get_feature("noise_opt").lane, F.make_config("cdi"), False)
    with pytest.raises(ValueError, match="a chunk has 2 rows, got 3 ids"):
        pool.submit(["a", "b", "c"], np.ones(3, bool), None, None, None)
    with pytest.raises(ValueError, match="evals_per_call 0"):
        lanes.programs(F.get_feature("noise_opt").lane, F.make_config("cdi"), False, placed.mesh, 0)


# ---- helpers -----------------------------------------------------------------------------------


def _draws(ids):
    from features_util import draws

    return draws(SEED, ids, "no")


def _pool_run(den, data, cfg, devices, evals_per_call=1):
    placed = runner.place(den, SEED, 4, devices, per_device_batch=PDB)
    pool = lanes.LanePool(placed, F.get_feature("noise_opt").lane, cfg, False, evals_per_call=evals_per_call)
    got = {}
    for batch in runner.batches(data, data.ids, 4):
        for sub in runner.chunks(batch, placed.chunk):
            x, _, h = runner.shard_inputs(placed, sub, False)
            pool.submit(sub.ids, sub.mask, x, None, h)
        got.update(pool.run())
    got.update(pool.run(drain=True))
    return got, pool.lane_evals


def _while_loop_evals(den, data, cfg):
    """Evaluations per example of a per-example while loop over NO's lane step (the old form)."""
    from jaxmia import rng
    from jaxmia.features.keys import SampleKey
    from jaxmia.features.noise_opt import no_lane_evals, no_lane_init, no_lane_running, no_lane_step

    def one(x0, id_hash):
        state = no_lane_init(den, x0, None, SampleKey(root=rng.root_key(SEED), id_hash=id_hash), cfg)
        state = jax.lax.while_loop(lambda s: no_lane_running(s, cfg), lambda s: no_lane_step(den, s, cfg), state)
        return no_lane_evals(state)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(data.images), jnp.asarray(rng.id_hashes(data.ids))))


_MEMO = {}


def _lane_evals(setup, devices):
    """Evaluations per lane of the default config on the setup's data (computed once)."""
    if "evals" not in _MEMO:
        den, data, _, _, _ = setup
        _MEMO["evals"] = _pool_run(den, data, F.make_config("cdi"), devices)[1]
    return _MEMO["evals"]
