"""``extract()``: run any set of registered signals over a data set and write a feature table.

The union of the requested kernels is ONE per-example function (:func:`feature_kernel`), run by
:func:`jaxmia.runtime.map_examples`: vmapped over fixed-size chunks sharded on the ``"data"`` axis
of a ``("data", "model")`` mesh (params replicated, or split over ``"model"``), the last chunk
padded and masked, so nothing recompiles. Randomness comes from (seed, image id, purpose), so the
table does not depend on the batch size, the device count or interruptions (docs/methods/design.md
§4, §5). Batch-coupled host stages (``no_mode="reference"``) and the noise-optimisation lane pools
(:mod:`jaxmia.features.lanes`) run on each step's rows inside the same loop.

Resume: after every batch the finished rows go to ``<out>.partial.npz`` (atomic rename) with the
run's identity (:func:`run_identity`: features, columns, resolved config, seed, model digest,
shapes; plus the batch size when ``no_mode="reference"``, whose values depend on it). A restart with
the same identity skips the finished ids; a different identity is refused with the differences
named. An interrupted run, resumed, gives the same table as an uninterrupted one.
:func:`resolve_run` computes the placement and identity a call will use, also for
:mod:`jaxmia.distributed`, which checks finished shards against it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Iterable, Optional

import jax
import numpy as np

from jaxmia import compile_cache, rng, runtime
from jaxmia import schedule as sched
from jaxmia.features.config import FeatureConfig, make_config
from jaxmia.features.keys import SampleKey
from jaxmia.features.lanes import LanePool
from jaxmia.features.registry import (SharedWork, expand_requested, get_feature, parse_features, plan_columns,
                                     plan_config, plan_cost, plan_directions, plan_groups, plan_signals)
from jaxmia.runtime import partial_path  # noqa: F401  (public: jaxmia.features.partial_path)
from jaxmia.table import FeatureTable, save_table


@functools.lru_cache(maxsize=64)
def feature_kernel(names: tuple, cfg: FeatureConfig, lanes: bool = False):
    """ONE example's columns of the kernels ``names``: ``kernel(denoiser, x0, cond, key) -> {column: scalar}``.

    ``lanes``: leave out the columns of lane stages (:mod:`jaxmia.features.lanes` computes them;
    ``extract()`` does so). Cached, so the program built from it (:func:`jit_features`) compiles once.
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

    return per_example


def jit_features(names: tuple, cfg: FeatureConfig, with_cond: bool, mesh=None, lanes: bool = False):
    """jit(vmap over examples) of the union of the kernels ``names`` (:func:`runtime.jit_examples`).

    Static (baked into the program): the names, the config, whether conditions are passed, the
    mesh (with one, every data-axis device runs the vmapped kernels on its own rows,
    :func:`runtime.per_device_jit`) and ``lanes`` (:func:`feature_kernel`). The program is
    ``program(denoiser, x0, cond, root, id_hash)``; jit re-traces only for new shapes or a new
    network function.
    """
    return runtime.jit_examples(feature_kernel(tuple(names), cfg, lanes), mesh, with_cond)


def _fit_memory(placed, names, cfg, data, with_cond, device_memory, progress):
    """The placement with a per-device batch that fits the devices' memory (jaxmia.memory), and the note."""
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

    ``per_device_batch`` is the compiled shape, which fixes float rounding (jaxmia.runtime's
    docstring); the batch size is part of it only for batch-coupled signals (``no_mode="reference"``).
    Partial files, and the shards of :mod:`jaxmia.distributed`, are resumed or merged only when it
    matches.
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


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """What one ``extract()`` call runs: the signals, columns, data, placement and identity."""

    names: tuple
    cfg: FeatureConfig
    columns: list
    data: object  # the Dataset
    with_cond: bool
    placed: runtime.Placement
    micro: Optional[dict]  # the memory fit's note (jaxmia.memory), or None
    identity: dict


def resolve_run(denoiser, data, features="cdi", *, config=None, seed: int = 0, batch_size=None, devices=None,
                per_device_batch=None, mesh_shape=None, shard_min_size: int = runtime.DEFAULT_SHARD_MIN_SIZE,
                device_memory=None, progress: bool = False) -> ResolvedRun:
    """Validates an ``extract()`` call's inputs, places the denoiser and computes the run's identity.

    The one place the identity comes from: ``extract()`` runs with it, and :mod:`jaxmia.distributed`
    compares finished shards with it (micro-batching included, :func:`_fit_memory`).
    """
    cfg = config if isinstance(config, FeatureConfig) else make_config(config)
    names = parse_features(features)
    cfg = plan_config(names, cfg)  # the requested signals' own sections, defaults filled in
    columns = plan_columns(names, cfg)
    data = runtime.as_dataset(data)
    runtime.check_images(denoiser, data)
    runtime.check_timesteps(denoiser, cfg.max_timestep(names), source="feature config")
    with_cond = runtime.uses_cond(denoiser, data)
    placed = runtime.place(denoiser, seed, batch_size, devices, per_device_batch=per_device_batch,
                           mesh_shape=mesh_shape, shard_min_size=shard_min_size)
    placed, micro = _fit_memory(placed, names, cfg, data, with_cond, device_memory, progress)
    identity = run_identity(names, columns, cfg, seed, denoiser, placed.batch_size, placed.per_device_batch)
    return ResolvedRun(names, cfg, columns, data, with_cond, placed, micro, identity)


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
    shard_min_size: int = runtime.DEFAULT_SHARD_MIN_SIZE,
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
        :data:`runtime.DEFAULT_PER_DEVICE_BATCH`): the compiled shape, and with it the float
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
    run = resolve_run(denoiser, data, features, config=config, seed=seed, batch_size=batch_size, devices=devices,
                      per_device_batch=per_device_batch, mesh_shape=mesh_shape, shard_min_size=shard_min_size,
                      device_memory=device_memory, progress=progress)
    names, cfg, columns, data, with_cond, placed = run.names, run.cfg, run.columns, run.data, run.with_cond, run.placed
    batch_size = placed.batch_size

    host_specs = [get_feature(n) for n in names if get_feature(n).host_columns(cfg)]
    has_device_columns = any(get_feature(n).device_columns(cfg, lanes=True) for n in names)
    # Lane stages (noise optimisation): one pool each, spanning batches, so no example waits on the
    # slowest of its batch (jaxmia.features.lanes); a row is done when its lanes have finished.
    pools = [LanePool(placed, spec.lane, cfg, with_cond) for spec in map(get_feature, names) if spec.lane_columns(cfg)]
    owed: dict[str, dict] = {}  # rows still waiting for lane columns: their other columns
    host_root = rng.root_key(int(seed)) if host_specs else None  # host stage runs on the default device

    def collect(step: runtime.Step) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        values = {c: np.asarray(v, np.float64) for c, v in (step.outputs or {}).items()}
        if host_specs:  # batch-coupled signals: the step's real rows only, no padding
            x0_real, cond_real = step.real("x0"), step.real("cond") if with_cond else None
            for spec in host_specs:
                values.update(spec.host_fn(denoiser, x0_real, cond_real, host_root, step.id_hash, cfg))
        t1 = time.perf_counter()
        for i, sid in enumerate(step.ids):
            owed[sid] = {c: v[i] for c, v in values.items()}
        for pool in pools:
            for c in step.chunks:
                pool.submit(c.ids, c.mask, c.x0, c.cond, c.id_hash)
            for sid, cols in pool.run(drain=step.last):
                owed[sid].update(cols)
        finished = {sid: np.array([row[c] for c in columns], np.float64)
                    for sid, row in owed.items() if len(row) == len(columns)}
        for sid in finished:
            del owed[sid]
        step.timings.update(host_features=t1 - t0, lanes=time.perf_counter() - t1)
        return finished

    partial = None if out is None else runtime.PartialRows(partial_path(out), run.identity, len(columns))
    mapped = runtime.map_examples(
        feature_kernel(names, cfg, True) if has_device_columns else None, data, placement=placed,
        with_cond=with_cond, collect=collect, partial=partial, resume=resume, progress=progress,
        label="jaxmia features", on_batch=on_batch)
    done, bar = mapped.rows, mapped.progress
    stages = {"inputs": 0.0, "encode": 0.0, "features": 0.0, "host_features": 0.0, "lanes": 0.0, "save_partial": 0.0}
    for name, dt in mapped.timings.items():
        stages["features" if name == "device" else name] += dt

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
        "micro_batching": run.micro,
        "devices": [str(d) for d in placed.mesh.devices.ravel()],
        "unet_evals_per_image": cost.as_dict(),
        "resumed_rows": mapped.resumed_rows,
        "lanes": [{"columns": list(pool.stage.columns(cfg)), **pool.stats, "efficiency": pool.efficiency()}
                  for pool in pools],
        "identity": run.identity,
        "versions": _versions(),
        "timings_s": {**{k: round(v, 4) for k, v in stages.items()},
                      "first_batch": None if mapped.first_step_s is None else round(mapped.first_step_s, 4)},
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
        if partial is not None and partial.path.exists():
            partial.path.unlink()
    return table
