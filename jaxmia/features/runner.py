"""The placement and batching helpers under their old import path; they live in :mod:`jaxmia.runtime`."""

from jaxmia.runtime import DATA_AXIS  # noqa: F401
from jaxmia.runtime import DEFAULT_PER_DEVICE_BATCH  # noqa: F401
from jaxmia.runtime import DEFAULT_SHARD_MIN_SIZE  # noqa: F401
from jaxmia.runtime import MODEL_AXIS  # noqa: F401
from jaxmia.runtime import Placement  # noqa: F401
from jaxmia.runtime import as_dataset  # noqa: F401
from jaxmia.runtime import batches  # noqa: F401
from jaxmia.runtime import check_images  # noqa: F401
from jaxmia.runtime import check_timesteps  # noqa: F401
from jaxmia.runtime import chunks  # noqa: F401
from jaxmia.runtime import data_mesh  # noqa: F401
from jaxmia.runtime import encode  # noqa: F401
from jaxmia.runtime import leaf_sharding  # noqa: F401
from jaxmia.runtime import n_batches  # noqa: F401
from jaxmia.runtime import per_device_jit  # noqa: F401
from jaxmia.runtime import place  # noqa: F401
from jaxmia.runtime import resolve_batching  # noqa: F401
from jaxmia.runtime import resolve_mesh_shape  # noqa: F401
from jaxmia.runtime import shard_denoiser  # noqa: F401
from jaxmia.runtime import shard_inputs  # noqa: F401
from jaxmia.runtime import uses_cond  # noqa: F401
