"""Former home of model loading, kept so ``from jaxmia.models.io import load_denoiser`` still works.

The jobs it did live in their own modules now: the class registry in :mod:`jaxmia.models.registry`,
file formats in :mod:`jaxmia.models.formats`, folder layouts in :mod:`jaxmia.models.layout`,
loading (families, latent wiring) in :mod:`jaxmia.models.loading`, conversion in
:mod:`jaxmia.models.conversion`. jaxmia's own code imports those, never this module
(tests/test_import_graph.py).
"""

from jaxmia.models.conversion import CONVERT_FORMATS, convert_checkpoint, convert_diffusers_folder  # noqa: F401
from jaxmia.models.formats import (CONFIG_NAME, FLAX_WEIGHTS_NAME, SAFETENSORS_INDEX_NAME,  # noqa: F401
                                   SAFETENSORS_NAME, SCHEDULER_CONFIG_NAME, read_safetensors,
                                   require_empty_folder, weights_digest)
from jaxmia.models.layout import DEMO_TARGET  # noqa: F401
from jaxmia.models.loading import load_denoiser, load_unet, read_params, resolve, save_unet  # noqa: F401
from jaxmia.models.registry import ModelSpec, build_model, model_roles, register_model  # noqa: F401
