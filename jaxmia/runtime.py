"""One runtime: a per-example function, a data set and a seed -> a table (padded, sharded, resumable).

Feature extraction (:func:`jaxmia.features.extract`), loss sweeps (:func:`jaxmia.features.loss_sweep`)
and DRC (:func:`jaxmia.drc.run_drc`) all run through :func:`map_examples`; the sharded processes of
:mod:`jaxmia.distributed` wrap ``extract``. The pieces:

* Data: a :class:`jaxmia.data.Dataset` (ids, images (N, H, W, C) float32 in [-1, 1], cond, source),
  or a bare (N, H, W, C) array (:func:`as_dataset`).
* A per-example kernel ``fn(denoiser, x0, cond, key, *extra)`` for ONE example, ``key`` a
  :class:`SampleKey` (the run's root key and the example's id hash): every draw is
  ``key_for(root, id_hash, purpose)`` (jaxmia.rng), so it depends on (seed, id, purpose) only,
  never on the batch (docs/methods/design.md §5). :func:`jit_examples` vmaps it over a chunk and
  jits that once per (kernel, mesh, conditioning, extras).
* Batches come from :func:`jaxmia.data.iter_batches`: fixed size, the last one padded (by repeating
  its last real row) with a mask, so nothing recompiles and padded rows never reach a result
  (docs/methods/design.md §4).
* Sharding: a 2-D ``("data", "model")`` mesh over this process's devices. Batch inputs are split
  along ``"data"``; the denoiser (params, schedule, encoder) is replicated, except that with a
  ``"model"`` axis longer than 1 every parameter leaf of at least ``shard_min_size`` elements is
  split along its largest axis divisible by that length (for models that do not fit one device).
  XLA inserts the collectives of the model axis (docs/methods/design.md, "Scale"). The default mesh
  is ``(n_devices, 1)``: pure data parallelism (:func:`place`).
* Determinism (docs/methods/design.md §4): every data-axis device runs the same program on
  ``per_device_batch`` rows (:func:`per_device_jit`: ``shard_map`` over ``"data"``), whatever the
  batch size and the device count. A step of ``batch_size`` rows is cut into chunks of
  ``per_device_batch`` x data-axis devices (:func:`chunks`). Float rounding depends on the compiled
  shape, and signals with discrete decisions (GM's top-k mask, NO's line search) amplify it, so
  fixing the shape is what makes the features bit-identical across batch sizes and device counts;
  ``per_device_batch`` itself is part of a run's identity.
* Latent models: each image is encoded once, with the key (seed, id, "encode"), before the kernel
  (docs/methods/cdi.md §9, Q7; :func:`encode`).
* Resume: with a :class:`PartialRows` file the finished rows are saved after every step (atomic
  rename) with the run's identity; a restart with the same identity skips them, a different one is
  refused with the differences named, so an interrupted run, resumed, equals an uninterrupted one.
* Progress: a :class:`~jaxmia.progress.Progress` line whose rate and ETA exclude the first
  (compiling) step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmia import rng
from jaxmia.data import Batch, Dataset, iter_batches
from jaxmia.progress import Progress


@struct.dataclass
class SampleKey:
    """The randomness of ONE example: the run's root key and the example's (2,) uint32 id hash."""

    root: jax.Array
    id_hash: jax.Array

    def purpose_key(self, purpose: str) -> jax.Array:
        """``key_for(root, id_hash, purpose)``: the example's key for one purpose."""
        return rng.key_for(self.root, self.id_hash, purpose)

    def key(self, purpose: str, rep=0) -> jax.Array:
        """The key of repetition ``rep`` of ``purpose`` (``fold_in`` of the purpose key)."""
        return jax.random.fold_in(self.purpose_key(purpose), rep)

    def normal(self, purpose: str, rep, shape, dtype=jnp.float32) -> jax.Array:
        """The standard-normal draw ``rep`` of ``purpose`` for this example."""
        return jax.random.normal(self.key(purpose, rep), shape, dtype)


# vmap axes of a batch of SampleKeys: one root for all, one id hash per row.
SAMPLE_KEY_AXES = SampleKey(root=None, id_hash=0)


def as_dataset(data) -> Dataset:
    """A :class:`~jaxmia.data.Dataset` as is, or an (N, H, W, C) array with ids "0".."N-1"."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (np.ndarray, jax.Array)):
        images = np.asarray(data, np.float32)
        return Dataset([str(i) for i in range(len(images))], images, None, "array")
    if all(hasattr(data, a) for a in ("ids", "images")):  # a Dataset-like object
        return Dataset(list(data.ids), np.asarray(data.images), getattr(data, "cond", None), str(getattr(data, "source", "")))
    raise ValueError(f"data: expected a Dataset (ids, images, cond) or an image array, got {type(data).__name__}")


def uses_cond(denoiser, data: Dataset) -> bool:
    """Whether conditions are passed to the model: only for conditional models, which need them."""
    if denoiser.cond_kind == "none":
        return False
    if data.cond is None:
        raise ValueError(f"data {data.source}: the model is {denoiser.cond_kind}-conditional but the data has no conditions (labels)")
    return True


def check_timesteps(denoiser, t_max: int, *, source: str) -> None:
    table = int(denoiser.schedule.alphas_cumprod.shape[0])
    if t_max >= table:
        raise ValueError(f"{source}: timestep {t_max} is outside the model's schedule (0..{table - 1})")


def check_images(denoiser, data: Dataset) -> None:
    want = tuple(denoiser.input_shape)
    if tuple(data.images.shape[1:]) != want:
        raise ValueError(f"data {data.source}: images of shape {tuple(data.images.shape[1:])} but the model takes {want}")


DATA_AXIS, MODEL_AXIS = "data", "model"
# Rows each data-axis device computes per call: the compiled shape. Larger is faster on an
# accelerator; the values depend on it at the float-rounding level (module docstring).
DEFAULT_PER_DEVICE_BATCH = 16
# Parameter leaves smaller than this (elements) stay replicated on a "model" axis: splitting them
# saves little memory and costs a collective each.
DEFAULT_SHARD_MIN_SIZE = 1 << 16


@dataclasses.dataclass(frozen=True)
class Placement:
    """A denoiser and a root key placed on a ``("data", "model")`` mesh."""

    mesh: Mesh
    denoiser: object
    root: jax.Array
    batch_sharding: NamedSharding
    replicated: NamedSharding
    per_device_batch: int  # rows per data-axis device per call: the compiled shape
    batch_size: int  # rows per step (progress, partial saves); any size, cut into chunks

    @property
    def chunk(self) -> int:
        """Rows per call: ``per_device_batch`` x data-axis devices."""
        return self.per_device_batch * self.n_data

    @property
    def n_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def n_data(self) -> int:
        """Devices along the data axis: the batch is split into this many equal parts."""
        return int(self.mesh.shape[DATA_AXIS])

    @property
    def mesh_shape(self) -> tuple:
        return (int(self.mesh.shape[DATA_AXIS]), int(self.mesh.shape[MODEL_AXIS]))


def resolve_mesh_shape(mesh_shape, n_devices: int) -> tuple:
    """(data, model) for ``n_devices``; None means (n_devices, 1); one entry may be -1 ("the rest")."""
    if mesh_shape is None:
        return (int(n_devices), 1)
    shape = tuple(mesh_shape)
    if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shape):
        raise ValueError(f"mesh_shape {mesh_shape!r}: expected two ints (data, model)")
    shape = tuple(int(v) for v in shape)
    if shape.count(-1) > 1 or any(v == 0 or v < -1 for v in shape):
        raise ValueError(f"mesh_shape {shape}: entries must be >= 1 (at most one -1 = the rest)")
    if -1 in shape:
        known = shape[0] * shape[1] * -1
        if n_devices % known:
            raise ValueError(f"mesh_shape {shape}: {n_devices} device(s) do not divide by {known}")
        shape = tuple(n_devices // known if v == -1 else v for v in shape)
    if shape[0] * shape[1] != n_devices:
        raise ValueError(f"mesh_shape {shape}: needs {shape[0] * shape[1]} devices, this process has {n_devices}")
    return shape


def data_mesh(devices=None, mesh_shape=None) -> Mesh:
    """A ``("data", "model")`` mesh over ``devices`` (default: this process's ``jax.local_devices()``).

    Under ``jax.distributed`` each process runs its own share of the images on its local devices,
    so the mesh never spans processes.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices to run on")
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    return Mesh(np.array(devices).reshape(shape), (DATA_AXIS, MODEL_AXIS))


def leaf_sharding(shape, mesh: Mesh, shard_min_size: int = DEFAULT_SHARD_MIN_SIZE) -> NamedSharding:
    """Where one parameter leaf lives: split along its largest axis divisible by the model axis.

    Replicated when the model axis has length 1, the leaf has fewer than ``shard_min_size``
    elements, or no axis divides (ties between equal axes go to the first).
    """
    m = int(mesh.shape[MODEL_AXIS])
    shape = tuple(int(d) for d in shape)
    divisible = [a for a, d in enumerate(shape) if d % m == 0]
    if m == 1 or not divisible or int(np.prod(shape, dtype=np.int64)) < int(shard_min_size):
        return NamedSharding(mesh, PartitionSpec())
    axis = max(divisible, key=lambda a: (shape[a], -a))
    return NamedSharding(mesh, PartitionSpec(*[MODEL_AXIS if a == axis else None for a in range(len(shape))]))


def shard_denoiser(denoiser, mesh: Mesh, *, shard_min_size: int = DEFAULT_SHARD_MIN_SIZE):
    """The denoiser on ``mesh``: schedule replicated, params (and encoder params) per :func:`leaf_sharding`."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(tree):
        if tree is None:
            return None
        shardings = jax.tree_util.tree_map(lambda leaf: leaf_sharding(np.shape(leaf), mesh, shard_min_size), tree)
        return jax.device_put(tree, shardings)

    return denoiser.replace(
        params=put(denoiser.params),
        encoder_params=put(denoiser.encoder_params),
        schedule=jax.device_put(denoiser.schedule, replicated),
    )


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name} {value!r}: must be an int >= 1")
    return int(value)


def resolve_batching(batch_size, per_device_batch, n_data: int) -> tuple[int, int]:
    """(per_device_batch, batch_size): the compiled rows per device and the rows per step.

    ``per_device_batch`` defaults to :data:`DEFAULT_PER_DEVICE_BATCH`, ``batch_size`` to one chunk
    (``per_device_batch`` x ``n_data``). Any ``batch_size`` >= 1 is accepted: a step is run as
    whole chunks, the last one padded, so a multiple of the chunk wastes nothing.
    """
    pdb = DEFAULT_PER_DEVICE_BATCH if per_device_batch is None else _positive_int(per_device_batch, "per_device_batch")
    step = pdb * int(n_data) if batch_size is None else _positive_int(batch_size, "batch_size")
    return pdb, step


def place(denoiser, seed: int, batch_size=None, devices=None, *, per_device_batch=None, mesh_shape=None,
          shard_min_size: int = DEFAULT_SHARD_MIN_SIZE) -> Placement:
    """The denoiser and root key on a fresh mesh, with the batching resolved (:func:`resolve_batching`)."""
    mesh = data_mesh(devices, mesh_shape)
    pdb, step = resolve_batching(batch_size, per_device_batch, int(mesh.shape[DATA_AXIS]))
    replicated = NamedSharding(mesh, PartitionSpec())
    return Placement(
        mesh=mesh,
        denoiser=shard_denoiser(denoiser, mesh, shard_min_size=shard_min_size),
        root=jax.device_put(rng.root_key(int(seed)), replicated),
        batch_sharding=NamedSharding(mesh, PartitionSpec(DATA_AXIS)),
        replicated=replicated,
        per_device_batch=pdb,
        batch_size=step,
    )


def per_device_jit(fn, mesh: Mesh, batched: Sequence[bool], **jit_kwargs):
    """jit of ``fn`` run by every data-axis device on its own rows (``shard_map`` over ``"data"``).

    ``batched[i]``: argument i is split along ``"data"`` (else replicated); outputs are split along
    ``"data"``. Only the data axis is manual: a ``"model"`` axis stays with XLA's partitioner. The
    per-device program is the same for any number of data-axis devices (no global loop predicate,
    no cross-device fusion), which keeps while-loop kernels such as NO's L-BFGS bit-identical.
    """
    specs = tuple(PartitionSpec(DATA_AXIS) if b else PartitionSpec() for b in batched)
    manual = {DATA_AXIS} if int(mesh.shape[MODEL_AXIS]) > 1 else {DATA_AXIS, MODEL_AXIS}
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(DATA_AXIS),
                           axis_names=frozenset(manual), check_vma=False)
    return jax.jit(mapped, **jit_kwargs)


def chunks(batch: Batch, size: int) -> Iterator[Batch]:
    """The compiled-shape pieces of a step: ``size`` rows each, the last padded; all-padding pieces skipped."""
    for lo in range(0, len(batch.ids), size):
        rows = np.arange(lo, min(lo + size, len(batch.ids)))
        if not batch.mask[rows].any():
            return
        rows = np.concatenate([rows, np.full(size - len(rows), rows[-1])])
        pad = np.arange(size) >= min(size, len(batch.ids) - lo)
        yield Batch(
            ids=[batch.ids[r] for r in rows],
            id_hash=batch.id_hash[rows],
            x=batch.x[rows],
            cond=None if batch.cond is None else np.asarray(batch.cond)[rows],
            mask=batch.mask[rows] & ~pad,
        )


def batches(data: Dataset, ids: Sequence[str], batch_size: int) -> Iterator[Batch]:
    """Fixed-size batches of the rows ``ids`` (in order), the last one padded and masked."""
    if len(ids) == 0:
        return iter(())
    return iter_batches(data, batch_size, ids=list(ids))


def n_batches(n_rows: int, batch_size: int) -> int:
    return -(-int(n_rows) // int(batch_size))


def shard_inputs(placed: Placement, batch: Batch, with_cond: bool):
    """A batch's images, conditions and id hashes, split over the data mesh."""
    put = lambda a: jax.device_put(a, placed.batch_sharding)  # noqa: E731
    cond = put(np.asarray(batch.cond)) if with_cond else None
    return put(batch.x), cond, put(batch.id_hash)


def _encode(denoiser, images, root, id_hash):
    # One keyed posterior sample per image id (docs/methods/cdi.md §9, Q7).
    return denoiser.encode_fn(denoiser.encoder_params, images, rng.keys_for(root, id_hash, "encode"))


@functools.lru_cache(maxsize=16)
def _jit_encode(mesh: Mesh):
    return per_device_jit(_encode, mesh, batched=(False, True, False, True))


def encode(placed: Placement, images, id_hash):
    """x0 for the kernels: the images themselves, or their latents for latent models."""
    if not placed.denoiser.is_latent:
        return images
    return _jit_encode(placed.mesh)(placed.denoiser, images, placed.root, id_hash)


# ---- the per-example program ------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def jit_examples(fn, mesh: Optional[Mesh], with_cond: bool, n_extra: int = 0):
    """jit(vmap over examples) of ONE example's ``fn(denoiser, x0, cond, key, *extra)``.

    The program is ``program(denoiser, x0, cond, root, id_hash, *extra)``: ``key`` is the row's
    :class:`SampleKey` (root shared, id hash per row), ``cond`` is per row when ``with_cond`` (else
    None, shared), and each of the ``n_extra`` extras is per row. With a mesh every data-axis device
    runs it on its own rows (:func:`per_device_jit`); without, it is a plain ``jax.jit``. Static:
    ``fn`` (cache it where it is built, so the compiled program is reused), the mesh, ``with_cond``
    and ``n_extra``.
    """

    def program(denoiser, x0, cond, root, id_hash, *extra):
        keys = SampleKey(root=root, id_hash=id_hash)
        in_axes = (None, 0, 0 if with_cond else None, SAMPLE_KEY_AXES) + (0,) * n_extra
        return jax.vmap(fn, in_axes=in_axes)(denoiser, x0, cond, keys, *extra)

    if mesh is None:
        return jax.jit(program)
    return per_device_jit(program, mesh, batched=(False, True, with_cond, False, True) + (True,) * n_extra)


# ---- partial saves ----------------------------------------------------------------------------


def partial_path(out) -> Path:
    """``<out>.partial.npz``: where a run writing ``out`` keeps its finished rows."""
    return Path(str(out) + ".partial.npz")


@dataclasses.dataclass(frozen=True)
class PartialRows:
    """The finished rows of a run (float64 vectors of ``n_columns``), saved with its identity.

    ``load`` refuses a file of another identity (naming the differences) or holding ids not in the
    data; ``save`` writes all rows done so far, atomically (a temporary file, then a rename).
    """

    path: Path
    identity: dict
    n_columns: int

    def load(self, known_ids: Sequence[str]) -> dict[str, np.ndarray]:
        from jaxmia.features.config import config_diff, flatten_nested  # jaxmia.features imports this module

        with np.load(self.path, allow_pickle=False) as z:
            saved = json.loads(str(z["identity"]))
            ids, values = z["ids"].astype(str).tolist(), np.asarray(z["values"], np.float64)
        if saved != self.identity:
            diff = config_diff(flatten_nested(saved), flatten_nested(self.identity))
            raise ValueError(
                f"{self.path}: partial results were made with a different configuration ({'; '.join(diff)}); "
                "delete it or rerun with the same settings"
            )
        known = set(known_ids)
        stray = [i for i in ids if i not in known]
        if stray:
            raise ValueError(f"{self.path}: holds id(s) not in the data ({', '.join(map(repr, stray[:5]))})")
        return dict(zip(ids, values))

    def save(self, done: dict[str, np.ndarray]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ids = list(done)
        values = np.stack([done[i] for i in ids]) if ids else np.zeros((0, self.n_columns))
        with open(tmp, "wb") as f:
            np.savez(f, ids=np.asarray(ids, dtype=str), values=values,
                     identity=np.asarray(json.dumps(self.identity, sort_keys=True)))
        os.replace(tmp, self.path)


# ---- the batch loop ---------------------------------------------------------------------------


@dataclasses.dataclass
class Chunk:
    """One compiled-shape piece of a step on the mesh: ``placed.chunk`` rows, ``mask`` False on padding."""

    ids: list
    mask: np.ndarray
    x0: jax.Array  # the images, or their latents (encoded) for latent models
    cond: Optional[jax.Array]
    id_hash: jax.Array
    extra: tuple


@dataclasses.dataclass
class Step:
    """One step of ``batch_size`` rows: its real rows, its chunks and (with a kernel) their outputs.

    ``outputs`` is the kernel's output pytree as host arrays over the real rows, in order;
    ``timings`` holds the seconds of its stages (a ``collect`` function may add its own).
    """

    index: int  # 1-based
    n_steps: int
    ids: list  # the real rows' ids, in order
    images: np.ndarray  # the real rows' images (host, not encoded)
    id_hash: np.ndarray  # the real rows' id hashes (host)
    chunks: list
    outputs: object
    timings: dict
    started: float  # perf_counter() when the step began

    @property
    def last(self) -> bool:
        return self.index == self.n_steps

    def real(self, field: str) -> np.ndarray:
        """A chunk field (``"x0"``, ``"cond"``) gathered to the host over the real rows."""
        return np.concatenate([np.asarray(getattr(c, field))[c.mask] for c in self.chunks])

    def rows(self) -> dict:
        """{id: that row's slice of ``outputs``}."""
        return {sid: jax.tree_util.tree_map(lambda v, i=i: v[i], self.outputs) for i, sid in enumerate(self.ids)}


def run_steps(program, placed: Placement, data: Dataset, ids: Sequence[str], *, with_cond: bool, extra=(),
              encode_latents: bool = True) -> Iterator[Step]:
    """The steps of the rows ``ids``: chunks placed on the mesh, encoded, and run through ``program``.

    ``program(denoiser, x0, cond, root, id_hash, *extra)`` (:func:`jit_examples`) is dispatched on
    every chunk of a step before any result is read, so the devices never idle between chunks;
    ``program=None`` only places (and encodes) the chunks. ``extra``: arrays with one entry per
    row of ``data``, passed to the program row by row.
    """
    row_of = {sid: k for k, sid in enumerate(data.ids)} if extra else None
    n_steps = n_batches(len(ids), placed.batch_size)
    for k, batch in enumerate(batches(data, ids, placed.batch_size), start=1):
        t0 = time.perf_counter()
        real = [sid for sid, keep in zip(batch.ids, batch.mask) if keep]
        pieces = []
        for sub in chunks(batch, placed.chunk):
            x, cond, id_hash = shard_inputs(placed, sub, with_cond)
            extras = ()
            if extra:
                rows = [row_of[sid] for sid, keep in zip(sub.ids, sub.mask) if keep]
                rows += [rows[-1]] * (len(sub.ids) - len(rows))  # padding repeats the last real row
                extras = tuple(jax.device_put(np.asarray(e)[rows], placed.batch_sharding) for e in extra)
            pieces.append(Chunk(sub.ids, sub.mask, x, cond, id_hash, extras))
        t1 = time.perf_counter()
        if encode_latents:
            for c in pieces:
                c.x0 = jax.block_until_ready(encode(placed, c.x0, c.id_hash))
        t2 = time.perf_counter()
        outputs = None
        if program is not None:
            outs = [program(placed.denoiser, c.x0, c.cond, placed.root, c.id_hash, *c.extra) for c in pieces]
            outputs = jax.tree_util.tree_map(
                lambda *vs: np.concatenate([np.asarray(v)[c.mask] for c, v in zip(pieces, vs)]), *outs)
        t3 = time.perf_counter()
        yield Step(k, n_steps, real, batch.x[batch.mask], batch.id_hash[batch.mask], pieces, outputs,
                   {"inputs": t1 - t0, "encode": t2 - t1, "device": t3 - t2}, t0)


@dataclasses.dataclass
class Mapped:
    """What :func:`map_examples` returns: the rows by id, and how the run went."""

    rows: dict  # id -> that row (the kernel's output pytree, or what ``collect`` made of it)
    timings: dict  # seconds per stage, summed over steps
    first_step_s: Optional[float]  # the first (compiling) step, end to end
    resumed_rows: int
    progress: Progress

    def columns(self, ids: Sequence[str]):
        """The rows of ``ids`` stacked: the output pytree with a leading axis over ``ids``."""
        rows = [self.rows[sid] for sid in ids]
        return jax.tree_util.tree_map(lambda *vs: np.stack(vs), *rows)


def map_examples(
    fn: Optional[Callable],
    data,
    *,
    placement: Placement,
    with_cond: bool,
    ids: Optional[Sequence[str]] = None,
    extra: tuple = (),
    encode_latents: bool = True,
    collect: Optional[Callable[[Step], dict]] = None,
    partial: Optional[PartialRows] = None,
    resume: bool = True,
    progress: bool = True,
    label: str = "jaxmia",
    on_batch: Optional[Callable[[dict], None]] = None,
) -> Mapped:
    """Runs ONE example's ``fn(denoiser, x0, cond, key, *extra)`` over the rows ``ids`` of ``data``.

    The loop every driver shares (module docstring): fixed-size steps of ``placement.batch_size``
    rows cut into chunks of the compiled shape (the last padded and masked), sharded over the
    ``"data"`` axis, encoded for latent models (unless ``encode_latents=False``: the kernel encodes
    itself), run through :func:`jit_examples` (``fn=None``: no kernel, only ``collect``), gathered
    to host arrays of the real rows.

    Args:
      fn: the per-example kernel; cache it where it is built so the program compiles once.
      data: a ``Dataset`` or an image array (:func:`as_dataset`); validate it before (``check_*``).
      placement: the mesh, the denoiser on it, the root key and the batching (:func:`place`).
      with_cond: whether the rows' conditions are passed (:func:`uses_cond`).
      ids: the rows to run, in order (default: all of ``data``).
      extra: per-row arrays of ``data`` (one entry per row) passed to ``fn`` after the key.
      collect: ``collect(step) -> {id: row}``: the rows a step finished (default
        :meth:`Step.rows`); it may keep rows for a later step (the lane pools of ``extract``).
      partial: save the finished rows after every step there (rows must be float64 vectors);
        with ``resume``, rows it already holds (same identity) are not run again.
      progress, label: a progress line on stderr (ETA excluding the compiling first step).
      on_batch: called after every step with ``batch``, ``n_batches``, ``images_done``,
        ``n_images``, ``images_per_s`` and ``eta_s``.

    Returns:
      :class:`Mapped`: the rows by id (:meth:`Mapped.columns` stacks them), the stage timings, the
      first step's seconds, the number of resumed rows and the progress bar.
    """
    data = as_dataset(data)
    ids = list(data.ids if ids is None else ids)
    done: dict = {}
    if partial is not None and resume and partial.path.exists():
        done = partial.load(data.ids)
    resumed_rows = len(done)
    todo = [sid for sid in ids if sid not in done]
    program = None if fn is None else jit_examples(fn, placement.mesh, bool(with_cond), len(extra))
    collect = collect or Step.rows
    timings: dict = {}
    first_step_s = None
    bar = Progress(label, total=len(todo), enabled=progress)
    for step in run_steps(program, placement, data, todo, with_cond=with_cond, extra=extra,
                          encode_latents=encode_latents):
        finished = collect(step)
        done.update(finished)
        t0 = time.perf_counter()
        if partial is not None:
            partial.save(done)
        step.timings["save_partial"] = time.perf_counter() - t0
        for name, dt in step.timings.items():
            timings[name] = timings.get(name, 0.0) + dt
        if step.index == 1:
            first_step_s = time.perf_counter() - step.started
        bar.update(len(finished))
        if on_batch is not None:
            on_batch({"batch": step.index, "n_batches": step.n_steps, "images_done": len(done), "n_images": len(ids),
                      "images_per_s": bar.rate or None, "eta_s": bar.eta})
    if todo:
        bar.finish()
    return Mapped(done, timings, first_step_s, resumed_rows, bar)
