"""Networks, weights and the :class:`Denoiser` interface."""

from jaxmia.models.convert import flax_to_torch  # noqa: F401
from jaxmia.models.convert import torch_to_flax  # noqa: F401
from jaxmia.models.denoiser import COND_KINDS  # noqa: F401
from jaxmia.models.denoiser import Denoiser  # noqa: F401
from jaxmia.models.denoiser import analytic_denoiser  # noqa: F401
from jaxmia.models.io import DEMO_TARGET  # noqa: F401
from jaxmia.models.io import MODEL_BUILDERS  # noqa: F401
from jaxmia.models.io import ModelSpec  # noqa: F401
from jaxmia.models.io import build_model  # noqa: F401
from jaxmia.models.io import load_denoiser  # noqa: F401
from jaxmia.models.io import load_unet  # noqa: F401
from jaxmia.models.io import register_model  # noqa: F401
from jaxmia.models.io import save_unet  # noqa: F401
from jaxmia.models.io import weights_digest  # noqa: F401
from jaxmia.models.unet2d import UNet2DConfig  # noqa: F401
from jaxmia.models.unet2d import UNet2DModel  # noqa: F401
from jaxmia.models.unet2d import init_params  # noqa: F401
