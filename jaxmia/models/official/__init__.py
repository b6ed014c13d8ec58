"""Converters from the official checkpoints of the models CDI audits (DiT, U-ViT, CompVis LDM) into
folders :func:`jaxmia.models.load_denoiser` reads.

Each format is one module of this package that registers itself with :func:`register_format`;
``jaxmia convert SRC --to DST --format NAME [--option KEY=VALUE ...]`` dispatches here. A converter
reads the official file with :func:`jaxmia.models.torch_checkpoint.read_torch_checkpoint` (no torch,
nothing from the file runs), reads the architecture from the checkpoint's shapes (and the official
config where shapes cannot say, e.g. head counts), reports every missing or unexpected key by name,
and writes a diffusers-style folder: the denoiser, the autoencoder for latent models, and a
scheduler config matching the model's family (``configs/families``).
"""

from jaxmia.models.official.registry import FORMATS, OfficialFormat, convert_official, register_format  # noqa: F401

# The formats (each module registers itself on import).
from jaxmia.models.official import dit, uvit  # noqa: E402,F401  (DiT, U-ViT class and text-to-image)
from jaxmia.models.official import ldm  # noqa: E402,F401  (CompVis LDM: model.ckpt + config.yaml)
