"""Running per-example programs over a data set: fixed-shape batches, sharded over devices.

* Data: a :class:`jaxmia.data.Dataset` (ids, images (N, H, W, C) float32 in [-1, 1], cond, source),
  or a bare (N, H, W, C) array.
* Batches come from :func:`jaxmia.data.iter_batches`: fixed size, the last one padded (by repeating
  its last real row) with a mask, so nothing recompiles and padded rows never reach a result
  (style.md §4).
* Sharding: a 1-D ``"data"`` mesh over the devices; batch inputs are split along it and the
  denoiser (params, schedule, encoder) is replicated (design.md, "Scale").
* Latent models: each image is encoded once, with the key (seed, id, "encode") (cdi-spec.md §9, Q7).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Placement:
    """A denoiser and a root key replicated over a 1-D data mesh."""

    mesh: Mesh
    denoiser: object
    root: jax.Array
    batch_sharding: NamedSharding
    replicated: NamedSharding

    @property
    def n_devices(self) -> int:
        return int(self.mesh.devices.size)


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("no devices to run on")
    return Mesh(np.array(devices), ("data",))


def place(denoiser, seed: int, batch_size: int, devices=None) -> Placement:
    mesh = data_mesh(devices)
    n = int(mesh.devices.size)
    if int(batch_size) < 1 or int(batch_size) % n:
        raise ValueError(f"batch_size {batch_size}: must be a positive multiple of the device count ({n})")
    replicated = NamedSharding(mesh, PartitionSpec())
    return Placement(
        mesh=mesh,
        denoiser=jax.device_put(denoiser, replicated),
        root=jax.device_put(rng.root_key(int(seed)), replicated),
        batch_sharding=NamedSharding(mesh, PartitionSpec("data")),
        replicated=replicated,
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


@jax.jit
def _jit_encode(denoiser, images, root, id_hash):
    # One keyed posterior sample per image id (cdi-spec.md §9, Q7).
    return denoiser.encode_fn(denoiser.encoder_params, images, rng.keys_for(root, id_hash, "encode"))


def encode(placed: Placement, images, id_hash):
    """x0 for the kernels: the images themselves, or their latents for latent models."""
    if not placed.denoiser.is_latent:
        return images
    return _jit_encode(placed.denoiser, images, placed.root, id_hash)


def device_batch(placed: Placement, batch: Batch, with_cond: bool):
    """(x0, cond, id_hash) on the mesh, with x0 encoded for latent models."""
    x, cond, id_hash = shard_inputs(placed, batch, with_cond)
    return encode(placed, x, id_hash), cond, id_hash
