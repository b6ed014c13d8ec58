"""Networks, weights and the :class:`Denoiser` interface."""

from jaxmia.models.convert import flax_to_torch  # noqa: F401
from jaxmia.models.convert import torch_to_flax  # noqa: F401
from jaxmia.models.denoiser import COND_KINDS  # noqa: F401
from jaxmia.models.denoiser import Denoiser  # noqa: F401
from jaxmia.models.denoiser import analytic_denoiser  # noqa: F401
from jaxmia.models.registry import MODEL_REGISTRY  # noqa: F401
from jaxmia.models.registry import ModelSpec  # noqa: F401
from jaxmia.models.registry import build_model  # noqa: F401
from jaxmia.models.registry import register_model  # noqa: F401
from jaxmia.models.registry import unregister_model  # noqa: F401

# The built-in network classes register themselves here, once (jaxmia.models.builtin).
from jaxmia.models import builtin  # noqa: F401,E402
from jaxmia.models.formats import weights_digest  # noqa: F401,E402
from jaxmia.models.layout import DEMO_TARGET  # noqa: F401,E402
from jaxmia.models.loading import load_denoiser  # noqa: F401,E402
from jaxmia.models.loading import load_unet  # noqa: F401,E402
from jaxmia.models.loading import save_unet  # noqa: F401,E402
from jaxmia.models.unet2d import UNet2DConfig  # noqa: F401,E402
from jaxmia.models.unet2d import UNet2DModel  # noqa: F401,E402
from jaxmia.models.unet2d import init_params  # noqa: F401,E402

# Conditional denoisers, the CLIP text encoder and per-image conditioning (issue 6, part B).
from jaxmia.models.clip_text import CLIPTextConfig  # noqa: F401,E402
from jaxmia.models.clip_text import CLIPTextModel  # noqa: F401,E402
from jaxmia.models.clip_text import load_clip_text  # noqa: F401,E402
from jaxmia.models.conditioning import ConditionSpec  # noqa: F401,E402
from jaxmia.models.conditioning import attach_conditioning  # noqa: F401,E402
from jaxmia.models.conditioning import condition_spec  # noqa: F401,E402
from jaxmia.models.conditioning import register_condition_probe  # noqa: F401,E402
from jaxmia.models.conditioning import save_text_embeddings  # noqa: F401,E402
from jaxmia.models.conditioning import spec_from_family  # noqa: F401,E402
from jaxmia.models.dit import DiTConfig  # noqa: F401,E402
from jaxmia.models.dit import DiTTransformer2DModel  # noqa: F401,E402
from jaxmia.models.unet2d_condition import UNet2DConditionConfig  # noqa: F401,E402
from jaxmia.models.unet2d_condition import UNet2DConditionModel  # noqa: F401,E402

# Latent autoencoders, model families and checkpoint conversion (issue 6, part A).
from jaxmia.models.families import Family  # noqa: F401,E402
from jaxmia.models.families import list_families  # noqa: F401,E402
from jaxmia.models.families import load_family  # noqa: F401,E402
from jaxmia.models.families import register_family  # noqa: F401,E402
from jaxmia.models.conversion import convert_checkpoint  # noqa: F401,E402
from jaxmia.models.conversion import convert_diffusers_folder  # noqa: F401,E402
from jaxmia.models.pytorch_ddpm import convert_pytorch_ddpm  # noqa: F401,E402
from jaxmia.models.vae import AutoencoderKL  # noqa: F401,E402
from jaxmia.models.vae import AutoencoderKLConfig  # noqa: F401,E402
from jaxmia.models.vae import LatentCodec  # noqa: F401,E402
from jaxmia.models.vae import VQModel  # noqa: F401,E402
from jaxmia.models.vae import VQModelConfig  # noqa: F401,E402
from jaxmia.models.vae import latent_codec  # noqa: F401,E402
