"""``extract()``: run any set of registered signals over a data set and write a feature table.

One jitted program per (features, config, conditioning, shapes) vmaps the per-example kernels over
a fixed-size batch sharded on the ``"data"`` axis of a ``("data", "model")`` mesh (params
replicated, or split over ``"model"``; :mod:`jaxmia.features.runner`); the last batch is padded
and masked, so nothing recompiles. Randomness comes from (seed, image id, purpose), so the table
does not depend on the batch size, the device count or interruptions (docs/methods/design.md §4, §5).

Resume: after every batch the finished rows go to ``<out>.partial.npz`` (atomic rename) with the
run's identity (features, columns, resolved config, seed, model digest, shapes; plus the batch size
when ``no_mode="reference"``, whose values depend on it). A restart with the same identity skips the
finished ids; a different identity is refused with the differences named. An interrupted run,
resumed, gives the same table as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import jax
import numpy as np

from jaxmia import compile_cache, rng
from jaxmia import schedule as sched
from jaxmia.progress import Progress
from jaxmia.features import runner
from jaxmia.features.config import FeatureConfig, config_diff, flatten_nested, make_config
from jaxmia.features.keys import SAMPLE_KEY_AXES, SampleKey
from jaxmia.features.lanes import LanePool
from jaxmia.features.registry import (SharedWork, expand_requested, get_feature, parse_features, plan_columns,
                                     plan_config, plan_cost, plan_directions, plan_groups, plan_signals)
from jaxmia.table import FeatureTable, save_table


@functools.lru_cache(maxsize=64)
def jit_features(names: tuple, cfg: FeatureConfig, with_cond: bool, mesh=None, lanes: bool = False):
    """jit(vmap over examples) of the union of the kernels ``names``.

    Static (baked into the program): the names, the config, whether conditions are passed, the
    mesh (with one, every data-axis device runs the vmapped kernels on its own rows,
    :func:`runner.per_device_jit`) and ``lanes``: leave out the columns of lane stages
    (:mod:`jaxmia.features.lanes` computes them; ``extract()`` does so). The denoiser, the batch,
    the root key and the id hashes are arguments; jit re-traces only for new shapes or a new
    network function.
    """
    specs = [get_feature(n) for n in names]
    columns = [c for s in specs for c in s.device_columns(cfg, lanes=lanes)]
    deferred = [n for n in expand_requested(names) if lanes and get_feature(n).lane_columns(cfg)]

    def per_example(denoiser, x0, cond, key: SampleKey):
        shared = SharedWork(names, deferred)
        out = {}
        for spec in specs:
            out.update(spec.kernel(denoiser, x0, cond, key, cfg, shared))
        missing = [c for c in columns if c not in out]
        if missing:
            raise ValueError(f"feature kernels did not produce column(s) {', '.join(missing)}")
        return {c: out[c] for c in columns}

    def program(denoiser, x0, cond, root, id_hash):
        keys = SampleKey(root=root, id_hash=id_hash)
        in_axes = (None, 0, 0 if with_cond else None, SAMPLE_KEY_AXES)
        return jax.vmap(per_example, in_axes=in_axes)(denoiser, x0, cond, keys)

    if mesh is None:
        return jax.jit(program)
    return runner.per_device_jit(program, mesh, batched=(False, True, with_cond, False, True))


def _fit_memory(placed, names, cfg, data, with_cond, device_memory, progress):
    """The placement with a per-device batch that fits the devices' memory (jaxmia.memory), and the note."""
    import dataclasses
    import sys

    from jaxmia import memory

    limit = device_memory if device_memory is not None else memory.device_limit(placed.mesh.devices.flat[0])
    cond_shape = tuple(np.shape(data.cond)[1:]) if with_cond else None

    def need(b):
        return memory.extraction_memory(placed.denoiser, names, cfg, b, cond_shape=cond_shape, mesh=placed.mesh).need

    pdb, note = memory.fit_per_device_batch(placed.per_device_batch, need, limit)
    if note is None:
        return placed, None
    if progress:
        print(f"jaxmia features: {note}", file=sys.stderr, flush=True)
    return dataclasses.replace(placed, per_device_batch=pdb), {"requested_per_device_batch": placed.per_device_batch,
                                                                "note": note}


def run_identity(names, columns, cfg, seed, denoiser, batch_size, per_device_batch) -> dict:
    """What makes two runs' rows interchangeable: features, columns, config, seed, model, shapes.

    ``per_device_batch`` is the compiled shape, which fixes float rounding (runner's docstring); the
    batch size is part of it only for batch-coupled signals (``no_mode="reference"``). Partial
    files, and the shards of :mod:`jaxmia.distributed`, are resumed or merged only when it matches.
    """
    ident = {
        "features": list(names),
        "columns": list(columns),
        "config": plan_config(names, cfg).to_dict(),
        "seed": int(seed),
        "model_digest": denoiser.digest,
        "schedule_digest": sched.schedule_digest(denoiser.schedule),
        "sample_shape": list(denoiser.sample_shape),
        "per_device_batch": int(per_device_batch),
    }
    if any(get_feature(n).host_columns(cfg) for n in names):
        ident["batch_size"] = int(batch_size)  # batch-coupled (no_mode="reference"): values depend on it
    return ident


def partial_path(out) -> Path:
    return Path(str(out) + ".partial.npz")


def _load_partial(path: Path, identity: dict, data) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        saved = json.loads(str(z["identity"]))
        ids, values = z["ids"].astype(str).tolist(), np.asarray(z["values"], np.float64)
    if saved != identity:
        diff = config_diff(flatten_nested(saved), flatten_nested(identity))
        raise ValueError(
            f"{path}: partial results were made with a different configuration ({'; '.join(diff)}); "
            "delete it or rerun with the same settings"
        )
    known = set(data.ids)
    stray = [i for i in ids if i not in known]
    if stray:
        raise ValueError(f"{path}: holds id(s) not in the data ({', '.join(map(repr, stray[:5]))})")
    return dict(zip(ids, values))


def _save_partial(path: Path, identity: dict, done: dict[str, np.ndarray], n_columns: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(done)
    values = np.stack([done[i] for i in ids]) if ids else np.zeros((0, n_columns))
    with open(tmp, "wb") as f:
        np.savez(f, ids=np.asarray(ids, dtype=str), values=values, identity=np.asarray(json.dumps(identity, sort_keys=True)))
    os.replace(tmp, path)


def _versions() -> dict:
    import flax
    import optax

    import jaxmia

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": np.__version__, "jaxmia": jaxmia.__version__}


def extract(
    denoiser,
    data,
    features: str | Iterable[str] = "cdi",
    *,
    out=None,
    seed: int = 0,
    batch_size: Optional[int] = None,
    config: FeatureConfig | str | None = None,
    devices=None,
    progress: bool = True,
    on_batch: Optional[Callable[[dict], None]] = None,
    resume: bool = True,
    per_device_batch: Optional[int] = None,
    mesh_shape: Optional[tuple] = None,
    shard_min_size: int = runner.DEFAULT_SHARD_MIN_SIZE,
    extra_meta: Optional[dict] = None,
    device_memory: Optional[int] = None,
) -> FeatureTable:
    """Extracts per-image features and returns (and, with ``out``, writes) a feature table.

    Args:
      denoiser: a :class:`~jaxmia.models.Denoiser`; latent models encode each image once (key
        (seed, id, "encode")) before the kernels.
      data: a ``Dataset`` (ids, images (N, H, W, C) in [-1, 1], cond, source) or an image array.
      features: registered names, as a list or a comma-separated string (``"cdi"``, ``"loss,secmi"``).
      out: the ``.npz`` table to write (with its ``.json`` sidecar); enables resuming from
        ``<out>.partial.npz``.
      seed: the root seed of every draw.
      batch_size: images per step: the unit of progress reports and partial saves (default: one
        chunk, ``per_device_batch`` x data-axis devices). It does not change the values.
      config: a :class:`FeatureConfig` or a preset name (default ``"cdi"``).
      devices: the devices of the mesh (default: this process's local devices).
      progress: print progress with an ETA (excluding the compiling first batch) to stderr.
      on_batch: called with a progress dict after each batch has been saved.
      resume: continue from a matching ``<out>.partial.npz`` (False: start over, overwriting it).
      per_device_batch: images each data-axis device computes per call (default
        :data:`runner.DEFAULT_PER_DEVICE_BATCH`): the compiled shape, and with it the float
        rounding, so it is part of the run's identity. Larger is faster on an accelerator.
      mesh_shape: (data, model) device counts, e.g. ``(2, 4)``, one may be -1; default
        ``(n_devices, 1)``. A model axis > 1 splits every parameter leaf of at least
        ``shard_min_size`` elements along its largest divisible axis.
      extra_meta: entries added to the table's sidecar (the sharded runs of
        :mod:`jaxmia.distributed` record the shard there).
      device_memory: bytes per device (default: what ``device.memory_stats()`` reports; none on
        CPU). When ``per_device_batch`` needs more (XLA's memory analysis of the run's programs),
        the largest divisor of it that fits runs instead, as micro-batches, and a line says so;
        the features are then those of that per-device batch, which the identity records
        (:mod:`jaxmia.memory`).

    Returns:
      FeatureTable with one row per image, in data order; ``meta`` holds the resolved config, seed,
      model digest, versions, per-stage timings, throughput and UNet evaluations per image.
    """
    t_start = time.perf_counter()
    compile_cache.ensure_default()  # compile once: the persistent cache (jaxmia.compile_cache)
    compiled_before = compile_cache.snapshot()
    cfg = config if isinstance(config, FeatureConfig) else make_config(config)
    names = parse_features(features)
    cfg = plan_config(names, cfg)  # the requested signals' own sections, defaults filled in
    columns = plan_columns(names, cfg)
    data = runner.as_dataset(data)
    runner.check_images(denoiser, data)
    runner.check_timesteps(denoiser, cfg.max_timestep(names), source="feature config")
    with_cond = runner.uses_cond(denoiser, data)
    placed = runner.place(denoiser, seed, batch_size, devices, per_device_batch=per_device_batch,
                          mesh_shape=mesh_shape, shard_min_size=shard_min_size)
    placed, micro = _fit_memory(placed, names, cfg, data, with_cond, device_memory, progress)
    batch_size = placed.batch_size
    identity = run_identity(names, columns, cfg, seed, denoiser, batch_size, placed.per_device_batch)

    done: dict[str, np.ndarray] = {}
    partial = partial_path(out) if out is not None else None
    if partial is not None and partial.exists() and resume:
        done = _load_partial(partial, identity, data)
    resumed_rows = len(done)
    todo = [sid for sid in data.ids if sid not in done]

    host_specs = [get_feature(n) for n in names if get_feature(n).host_columns(cfg)]
    jit_program = jit_features(names, cfg, with_cond, placed.mesh, lanes=True)
    has_device_columns = any(get_feature(n).device_columns(cfg, lanes=True) for n in names)
    # Lane stages (noise optimisation): one pool each, spanning batches, so no example waits on the
    # slowest of its batch (jaxmia.features.lanes); a row is done when its lanes have finished.
    pools = [LanePool(placed, spec.lane, cfg, with_cond) for spec in map(get_feature, names) if spec.lane_columns(cfg)]
    owed: dict[str, dict] = {}  # rows still waiting for lane columns: their other columns
    host_root = rng.root_key(int(seed)) if host_specs else None  # host stage runs on the default device
    stages = {"inputs": 0.0, "encode": 0.0, "features": 0.0, "host_features": 0.0, "lanes": 0.0, "save_partial": 0.0}
    first_batch_s = None
    total = runner.n_batches(len(todo), batch_size)
    bar = Progress("jaxmia features", total=len(todo), enabled=progress)

    for k, batch in enumerate(runner.batches(data, todo, batch_size), start=1):
        t0 = time.perf_counter()
        real_ids = [sid for sid, real in zip(batch.ids, batch.mask) if real]
        pieces = [(sub.mask, *runner.shard_inputs(placed, sub, with_cond), sub.ids)
                  for sub in runner.chunks(batch, placed.chunk)]
        t1 = time.perf_counter()
        pieces = [(mask, jax.block_until_ready(runner.encode(placed, x, id_hash)), cond, id_hash, ids)
                  for mask, x, cond, id_hash, ids in pieces]
        t2 = time.perf_counter()
        values: dict[str, np.ndarray] = {}
        if has_device_columns:  # dispatch every chunk, then wait: devices never idle between chunks
            outs = [(mask, jit_program(placed.denoiser, x0, cond, placed.root, id_hash))
                    for mask, x0, cond, id_hash, _ in pieces]
            values = {c: np.concatenate([np.asarray(out[c], np.float64)[mask] for mask, out in outs])
                      for c in outs[0][1]}
        t3 = time.perf_counter()
        if host_specs:  # batch-coupled signals: the step's real rows only, no padding
            x0_real = np.concatenate([np.asarray(x0)[mask] for mask, x0, _, _, _ in pieces])
            cond_real = None if not with_cond else np.concatenate([np.asarray(c)[mask] for mask, _, c, _, _ in pieces])
            for spec in host_specs:
                values.update(spec.host_fn(denoiser, x0_real, cond_real, host_root, batch.id_hash[batch.mask], cfg))
        t4 = time.perf_counter()
        for i, sid in enumerate(real_ids):
            owed[sid] = {c: v[i] for c, v in values.items()}
        for pool in pools:
            for mask, x0, cond, id_hash, ids in pieces:
                pool.submit(ids, mask, x0, cond, id_hash)
            for sid, cols in pool.run(drain=k == total):
                owed[sid].update(cols)
        finished = [sid for sid, row in owed.items() if len(row) == len(columns)]
        for sid in finished:
            row = owed.pop(sid)
            done[sid] = np.array([row[c] for c in columns], np.float64)
        t5 = time.perf_counter()
        if partial is not None:
            _save_partial(partial, identity, done, len(columns))
        t6 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            stages[name] += dt
        if k == 1:
            first_batch_s = t6 - t0
        bar.update(len(finished))
        if on_batch is not None:
            on_batch({"batch": k, "n_batches": total, "images_done": len(done), "n_images": len(data.ids),
                      "images_per_s": bar.rate or None, "eta_s": bar.eta})
    if todo:
        bar.finish()

    values = np.stack([done[sid] for sid in data.ids]) if data.ids else np.zeros((0, len(columns)))
    cost = plan_cost(names, cfg)
    steady = bar.rate or None  # images/s after the first (compiling) batch
    meta = {
        "kind": "features",
        "features": list(names),
        **plan_directions(names, cfg),
        "groups": plan_groups(names, cfg),
        "signals": plan_signals(names, cfg),
        "config": cfg.to_dict(),
        "seed": int(seed),
        "model_digest": denoiser.digest,
        "data_source": data.source,
        "n_images": len(data.ids),
        "batch_size": int(batch_size),
        "n_devices": placed.n_devices,
        "mesh_shape": list(placed.mesh_shape),
        "per_device_batch": placed.per_device_batch,
        "micro_batching": micro,
        "devices": [str(d) for d in placed.mesh.devices.ravel()],
        "unet_evals_per_image": cost.as_dict(),
        "resumed_rows": resumed_rows,
        "lanes": [{"columns": list(pool.stage.columns(cfg)), **pool.stats, "efficiency": pool.efficiency()}
                  for pool in pools],
        "identity": identity,
        "versions": _versions(),
        "timings_s": {**{k: round(v, 4) for k, v in stages.items()},
                      "first_batch": None if first_batch_s is None else round(first_batch_s, 4)},
        "throughput": {
            "images_per_s": steady,
            "unet_forward_per_s": None if steady is None else steady * cost.forward,
            "excludes": "the first (compiling) batch",
        },
    }
    meta.update(extra_meta or {})
    meta["timings_s"]["total_before_write"] = round(time.perf_counter() - t_start, 4)
    meta["compile"] = compile_cache.since(compiled_before)  # seconds compiling (or loading), cache hits
    table = FeatureTable(np.asarray(data.ids, dtype=str), columns, values, meta)
    if out is not None:
        save_table(table, out)
        if partial is not None and partial.exists():
            partial.unlink()
    return table
