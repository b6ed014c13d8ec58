"""Scaling out on JAX's own multi-controller runtime: process setup, id shares, shard files, merge.

One process per host (or per GPU) runs the same command. Each process

1. joins the run with :func:`initialize` (``jax.distributed.initialize`` from flags, from
   ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, or auto-detected on
   TPU pods, SLURM and Open MPI);
2. takes its deterministic share of the ids (:func:`share_of`: the ids sorted, cut into P
   contiguous blocks; independent of batch size, device count and data order);
3. extracts that share on its *local* devices with :func:`jaxmia.features.extract` (data
   parallel, or split over a ``"model"`` axis) and writes ``<out>.shard-<k>-of-<P>.npz`` with a
   sidecar holding the config, seed, model digest, its assigned ids and their data positions;
4. after a barrier, process 0 merges the shards into ``<out>`` (:func:`merge_shards`), refusing
   shards with a missing or duplicated id or different settings, and naming what differs.

Without a coordinator (``num_processes``/``process_id`` only, e.g. a SLURM job array with no
interconnect) the shares and shard files are the same, and ``jaxmia merge`` joins them afterwards.

Preemption: a killed run restarts with the same command. A complete shard (same settings) is
reused as is; an incomplete one resumes from its ``.partial.npz``, which ``extract`` rewrites after
every batch. No row that reached disk is computed twice, and no row is lost.

The merge needs every shard on one filesystem (a shared disk on clusters); see docs/scaling.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np

from jaxmia.features.config import flatten_nested
from jaxmia.table import FeatureTable, load_table, save_table

# jaxmia.features is imported inside the functions that need it: initialize() must run before any
# JAX computation, so this module imports nothing that could create an array at import time.

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_SHARD_NAME = re.compile(r"^(?P<base>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)\.npz$")


@dataclasses.dataclass(frozen=True)
class ProcessLayout:
    """This process's place in the run.

    Attributes:
      process_id, num_processes: k and P; process k extracts ``share_of(ids, k, P)``.
      coordinated: joined through ``jax.distributed`` (barriers and the automatic merge work);
        False for independent processes that only split the ids (merge with ``jaxmia merge``).
    """

    process_id: int = 0
    num_processes: int = 1
    coordinated: bool = False


def _env_int(value, env: str, *, minimum: int, flag: str):
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{env}={text!r}: not an integer") from None
        flag = env
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{flag} {value!r}: must be an integer >= {minimum}")
    return int(value)


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, local_device_ids=None, bind_address: Optional[str] = None,
               timeout_s: int = 300) -> ProcessLayout:
    """Joins a ``jax.distributed`` run; call it before anything touches a JAX device.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service (default
        ``$JAX_COORDINATOR_ADDRESS``). num_processes, process_id: P and k (default
        ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``). Whatever is still unset is auto-detected
        by JAX on Cloud TPU pods, SLURM and Open MPI; elsewhere it is an error.
      local_device_ids: restrict this process to these local accelerators (JAX's argument).
      bind_address: where process 0's service listens. JAX binds ``[::]:PORT`` (every
        interface); for a loopback coordinator (``127.0.0.1``, ``localhost``) jaxmia binds the
        coordinator address itself, so a single-host run opens no public port.
      timeout_s: how long to wait for all processes to join.

    Returns:
      The :class:`ProcessLayout` (``coordinated=True``). Calling it again with agreeing
      arguments returns the same layout; disagreeing ones are an error.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR, "").strip() or None
    num_processes = _env_int(num_processes, ENV_NUM_PROCESSES, minimum=1, flag="num_processes")
    process_id = _env_int(process_id, ENV_PROCESS_ID, minimum=0, flag="process_id")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(f"process_id {process_id}: must be < num_processes ({num_processes})")
    if jax.distributed.is_initialized():
        here = ProcessLayout(jax.process_index(), jax.process_count(), True)
        if num_processes not in (None, here.num_processes) or process_id not in (None, here.process_id):
            raise ValueError(f"jax.distributed is already initialized as process {here.process_id} of "
                             f"{here.num_processes}, not {process_id} of {num_processes}")
        return here
    if bind_address is None and coordinator is not None and _is_loopback(coordinator):
        bind_address = coordinator
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                  local_device_ids=local_device_ids, initialization_timeout=int(timeout_s))
    if bind_address is not None:
        kwargs["coordinator_bind_address"] = bind_address
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"jax.distributed.initialize(coordinator={coordinator!r}, num_processes={num_processes}, "
            f"process_id={process_id}) failed: {str(err).rstrip('.')}. Give --coordinator HOST:PORT, "
            f"--num-processes and --process-id (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), "
            "or run under a TPU pod, SLURM or Open MPI, where JAX detects them"
        ) from err
    return ProcessLayout(jax.process_index(), jax.process_count(), True)


def process_layout(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                   process_id: Optional[int] = None, *, distributed: bool = False,
                   **initialize_kwargs) -> ProcessLayout:
    """The layout the CLI asks for: coordinated, independent shares, or a single process.

    * a coordinator (argument or ``$JAX_COORDINATOR_ADDRESS``) or ``distributed=True``
      (auto-detect on TPU pods / SLURM / Open MPI): :func:`initialize`;
    * ``num_processes`` and ``process_id`` only (arguments or env): independent processes that
      split the ids without talking to each other;
    * nothing: one process, ``ProcessLayout(0, 1, False)``.
    """
    if distributed or coordinator or os.environ.get(ENV_COORDINATOR, "").strip():
        return initialize(coordinator, num_processes, process_id, **initialize_kwargs)
    num_processes = _env_int(num_processes, ENV_NUM_PROCESSES, minimum=1, flag="num_processes")
    process_id = _env_int(process_id, ENV_PROCESS_ID, minimum=0, flag="process_id")
    if num_processes is None and process_id is None:
        return ProcessLayout()
    if num_processes is None or process_id is None:
        given, missing = ("process_id", "num_processes") if num_processes is None else ("num_processes", "process_id")
        raise ValueError(f"{given} given without {missing}: give both (or a coordinator)")
    if process_id >= num_processes:
        raise ValueError(f"process_id {process_id}: must be < num_processes ({num_processes})")
    return ProcessLayout(process_id, num_processes, False)


# ---- shares and shard files -------------------------------------------------------------------


def share_of(ids: Sequence[str], process_id: int, num_processes: int) -> list[str]:
    """Process k's ids: block k of the P contiguous blocks of the sorted ids (sizes differ by <= 1).

    Depends only on the set of ids, k and P: not on the data order, batch size or device count.
    """
    if not 0 <= int(process_id) < int(num_processes):
        raise ValueError(f"process_id {process_id}: must be in [0, {num_processes})")
    ordered = sorted(str(i) for i in ids)
    n, p, k = len(ordered), int(num_processes), int(process_id)
    return ordered[k * n // p:(k + 1) * n // p]


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the sorted id set: every shard of one run records the same value."""
    return hashlib.sha256(json.dumps(sorted(str(i) for i in ids)).encode()).hexdigest()


def shard_path(out, process_id: int, num_processes: int) -> Path:
    """``<out>.shard-<k>-of-<P>.npz``."""
    return Path(f"{out}.shard-{int(process_id)}-of-{int(num_processes)}.npz")


def shard_paths(out, num_processes: int) -> list[Path]:
    return [shard_path(out, k, num_processes) for k in range(int(num_processes))]


def barrier(name: str) -> None:
    """Blocks until every process of a ``jax.distributed`` run reaches ``name`` (no-op alone)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass(frozen=True)
class ShardedRun:
    """What :func:`extract_sharded` did in this process.

    Attributes:
      layout: this process's :class:`ProcessLayout`.
      table: this process's rows (its shard; the whole table when P = 1).
      shard: the shard file (None when P = 1).
      reused: the shard was complete from an earlier run and nothing was computed.
      merged: the merged table's path (process 0 of a coordinated run, or P = 1), else None.
      merged_table: the merged table, where ``merged`` is set.
    """

    layout: ProcessLayout
    table: FeatureTable
    shard: Optional[Path]
    reused: bool
    merged: Optional[Path]
    merged_table: Optional[FeatureTable]


def _differences(a: dict, b: dict, a_name: str, b_name: str) -> list[str]:
    fa, fb = flatten_nested(a), flatten_nested(b)
    return [f"{k}: {fa.get(k, '<absent>')!r} in {a_name} vs {fb.get(k, '<absent>')!r} in {b_name}"
            for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def _reusable_shard(path: Path, identity: dict, info: dict) -> Optional[FeatureTable]:
    """The complete shard at ``path`` if it was made by this very run layout; None if absent."""
    if not path.exists():
        return None
    from jaxmia.features import partial_path

    table = load_table(path)
    old_info = table.meta.get("shard")
    if (old_info is None or "identity" not in table.meta) and partial_path(path).exists():
        return None  # killed between writing the shard and its sidecar: the partial file still has every row
    if old_info is None or "identity" not in table.meta:
        raise ValueError(f"{path}: exists but is not a jaxmia shard (its sidecar lacks 'shard'/'identity'); "
                         "delete it or choose another --out")
    diff = _differences(table.meta["identity"], identity, "the existing shard", "this run")
    diff += _differences({k: old_info.get(k) for k in ("index", "count", "n_total", "ids_sha256")},
                         {k: info[k] for k in ("index", "count", "n_total", "ids_sha256")},
                         "the existing shard", "this run")
    if diff:
        raise ValueError(f"{path}: was made with different settings ({'; '.join(diff)}); "
                         "delete it or rerun with the same settings")
    if sorted(table.ids.tolist()) != sorted(info["ids"]):
        raise ValueError(f"{path}: holds {len(table)} rows but its share has {len(info['ids'])} ids; "
                         "delete it to recompute the shard")
    return table


def extract_sharded(denoiser, data, features="cdi", *, out, layout: Optional[ProcessLayout] = None,
                    merge: Optional[bool] = None, seed: int = 0, batch_size: Optional[int] = None,
                    per_device_batch: Optional[int] = None, mesh_shape=None, config=None, devices=None,
                    progress: bool = True, on_batch=None, resume: bool = True, **extract_kwargs) -> ShardedRun:
    """This process's share of :func:`jaxmia.features.extract`, written as a shard, then merged.

    Args:
      denoiser, data, features, seed, batch_size, per_device_batch, mesh_shape, config, devices,
        progress, on_batch, resume, extract_kwargs: as in :func:`~jaxmia.features.extract`; the
        devices default to this process's local devices.
      out: the merged table; the shard goes to ``<out>.shard-<k>-of-<P>.npz``.
      layout: k, P and whether the processes are coordinated (default: from ``jax.distributed``
        if it is initialized, else one process).
      merge: merge on process 0 after a barrier (default: when coordinated). Independent
        processes cannot wait for each other: merge with :func:`merge_shards` / ``jaxmia merge``.

    Returns:
      A :class:`ShardedRun`. With P = 1 this is a plain ``extract(out=out)``.
    """
    from jaxmia import runtime
    from jaxmia.features import extract
    from jaxmia.features.extract import resolve_run

    if layout is None:
        layout = ProcessLayout(jax.process_index(), jax.process_count(), jax.process_count() > 1)
    merge = layout.coordinated if merge is None else bool(merge)
    if merge and layout.num_processes > 1 and not layout.coordinated:
        raise ValueError("merge=True needs coordinated processes (jax.distributed); merge the shards afterwards "
                         "with jaxmia merge")
    kwargs = dict(features=features, seed=seed, batch_size=batch_size, per_device_batch=per_device_batch,
                  mesh_shape=mesh_shape, config=config, devices=devices, progress=progress, on_batch=on_batch,
                  resume=resume, **extract_kwargs)
    if layout.num_processes == 1:
        table = extract(denoiser, data, out=out, **kwargs)
        return ShardedRun(layout, table, None, False, Path(out), table)

    data = runtime.as_dataset(data)
    share = share_of(data.ids, layout.process_id, layout.num_processes)
    position = {sid: row for row, sid in enumerate(data.ids)}
    info = {"index": layout.process_id, "count": layout.num_processes, "n_total": len(data.ids),
            "ids_sha256": ids_digest(data.ids), "ids": share, "rows": [position[i] for i in share]}
    path = shard_path(out, layout.process_id, layout.num_processes)
    # The identity extract() will record (the same resolution: batching, memory fit), to check a finished shard.
    identity = resolve_run(denoiser, data, features, config=config, seed=seed, batch_size=batch_size, devices=devices,
                           per_device_batch=per_device_batch, mesh_shape=mesh_shape,
                           **{k: extract_kwargs[k] for k in ("shard_min_size", "device_memory") if k in extract_kwargs}
                           ).identity
    table = _reusable_shard(path, identity, info) if resume else None
    reused = table is not None
    if not reused:
        table = extract(denoiser, data.subset(share), out=path, extra_meta={"shard": info}, **kwargs)

    merged = merged_table = None
    if merge:
        barrier(f"jaxmia-shards-{Path(str(out)).name}-{layout.num_processes}")
        if layout.process_id == 0:
            merged_table = merge_shards(shard_paths(out, layout.num_processes), out=out, expected_ids=data.ids)
            merged = Path(out)
    return ShardedRun(layout, table, path, reused, merged, merged_table)


# ---- merge ------------------------------------------------------------------------------------


def _label(info: dict) -> str:
    return f"shard {info['index']}-of-{info['count']}"


def _load_shard(path: Path):
    table = load_table(path)
    info = table.meta.get("shard")
    if not isinstance(info, dict) or "identity" not in table.meta:
        raise ValueError(f"merge: {path} is not a jaxmia shard (its sidecar {path}.json has no 'shard' entry)")
    return table, info


def merge_shards(paths: Sequence, out=None, *, expected_ids: Optional[Sequence[str]] = None) -> FeatureTable:
    """Joins the shards of one sharded extraction into one table (and writes it to ``out``).

    Refuses, naming the shard files and values: shards of different runs (count, id set,
    features, columns, config, seed, model digest), a shard given twice or missing, an id in two
    shards, an id missing from its shard, and (with ``expected_ids``) ids the data do not match.

    Returns:
      The table in the data order the shards recorded; ``meta`` is the shards' common metadata
      plus ``n_processes``, summed devices, resumed rows and throughput, and a ``shards`` list.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("merge: no shard files given")
    loaded = [(p, *_load_shard(p)) for p in paths]
    first_path, first_table, first_info = loaded[0]
    first_name = f"{_label(first_info)} ({first_path})"
    for path, table, info in loaded[1:]:
        name = f"{_label(info)} ({path})"
        layout = ("count", "n_total", "ids_sha256")
        diff = _differences({k: first_info.get(k) for k in layout}, {k: info.get(k) for k in layout}, first_name, name)
        diff += _differences(first_table.meta["identity"], table.meta["identity"], first_name, name)
        if diff:
            raise ValueError(f"merge: {name} and {first_name} come from different runs: {'; '.join(diff)}")

    count, n_total = int(first_info["count"]), int(first_info["n_total"])
    by_index = defaultdict(list)
    for path, _, info in loaded:
        by_index[int(info["index"])].append(path)
    for index, files in sorted(by_index.items()):
        if len(files) > 1:
            raise ValueError(f"merge: shard {index}-of-{count} given twice: {', '.join(map(str, files))}")
    missing = [k for k in range(count) if k not in by_index]
    if missing:
        m = _SHARD_NAME.match(first_path.name)
        where = "" if m is None else f" (expected {shard_path(first_path.with_name(m['base']), missing[0], count)})"
        raise ValueError(f"merge: missing shard(s) {', '.join(f'{k}-of-{count}' for k in missing)}{where}")

    owner: dict[str, str] = {}
    for path, table, info in loaded:
        for sid in table.ids.tolist():
            if sid in owner:
                raise ValueError(f"merge: id {sid!r} is duplicated: in {owner[sid]} and in {_label(info)} ({path})")
            owner[sid] = f"{_label(info)} ({path})"
    row_of: dict[str, int] = {}
    for path, table, info in loaded:
        assigned, held = list(info["ids"]), set(table.ids.tolist())
        lost = [i for i in assigned if i not in held]
        if lost:
            more = f" (and {len(lost) - 1} more)" if len(lost) > 1 else ""
            raise ValueError(f"merge: id {lost[0]!r}{more} of {_label(info)} is missing from {path}")
        stray = sorted(held - set(assigned))
        if stray:
            raise ValueError(f"merge: {path} holds id {stray[0]!r}, which is not in the share of {_label(info)}")
        row_of.update(zip(assigned, (int(r) for r in info["rows"])))
    if len(owner) != n_total or ids_digest(owner) != first_info["ids_sha256"]:
        raise ValueError(f"merge: the shards hold {len(owner)} ids, not the {n_total} ids they were cut from")
    if expected_ids is not None:
        expected = [str(i) for i in expected_ids]
        absent = [i for i in expected if i not in owner]
        extra = sorted(set(owner) - set(expected))
        if absent or extra:
            what = f"id {absent[0]!r} is in no shard" if absent else f"id {extra[0]!r} is not in the data"
            raise ValueError(f"merge: the shards do not match the data: {what}")
        order = expected
    else:
        if sorted(row_of.values()) != list(range(n_total)):
            raise ValueError("merge: the shards' recorded data positions are not 0..N-1 exactly once")
        order = sorted(owner, key=row_of.__getitem__)

    rows = {}
    for _, table, _ in loaded:
        rows.update(zip(table.ids.tolist(), table.values))
    values = np.stack([rows[i] for i in order]) if order else np.zeros((0, len(first_table.names)))
    merged = FeatureTable(np.asarray(order, dtype=str), first_table.names, values,
                          _merged_meta([(p, t.meta) for p, t, _ in sorted(loaded, key=lambda x: x[2]["index"])]))
    if out is not None:
        save_table(merged, out)
    return merged


def _merged_meta(shards: list) -> dict:
    first = shards[0][1]
    meta = {k: v for k, v in first.items() if k != "shard"}
    rates = [m.get("throughput", {}).get("images_per_s") for _, m in shards]
    meta.update({
        "n_images": int(sum(m["n_images"] for _, m in shards)),
        "n_processes": len(shards),
        "n_devices": int(sum(m.get("n_devices", 0) for _, m in shards)),
        "devices": [d for _, m in shards for d in m.get("devices", [])],
        "resumed_rows": int(sum(m.get("resumed_rows", 0) for _, m in shards)),
        "throughput": {
            "images_per_s": None if any(r is None for r in rates) else float(sum(rates)),
            "excludes": "each process's first (compiling) batch; the sum of the processes' rates",
        },
        "timings_s": {"per_shard": [m.get("timings_s") for _, m in shards]},
        "shards": [{"file": str(p), "index": m["shard"]["index"], "n_images": m["n_images"],
                    "n_devices": m.get("n_devices"), "mesh_shape": m.get("mesh_shape"),
                    "resumed_rows": m.get("resumed_rows"), "images_per_s": m.get("throughput", {}).get("images_per_s")}
                   for p, m in shards],
    })
    return meta


def find_shards(out) -> list[Path]:
    """The shard files beside ``out`` (``<out>.shard-*-of-*.npz``), in index order."""
    out = Path(out)
    found = []
    for p in out.parent.glob(f"{out.name}.shard-*-of-*.npz"):
        m = _SHARD_NAME.match(p.name)
        if m and m["base"] == out.name:
            found.append((int(m["count"]), int(m["index"]), p))
    if not found:
        raise FileNotFoundError(f"no shard files {out}.shard-*-of-*.npz")
    counts = sorted({c for c, _, _ in found})
    if len(counts) > 1:
        raise ValueError(f"shards of {out} with different process counts ({', '.join(map(str, counts))}); "
                         "name the files to merge")
    return [p for _, _, p in sorted(found)]
