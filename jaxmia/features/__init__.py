"""Per-image membership signals as per-example JAX kernels, loss sweeps and ``extract()``.

Signals (docs/methods/cdi.md §4; docs/methods/mia.md §3): ``loss``, ``secmi``, ``pia``, ``pian``,
``multi_loss``, ``grad_mask``, ``noise_opt``, ``cdi`` (the 26-d vector) and ``drc``; ``jaxmia signals``
lists them. A new signal registers itself when its module is imported (:mod:`jaxmia.features.registry`).
Configs and presets: :class:`FeatureConfig`, :data:`PRESETS` (``cdi``, ``cdi_reference``, ``secmi_mia``,
``pia_mia``, ``loss_mia``, ``cdi_drc``).
"""

from jaxmia.features.config import FeatureConfig  # noqa: F401
from jaxmia.features.config import PRESETS  # noqa: F401
from jaxmia.features.config import config_diff  # noqa: F401
from jaxmia.features.config import config_from_dict  # noqa: F401
from jaxmia.features.config import make_config  # noqa: F401
from jaxmia.features.config import parse_overrides  # noqa: F401
from jaxmia.features.keys import SampleKey  # noqa: F401
from jaxmia.features.registry import FEATURES  # noqa: F401
from jaxmia.features.registry import Cost  # noqa: F401
from jaxmia.features.registry import FeatureSpec  # noqa: F401
from jaxmia.features.registry import SharedWork  # noqa: F401
from jaxmia.features.registry import get_feature  # noqa: F401
from jaxmia.features.registry import parse_features  # noqa: F401
from jaxmia.features.registry import plan_columns  # noqa: F401
from jaxmia.features.registry import plan_cost  # noqa: F401
from jaxmia.features.registry import register_feature  # noqa: F401
from jaxmia.runtime import DEFAULT_SHARD_MIN_SIZE  # noqa: F401
from jaxmia.runtime import data_mesh  # noqa: F401
from jaxmia.runtime import leaf_sharding  # noqa: F401
from jaxmia.runtime import shard_denoiser  # noqa: F401

# Built-in signals register themselves on import (order = nothing but readability).
from jaxmia.features import grad_mask as _grad_mask  # noqa: F401,E402
from jaxmia.features import loss as _loss  # noqa: F401,E402
from jaxmia.features import noise_opt as _noise_opt  # noqa: F401,E402
from jaxmia.features import pia as _pia  # noqa: F401,E402
from jaxmia.features import secmi as _secmi  # noqa: F401,E402
from jaxmia.features import cdi as _cdi  # noqa: F401,E402
from jaxmia.features import drc as _drc  # noqa: F401,E402

from jaxmia.features.cdi import CDI_PARTS  # noqa: F401,E402
from jaxmia.features.cdi import cdi_columns  # noqa: F401,E402
from jaxmia.features.cdi import cdi_vector  # noqa: F401,E402
from jaxmia.features.extract import extract  # noqa: F401,E402
from jaxmia.features.extract import jit_features  # noqa: F401,E402
from jaxmia.features.extract import partial_path  # noqa: F401,E402
from jaxmia.features.extract import run_identity  # noqa: F401,E402
from jaxmia.features.grad_mask import gm_at  # noqa: F401,E402
from jaxmia.features.grad_mask import masked_input  # noqa: F401,E402
from jaxmia.features.grad_mask import top_fraction_mask  # noqa: F401,E402
from jaxmia.features.noise_opt import lbfgs_minimise  # noqa: F401,E402
from jaxmia.features.noise_opt import noise_opt_example  # noqa: F401,E402
from jaxmia.features.noise_opt import reference_noise_opt  # noqa: F401,E402
from jaxmia.features.pia import pia_error  # noqa: F401,E402
from jaxmia.features.pia import pian_normalise  # noqa: F401,E402
from jaxmia.features.pia import proximal_init  # noqa: F401,E402
from jaxmia.features.secmi import secmi_error  # noqa: F401,E402
from jaxmia.features.sweep import denoising_error  # noqa: F401,E402
from jaxmia.features.sweep import error_grid  # noqa: F401,E402
from jaxmia.features.sweep import loss_sweep  # noqa: F401,E402
