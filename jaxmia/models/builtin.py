"""jaxmia's own network classes, registered by importing their modules once (docs/methods/models.md §2).

Each module below registers its classes with :func:`jaxmia.models.registry.register_model` when it
is imported; :mod:`jaxmia.models` imports this module, so every built-in class is known as soon as
any part of ``jaxmia.models`` is. A third-party class registers the same way: import its module.
The order has no cycle: every module here imports :mod:`jaxmia.models.registry`, which imports no
model.
"""

from jaxmia.models import unet2d  # noqa: F401  UNet2DModel
from jaxmia.models import unet2d_condition  # noqa: F401  UNet2DConditionModel
from jaxmia.models import vae  # noqa: F401  AutoencoderKL, VQModel (role "autoencoder")
from jaxmia.models import dit  # noqa: F401  DiTTransformer2DModel
from jaxmia.models import dit_official  # noqa: F401  DiT (the official checkpoint's network)
from jaxmia.models import uvit  # noqa: F401  UViT, UViTT2I
from jaxmia.models import class_token  # noqa: F401  ClassTokenUNet (LDM cin256)
from jaxmia.models import clip_text  # noqa: F401  the CLIP text encoder's ModuleList names
