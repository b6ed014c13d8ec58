"""Running per-example programs over a data set: fixed-shape batches, sharded over devices.

* Data: a :class:`jaxmia.data.Dataset` (ids, images (N, H, W, C) float32 in [-1, 1], cond, source),
  or a bare (N, H, W, C) array.
* Batches come from :func:`jaxmia.data.iter_batches`: fixed size, the last one padded (by repeating
  its last real row) with a mask, so nothing recompiles and padded rows never reach a result
  (docs/methods/design.md §4).
* Sharding: a 2-D ``("data", "model")`` mesh over this process's devices. Batch inputs are split
  along ``"data"``; the denoiser (params, schedule, encoder) is replicated, except that with a
  ``"model"`` axis longer than 1 every parameter leaf of at least ``shard_min_size`` elements is
  split along its largest axis divisible by that length (for models that do not fit one device).
  XLA inserts the collectives of the model axis (docs/methods/design.md, "Scale"). The default mesh is
  ``(n_devices, 1)``: pure data parallelism. Extraction, loss sweeps and DRC all place their work
  through :func:`place` (or :func:`data_mesh` + :func:`shard_denoiser`).
* Determinism (docs/methods/design.md §4): every data-axis device runs the same program on ``per_device_batch``
  rows (:func:`per_device_jit`: ``shard_map`` over ``"data"``), whatever the batch size and the
  device count. A step of ``batch_size`` rows is cut into chunks of ``per_device_batch`` x
  data-axis devices (:func:`chunks`). Float rounding depends on the compiled shape, and signals
  with discrete decisions (GM's top-k mask, NO's line search) amplify it, so fixing the shape is
  what makes the features bit-identical across batch sizes and device counts; ``per_device_batch``
  itself is part of a run's identity.
* Latent models: each image is encoded once, with the key (seed, id, "encode") (docs/methods/cdi.md §9, Q7).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmia import rng
from jaxmia.data import Batch, Dataset, iter_batches


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


def device_batch(placed: Placement, batch: Batch, with_cond: bool):
    """(x0, cond, id_hash) on the mesh, with x0 encoded for latent models."""
    x, cond, id_hash = shard_inputs(placed, batch, with_cond)
    return encode(placed, x, id_hash), cond, id_hash
