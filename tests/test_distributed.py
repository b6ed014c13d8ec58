"""Scaling out: 1/2/4 devices, the model axis, two jax.distributed processes, a kill and a restart.

Multi-process tests run ``distributed_worker.py`` subprocesses on CPU (fake devices from XLA_FLAGS)
with a loopback coordinator on a free port (127.0.0.1 only); every subprocess is waited for or
killed before the test returns.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia.data import load_dataset, write_npz
from jaxmia.drc import DRCConfig, run_drc
from jaxmia.models import analytic_denoiser
from jaxmia.schedule import make_schedule
from jaxmia.table import load_table

from distributed_worker import EXIT_CODE, FEATURES, SEED
from features_util import assert_close_across_programs, fast_compile, tiny_dataset, tiny_denoiser

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
ONE, TWO = jax.devices()[:1], jax.devices()[:2]
N_IMAGES = 12


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with fast_compile():
        yield


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    data = tiny_dataset(N_IMAGES, seed=4)
    order = np.random.default_rng(0).permutation(N_IMAGES)  # data order != sorted order of the ids
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    write_npz(path, [data.ids[i] for i in order], data.images[order])
    return path


@pytest.fixture(scope="module")
def reference(data_file):
    """One process, one device: the table every other layout must reproduce."""
    return F.extract(tiny_denoiser(), load_dataset(str(data_file)), FEATURES, seed=SEED, batch_size=4,
                     devices=ONE, progress=False)


def _env(n_devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]))
    return env


def _spawn(args, n_devices: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=_env(n_devices), cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, _ = proc.communicate()
        pytest.fail(f"worker {proc.args[2:]} timed out after {timeout}s:\n{out[-3000:]}")
    return proc.returncode, out


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and nothing else
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(table, reference):
    assert table.ids.tolist() == reference.ids.tolist()
    assert table.names == reference.names
    assert_close_across_programs(table.values, reference.values)


# ---- devices and the model axis ---------------------------------------------------------------


def test_one_two_and_four_devices_and_a_model_axis_give_the_same_features(tmp_path, data_file, reference):
    four = _spawn(["extract", data_file, tmp_path / "four.npz", "--mesh", "4,1", "--mesh", "2,2"], n_devices=4)
    try:
        data = load_dataset(str(data_file))
        two = F.extract(tiny_denoiser(), data, FEATURES, seed=SEED, per_device_batch=3, devices=TWO, progress=False)
        model = F.extract(tiny_denoiser(), data, FEATURES, seed=SEED, per_device_batch=4, devices=TWO,
                          mesh_shape=(1, 2), shard_min_size=0, progress=False)
        rc, out = _finish(four, 120)
        assert rc == 0, out
    finally:
        _kill(four)
    assert (two.meta["n_devices"], two.meta["mesh_shape"], two.meta["batch_size"]) == (2, [2, 1], 6)
    assert (model.meta["mesh_shape"], model.meta["batch_size"]) == ([1, 2], 4)
    tables = {"2 devices": two, "mesh (1, 2)": model,
              "4 devices": load_table(tmp_path / "four-4x1.npz"), "mesh (2, 2)": load_table(tmp_path / "four-2x2.npz")}
    assert tables["4 devices"].meta["n_devices"] == 4 and tables["mesh (2, 2)"].meta["mesh_shape"] == [2, 2]
    for name, table in tables.items():
        assert np.all(np.isfinite(table.values)), name
        _assert_same(table, reference)


def test_model_axis_splits_large_leaves_along_their_largest_divisible_axis():
    mesh = F.data_mesh(TWO, (1, 2))
    assert F.leaf_sharding((3, 3, 8, 16), mesh, 0).spec == jax.sharding.PartitionSpec(None, None, None, "model")
    assert F.leaf_sharding((3, 3, 8, 8), mesh, 0).spec == jax.sharding.PartitionSpec(None, None, "model", None)
    assert F.leaf_sharding((3, 5), mesh, 0).spec == jax.sharding.PartitionSpec()  # nothing divides
    assert F.leaf_sharding((64, 64), mesh, 64 * 64 + 1).spec == jax.sharding.PartitionSpec()  # too small
    assert F.leaf_sharding((64, 64), F.data_mesh(TWO), 0).spec == jax.sharding.PartitionSpec()  # no model axis
    placed = F.shard_denoiser(tiny_denoiser(), mesh, shard_min_size=0)
    specs = [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(placed.params)]
    assert any("model" in spec for spec in specs)
    kernel = placed.params["params"]["Conv_1"]["kernel"]  # (3, 3, 8, 8): half the input channels per device
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 4, 8)}
    with pytest.raises(ValueError, match=r"mesh_shape \(2, 2\): needs 4 devices, this process has 2"):
        F.data_mesh(TWO, (2, 2))
    assert F.data_mesh(TWO, (-1, 2)).shape == {"data": 1, "model": 2}
    # A step of 5 rows runs as chunks of 2 x 2 devices (the last one padded); only the chunk is compiled.
    stepped = F.extract(tiny_denoiser(), tiny_dataset(7), "loss", batch_size=5, per_device_batch=2, devices=TWO,
                        progress=False)
    assert (stepped.meta["batch_size"], stepped.meta["per_device_batch"]) == (5, 2)
    np.testing.assert_array_equal(
        stepped.values, F.extract(tiny_denoiser(), tiny_dataset(7), "loss", per_device_batch=2, devices=TWO,
                                  progress=False).values)


def test_loss_sweep_and_drc_run_on_the_same_mesh_with_the_same_results():
    den, data = tiny_denoiser(), tiny_dataset(5)
    sweep = F.loss_sweep(den, data, (10, 500), n_draws=2, seed=1, batch_size=1, devices=ONE)
    sweep_model = F.loss_sweep(den, data, (10, 500), n_draws=2, seed=1, per_device_batch=2, devices=TWO,
                               mesh_shape=(1, 2), shard_min_size=0)
    assert_close_across_programs(sweep_model.reshape(len(sweep_model), -1), sweep.reshape(len(sweep), -1),
                                 err_msg="loss sweep, mesh (1, 2) vs 1 device")

    points = tiny_dataset(2, seed=9).images
    analytic = analytic_denoiser(points, make_schedule(num_train_timesteps=100)).replace(x0_clip=1.0)
    cfg = DRCConfig(kinds=("center",), ratios=(0.25,), steps=2, metrics=("mse",), score_metric="mse")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1 device": run_drc(analytic, data, cfg, Path(tmp) / "a", batch_size=2, devices=ONE, evidence=0,
                                progress=False),
            "mesh (1, 2)": run_drc(analytic, data, cfg, Path(tmp) / "c", per_device_batch=2, devices=TWO,
                                   mesh_shape=(1, 2), shard_min_size=0, evidence=0, progress=False),
        }
        tables = {k: load_table(r["table"]) for k, r in runs.items()}
    base = tables["1 device"]
    assert tables["mesh (1, 2)"].meta["mesh_shape"] == [1, 2] and tables["mesh (1, 2)"].meta["batch_size"] == 2
    for name, table in tables.items():
        assert table.ids.tolist() == base.ids.tolist(), name
        assert_close_across_programs(table.values, base.values, err_msg=name)


# ---- two processes on localhost ---------------------------------------------------------------


def _shard_args(data_file, out, port, k, *extra):
    return ["shard", data_file, out, "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
            "--process-id", k, *extra]


def _cli_args(data_file, out, port, k):
    return ["cli", "features", "tiny-model", data_file, "--features", FEATURES, "--out", out, "--seed", SEED,
            "--per-device-batch", 1, "--coordinator", f"127.0.0.1:{port}", "--num-processes", 2,
            "--process-id", k]


def _complete(shard: Path) -> bool:
    """extract() writes the table, then its sidecar, then deletes the partial file."""
    return Path(f"{shard}.json").exists() and not F.partial_path(shard).exists()


def _rows_in(partial: Path) -> int:
    if not partial.exists():
        return 0
    with np.load(partial, allow_pickle=False) as z:
        return len(z["ids"])


def test_two_processes_match_one_and_a_killed_run_restarts_without_recomputing(tmp_path, data_file, reference):
    from jaxmia.distributed import shard_path

    out = tmp_path / "features.npz"
    shards = [shard_path(out, k, 2) for k in range(2)]
    partials = [F.partial_path(s) for s in shards]
    procs = []
    try:
        # Run 1: process 1 dies hard after its first batch (2 of its 6 rows saved); process 0 is
        # killed once its shard is written (it would wait for process 1 at the merge barrier).
        port = _free_port()
        procs = [_spawn(_shard_args(data_file, out, port, 0)),
                 _spawn(_shard_args(data_file, out, port, 1, "--exit-after-batches", 1))]
        rc, log = _finish(procs[1], 120)
        assert rc == EXIT_CODE, log
        deadline = time.monotonic() + 60
        while procs[0].poll() is None and not _complete(shards[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill(procs[0])
        assert not out.exists() and not shards[1].exists()
        assert _rows_in(partials[1]) == 2
        before = {k: (shards[k].stat().st_mtime_ns if _complete(shards[k]) else None, _rows_in(partials[k]))
                  for k in range(2)}

        # Run 2: both restart through the CLI; process 0 merges after the barrier.
        port = _free_port()
        procs = [_spawn(_cli_args(data_file, out, port, k)) for k in range(2)]
        logs = [_finish(p, 120) for p in procs]
    finally:
        for p in procs:
            _kill(p)
    for rc, log in logs:
        assert rc == 0, log
    assert "merged 2 shards: 12 images" in logs[0][1]

    merged = load_table(out)
    _assert_same(merged, reference)  # same rows, same (data) order, same values as one process
    assert merged.meta["n_processes"] == 2 and merged.meta["n_devices"] == 4
    for k in range(2):
        mtime, saved_rows = before[k]
        meta = load_table(shards[k]).meta
        if mtime is not None:  # complete before the kill: reused, not rewritten
            assert shards[k].stat().st_mtime_ns == mtime and "reused" in logs[k][1]
        else:  # resumed: exactly the rows that had reached disk were skipped
            assert meta["resumed_rows"] == saved_rows
        assert not partials[k].exists()
    assert load_table(shards[1]).meta["resumed_rows"] == 2


# ---- merge: refusals, and independent processes without a coordinator -------------------------


@pytest.fixture(scope="module")
def cli_shards(tmp_path_factory, data_file, monkeypatch_module):
    """Shards 0 and 1 of 2 written by two independent `jaxmia features` calls (no coordinator)."""
    from click.testing import CliRunner

    import jaxmia.models
    from jaxmia.cli import main

    monkeypatch_module.setattr(jaxmia.models, "load_denoiser", lambda path, **kw: tiny_denoiser())
    out = tmp_path_factory.mktemp("cli") / "features.npz"
    for k in range(2):
        res = CliRunner().invoke(main, ["features", "tiny-model", str(data_file), "--features", FEATURES, "--out",
                                        str(out), "--seed", str(SEED), "--batch-size", "2", "--num-processes", "2",
                                        "--process-id", str(k)])
        assert res.exit_code == 0, res.output
        assert f"jaxmia merge --out {out}" in res.output
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_independent_processes_then_jaxmia_merge_give_the_one_process_table(cli_shards, reference, tmp_path):
    from click.testing import CliRunner

    from jaxmia.cli import main

    assert not cli_shards.exists()
    res = CliRunner().invoke(main, ["merge", "--out", str(tmp_path / "m.npz"),
                                    str(cli_shards) + ".shard-1-of-2.npz", str(cli_shards) + ".shard-0-of-2.npz"])
    assert res.exit_code == 0, res.output
    _assert_same(load_table(tmp_path / "m.npz"), reference)
    res = CliRunner().invoke(main, ["merge", "--out", str(cli_shards)])  # default: OUT.shard-*-of-*.npz
    assert res.exit_code == 0 and "2 shards, 12 images x 2 columns" in res.output, res.output
    _assert_same(load_table(cli_shards), reference)


def _tampered(src: Path, dst: Path, *, drop=None, add_from=None, meta=None) -> Path:
    from jaxmia.table import FeatureTable, save_table

    t = load_table(src)
    ids, values = t.ids.tolist(), t.values
    if drop is not None:
        keep = [i != drop for i in ids]
        ids, values = [i for i in ids if i != drop], values[keep]
    if add_from is not None:
        extra = load_table(add_from)
        ids, values = ids + extra.ids[:1].tolist(), np.concatenate([values, extra.values[:1]])
    new_meta = dict(t.meta)
    if meta is not None:
        meta(new_meta)
    return save_table(FeatureTable(np.asarray(ids), t.names, values, new_meta), dst / src.name)


def test_merge_refuses_missing_duplicated_or_foreign_shards_naming_the_difference(cli_shards, tmp_path):
    from jaxmia.distributed import merge_shards, shard_path

    s0, s1 = shard_path(cli_shards, 0, 2), shard_path(cli_shards, 1, 2)
    dirs = {name: tmp_path / name for name in ("drop", "dup", "cfg", "model")}
    for d in dirs.values():
        d.mkdir()
    victim = load_table(s1).ids[2]
    dropped = _tampered(s1, dirs["drop"], drop=victim)
    with pytest.raises(ValueError, match=rf"id '{victim}' of shard 1-of-2 is missing from .*drop"):
        merge_shards([s0, dropped])

    stolen = load_table(s1).ids[0]
    dup = _tampered(s0, dirs["dup"], add_from=s1)
    with pytest.raises(ValueError, match=rf"id '{stolen}' is duplicated: in shard 0-of-2 .*dup.* and in shard 1-of-2"):
        merge_shards([dup, s1])

    def other_config(m):
        m["identity"] = {**m["identity"], "config": {**m["identity"]["config"], "dl_n_draws": 7}}

    cfg = _tampered(s1, dirs["cfg"], meta=other_config)
    with pytest.raises(ValueError, match=r"different runs: config.dl_n_draws: 5 in shard 0-of-2 .* vs 7 in shard 1"):
        merge_shards([s0, cfg])

    def other_model(m):
        m["identity"] = {**m["identity"], "model_digest": "f00d"}

    model = _tampered(s0, dirs["model"], meta=other_model)
    with pytest.raises(ValueError, match=r"model_digest: 'f00d' in shard 0-of-2 .*model.* vs 'tiny-0' in shard 1-of-2"):
        merge_shards([model, s1])

    with pytest.raises(ValueError, match=r"missing shard\(s\) 1-of-2 \(expected .*features.npz.shard-1-of-2.npz\)"):
        merge_shards([s0])
    with pytest.raises(ValueError, match="shard 0-of-2 given twice"):
        merge_shards([s0, s1, _tampered(s0, dirs["dup"])])
    with pytest.raises(ValueError, match="not in the data"):
        merge_shards([s0, s1], expected_ids=load_table(s0).ids.tolist() + load_table(s1).ids.tolist()[1:])


def test_a_restart_with_other_settings_refuses_the_existing_shard(cli_shards, data_file):
    from jaxmia.distributed import ProcessLayout, extract_sharded

    with pytest.raises(ValueError, match=r"shard-0-of-2.npz: was made with different settings \(seed: 3 in the "
                                         r"existing shard vs 4 in this run\)"):
        extract_sharded(tiny_denoiser(), load_dataset(str(data_file)), FEATURES, out=cli_shards, seed=4,
                        batch_size=2, layout=ProcessLayout(0, 2, False), devices=TWO, progress=False)
    run = extract_sharded(tiny_denoiser(), load_dataset(str(data_file)), FEATURES, out=cli_shards, seed=SEED,
                          batch_size=2, layout=ProcessLayout(1, 2, False), devices=TWO, progress=False)
    assert run.reused and run.merged is None and len(run.table.ids) == 6


# ---- shares and layouts -----------------------------------------------------------------------


def test_shares_are_contiguous_blocks_of_the_sorted_ids_whatever_the_order():
    from jaxmia.distributed import share_of

    ids = [f"id{i:02d}" for i in range(10)]
    shuffled = [ids[i] for i in np.random.default_rng(1).permutation(10)]
    shares = [share_of(shuffled, k, 3) for k in range(3)]
    assert shares == [ids[0:3], ids[3:6], ids[6:10]]
    assert [share_of(ids, k, 3) for k in range(3)] == shares
    assert sum(map(len, [share_of(ids, k, 4) for k in range(4)])) == 10
    with pytest.raises(ValueError, match=r"process_id 3: must be in \[0, 3\)"):
        share_of(ids, 3, 3)


def test_process_layout_from_flags_and_env(monkeypatch):
    from jaxmia.distributed import ProcessLayout, process_layout

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert process_layout() == ProcessLayout(0, 1, False)
    assert process_layout(num_processes=4, process_id=2) == ProcessLayout(2, 4, False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "3")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert process_layout() == ProcessLayout(1, 3, False)
    monkeypatch.setenv("JAX_PROCESS_ID", "x")
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='x': not an integer"):
        process_layout()
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(ValueError, match="num_processes given without process_id"):
        process_layout()
    with pytest.raises(ValueError, match=r"process_id 5: must be < num_processes \(3\)"):
        process_layout(process_id=5)
