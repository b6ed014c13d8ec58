"""diffusers' latent autoencoders, ``AutoencoderKL`` and ``VQModel``, as Flax linen modules (NHWC).

The parameter trees mirror diffusers' PyTorch state-dict names (``encoder/conv_in``,
``encoder/down_blocks_0/resnets_0/conv1``, ``encoder/down_blocks_0/downsamplers_0/conv``,
``encoder/mid_block/attentions_0/{group_norm,to_q,to_k,to_v,to_out_0}``, ``quant_conv``,
``post_quant_conv``, ``quantize/embedding``, ``decoder/up_blocks_0/upsamplers_0/conv``, ...), so
:mod:`jaxmia.models.convert` loads them by the mechanical rules of docs/methods/models.md §4 (old
``query/key/value/proj_attn`` attention names included).

What the attacks use (docs/methods/cdi.md §9, docs/methods/models.md §8):

* ``AutoencoderKL``: encoder → ``quant_conv`` → posterior (mean, log-variance clamped to
  [−30, 20]); the latent is the posterior **sample** ``mean + exp(logvar/2)·n`` (DiT, U-ViT, SD) or
  its **mean**, then ``(z − shift_factor)·scaling_factor``. Decoding divides by the scale first.
* ``VQModel``: the **pre-quantisation** latent (encoder → ``quant_conv``, no codebook lookup), as
  diffusers' ``VQModel.encode`` returns and as CompVis' LDM trains on; decoding quantises to the
  nearest codebook entry first, as diffusers' ``decode(force_not_quantize=False)`` and CompVis'
  ``decode_first_stage`` do (``quantize_on_decode=False`` skips it).

References:
  Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752,
  §3 and App. G (the autoencoders); Kingma & Welling, arXiv 1312.6114, §2.4 (the reparameterised
  posterior sample); van den Oord et al., arXiv 1711.00937, Eq. (2) (nearest-codebook quantisation);
  diffusers ``models/autoencoders/{autoencoder_kl,vq_model,vae}.py`` (0.42).

Deliberate differences from diffusers:
  * NHWC tensors; float32 always (``force_upcast`` is accepted and has nothing to do).
  * Posterior noise comes from a JAX key per image (``(seed, image id, "encode")`` in the
    attacks), not from a torch generator; :func:`posterior_sample` takes the noise explicitly so
    parity tests can feed both sides the same draw.
  * Not ported, refused by name: ``norm_type="spatial"`` (MoVQ), ``lookup_from_codebook=true``
    (index latents), non-null ``latents_mean`` / ``latents_std`` (pipeline-specific
    normalisation), tiling and slicing (memory tricks with seams).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.blocks import (ACTIVATIONS, UNET_MODULE_LISTS, Downsample2D, SpatialAttention, Upsample2D, conv,
                                  group_norm, torch_default_params)
from jaxmia.models.registry import ModelSpec, register_model

DOWN_BLOCK_TYPES = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_BLOCK_TYPES = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")
VAE_EPS = 1e-6  # diffusers' Encoder/Decoder hard-code resnet_eps and the output norm's eps
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution clamps the log-variance

# Latent encode modes of each autoencoder class; the first is the default.
ENCODE_MODES = {
    "AutoencoderKL": ("sample", "mean"),
    "VQModel": ("pre_quantization", "quantized"),
}


# ==================================================================================================
# Configs
# ==================================================================================================

def _validate(cfg, source: str) -> None:
    """Refuses, by key and value, what diffusers would refuse and what jaxmia does not port."""

    def bad(key, value, why):
        raise ValueError(f"{source}: {key}={value!r} {why}")

    n = len(cfg.block_out_channels)
    if n == 0:
        bad("block_out_channels", [], "must name at least one level")
    if len(cfg.down_block_types) != n or len(cfg.up_block_types) != n:
        raise ValueError(f"{source}: block_out_channels, down_block_types and up_block_types must have the same "
                         f"length, got {n}, {len(cfg.down_block_types)}, {len(cfg.up_block_types)}")
    for key, kinds, allowed in (("down_block_types", cfg.down_block_types, DOWN_BLOCK_TYPES),
                                ("up_block_types", cfg.up_block_types, UP_BLOCK_TYPES)):
        for i, kind in enumerate(kinds):
            if kind not in allowed:
                bad(f"{key}[{i}]", kind, f"is not supported (supported: {', '.join(allowed)})")
    if cfg.act_fn.lower() not in ACTIVATIONS:
        bad("act_fn", cfg.act_fn, f"is not supported (supported: {', '.join(ACTIVATIONS)})")
    for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
        if getattr(cfg, key) < 1:
            bad(key, getattr(cfg, key), "must be a positive integer")
    for i, c in enumerate(cfg.block_out_channels):
        if c < 1 or c % cfg.norm_num_groups:
            bad(f"block_out_channels[{i}]", c, f"must be a positive multiple of norm_num_groups={cfg.norm_num_groups}")
    if not cfg.scaling_factor > 0:
        bad("scaling_factor", cfg.scaling_factor, "must be > 0")
    sides = (cfg.sample_size,) * 2 if isinstance(cfg.sample_size, int) else cfg.sample_size
    if any(side < 1 for side in sides):
        bad("sample_size", cfg.sample_size, "must be positive")
    if isinstance(cfg, AutoencoderKLConfig):
        for key in ("latents_mean", "latents_std"):
            if getattr(cfg, key) is not None:
                bad(key, list(getattr(cfg, key)), "is not supported (pipeline-specific latent normalisation); "
                    "use null")
    else:
        if cfg.num_vq_embeddings < 1:
            bad("num_vq_embeddings", cfg.num_vq_embeddings, "must be a positive integer")
        if cfg.vq_embed_dim is not None and cfg.vq_embed_dim < 1:
            bad("vq_embed_dim", cfg.vq_embed_dim, "must be a positive integer or null")
        if cfg.norm_type != "group":
            bad("norm_type", cfg.norm_type, "is not supported (supported: 'group'; 'spatial' is MoVQ)")
        if cfg.lookup_from_codebook:
            bad("lookup_from_codebook", True, "is not supported (jaxmia's latents are vectors, not codebook indices)")


class _ConfigMixin:
    """Shared read-outs of the two autoencoder configs."""

    class_name = ""

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config"):
        """Builds the config from a diffusers ``config.json`` dict; unknown keys and unsupported
        values are refused by name (ValueError naming ``source``)."""
        out = typed.from_class_config(cls, config, cls.class_name, source=source)
        _validate(out, source)
        return out

    def to_diffusers(self) -> dict:
        """The ``config.json`` dict diffusers accepts (lists, not tuples)."""
        return typed.to_class_config(self, self.class_name)

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent cell along each side: 2 ** (levels − 1)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the nominal input images (diffusers' ``sample_size``; the networks are fully
        convolutional, so any multiple of :attr:`downsample_factor` works)."""
        h, w = (self.sample_size,) * 2 if isinstance(self.sample_size, int) else self.sample_size
        return (h, w, self.in_channels)


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(_ConfigMixin):
    """The constructor arguments of diffusers' ``AutoencoderKL`` (defaults: diffusers 0.42's)."""

    class_name = "AutoencoderKL"

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, int] = 32
    scaling_factor: float = 0.18215
    shift_factor: Optional[float] = None
    latents_mean: Optional[tuple[float, ...]] = None
    latents_std: Optional[tuple[float, ...]] = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def code_channels(self) -> int:
        """Channels of the latent the diffusion model sees."""
        return self.latent_channels


@dataclasses.dataclass(frozen=True)
class VQModelConfig(_ConfigMixin):
    """The constructor arguments of diffusers' ``VQModel`` (defaults: diffusers 0.42's)."""

    class_name = "VQModel"

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 3
    sample_size: int | tuple[int, int] = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: Optional[int] = None
    scaling_factor: float = 0.18215
    norm_type: str = "group"
    mid_block_add_attention: bool = True
    lookup_from_codebook: bool = False
    force_upcast: bool = False

    @property
    def code_channels(self) -> int:
        """Channels of the latent the diffusion model sees (``quant_conv``'s output)."""
        return self.vq_embed_dim or self.latent_channels


# ==================================================================================================
# Layers and blocks
# ==================================================================================================


def _group_norm(groups: int, name: str) -> nn.GroupNorm:
    return group_norm(groups, VAE_EPS, name)


class ResnetBlock(nn.Module):
    """diffusers ``ResnetBlock2D`` with ``temb_channels=None`` (no time projection):
    h = conv2(act(norm2(conv1(act(norm1(x)))))); out = shortcut(x) + h, the shortcut a 1×1 conv
    when the channel count changes."""

    out_channels: int
    groups: int
    act_fn: str
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.act_fn.lower()]
        h = conv(self.out_channels, 3, "conv1", self.precision)(act(_group_norm(self.groups, "norm1")(x)))
        h = conv(self.out_channels, 3, "conv2", self.precision)(act(_group_norm(self.groups, "norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut", self.precision)(x)
        return x + h


def _attention(groups: int, name: str, precision) -> SpatialAttention:
    # One head as wide as the channels (diffusers passes attention_head_dim = channels).
    return SpatialAttention(None, groups, VAE_EPS, 1.0, precision, name=name)


class MidBlock(nn.Module):
    """``UNetMidBlock2D`` without time embedding: resnet, attention (optional), resnet."""

    channels: int
    groups: int
    act_fn: str
    add_attention: bool
    precision: Any = None

    @nn.compact
    def __call__(self, h):
        h = ResnetBlock(self.channels, self.groups, self.act_fn, self.precision, name="resnets_0")(h)
        if self.add_attention:
            h = _attention(self.groups, "attentions_0", self.precision)(h)
        return ResnetBlock(self.channels, self.groups, self.act_fn, self.precision, name="resnets_1")(h)


class CoderBlock(nn.Module):
    """``(Attn)DownEncoderBlock2D`` / ``(Attn)UpDecoderBlock2D``: ``num_layers`` × [resnet
    (+ attention)], then a stride-2 conv (encoder, diffusers' ``downsample_padding=0``: pad one row
    and column at the bottom/right) or nearest ×2 + conv (decoder), unless ``resample`` is None."""

    out_channels: int
    num_layers: int
    attention: bool
    resample: Optional[str]  # "down", "up" or None (last level)
    groups: int
    act_fn: str
    precision: Any = None

    @nn.compact
    def __call__(self, h):
        for i in range(self.num_layers):
            h = ResnetBlock(self.out_channels, self.groups, self.act_fn, self.precision, name=f"resnets_{i}")(h)
            if self.attention:
                h = _attention(self.groups, f"attentions_{i}", self.precision)(h)
        if self.resample == "down":
            h = Downsample2D(self.out_channels, 0, self.precision, name="downsamplers_0")(h)
        elif self.resample == "up":
            h = Upsample2D(self.out_channels, self.precision, name="upsamplers_0")(h)
        return h


class Encoder(nn.Module):
    """diffusers ``Encoder``: conv_in, down blocks, mid block, GroupNorm, SiLU, conv_out (``out``
    channels; 2 × latent for the KL posterior's mean and log-variance)."""

    config: Any  # AutoencoderKLConfig or VQModelConfig
    out: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        channels = cfg.block_out_channels
        h = conv(channels[0], 3, "conv_in", self.precision)(x)
        for i, kind in enumerate(cfg.down_block_types):
            last = i == len(channels) - 1
            h = CoderBlock(channels[i], cfg.layers_per_block, kind == "AttnDownEncoderBlock2D",
                           None if last else "down", cfg.norm_num_groups, cfg.act_fn, self.precision,
                           name=f"down_blocks_{i}")(h)
        h = MidBlock(channels[-1], cfg.norm_num_groups, cfg.act_fn, cfg.mid_block_add_attention, self.precision,
                     name="mid_block")(h)
        h = nn.silu(_group_norm(cfg.norm_num_groups, "conv_norm_out")(h))  # conv_act is always SiLU
        return conv(self.out, 3, "conv_out", self.precision)(h)


class Decoder(nn.Module):
    """diffusers ``Decoder`` (``norm_type="group"``): conv_in, mid block, up blocks with
    ``layers_per_block + 1`` resnets each, GroupNorm, SiLU, conv_out."""

    config: Any
    precision: Any = None

    @nn.compact
    def __call__(self, z):
        cfg = self.config
        channels = tuple(reversed(cfg.block_out_channels))
        h = conv(channels[0], 3, "conv_in", self.precision)(z)
        h = MidBlock(channels[0], cfg.norm_num_groups, cfg.act_fn, cfg.mid_block_add_attention, self.precision,
                     name="mid_block")(h)
        for i, kind in enumerate(cfg.up_block_types):
            last = i == len(channels) - 1
            h = CoderBlock(channels[i], cfg.layers_per_block + 1, kind == "AttnUpDecoderBlock2D",
                           None if last else "up", cfg.norm_num_groups, cfg.act_fn, self.precision,
                           name=f"up_blocks_{i}")(h)
        h = nn.silu(_group_norm(cfg.norm_num_groups, "conv_norm_out")(h))
        return conv(cfg.out_channels, 3, "conv_out", self.precision)(h)


def posterior_sample(mean, logvar, noise):
    """A draw of the diagonal Gaussian posterior: mean + exp(logvar / 2)·noise (Kingma & Welling,
    arXiv 1312.6114, §2.4; diffusers ``DiagonalGaussianDistribution.sample`` with ``noise`` given)."""
    return mean + jnp.exp(0.5 * logvar) * noise


def nearest_codes(z, codebook):
    """Each latent vector replaced by its nearest codebook row (Euclidean), as diffusers'
    ``VectorQuantizer.forward`` (van den Oord et al., arXiv 1711.00937, Eq. 2).

    z: (..., D); codebook: (K, D). ‖z − e‖² = ‖z‖² − 2 z·e + ‖e‖² avoids the (N, K, D) difference
    tensor (about 270 MB per 256-px image with the 16384-code VQ-f8). The distances are computed at
    full float32 precision whatever the module's setting: argmin is discontinuous, and TF32 would
    move codes near ties.
    """
    flat = z.reshape(-1, z.shape[-1])
    cross = jnp.matmul(flat, codebook.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(flat**2, axis=1, keepdims=True) - 2.0 * cross + jnp.sum(codebook**2, axis=1)[None, :]
    return codebook[jnp.argmin(d2, axis=1)].reshape(z.shape)


# ==================================================================================================
# Models
# ==================================================================================================


class AutoencoderKL(nn.Module):
    """diffusers ``AutoencoderKL`` in Flax (NHWC). Methods: :meth:`moments` (images → posterior mean
    and clamped log-variance, unscaled), :meth:`decode` (unscaled latents → images); calling the
    module reconstructs from the posterior mean."""

    config: AutoencoderKLConfig
    precision: Any = None

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, 2 * cfg.latent_channels, self.precision)
        self.decoder = Decoder(cfg, self.precision)
        conv1x1 = functools.partial(nn.Conv, kernel_size=(1, 1), precision=self.precision)
        self.quant_conv = conv1x1(2 * cfg.latent_channels) if cfg.use_quant_conv else None
        self.post_quant_conv = conv1x1(cfg.latent_channels) if cfg.use_post_quant_conv else None

    def moments(self, images):
        h = self.encoder(images)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, images):
        return self.decode(self.moments(images)[0])


class VectorQuantizer(nn.Module):
    """The codebook (``quantize.embedding.weight``) and the nearest-entry lookup."""

    num_embeddings: int
    embed_dim: int

    def setup(self):
        self.embedding = nn.Embed(self.num_embeddings, self.embed_dim)

    def __call__(self, z):
        return nearest_codes(z, self.embedding.embedding)


class VQModel(nn.Module):
    """diffusers ``VQModel`` in Flax (NHWC). :meth:`encode` returns the pre-quantisation latent
    (``VQModel.encode``); :meth:`decode` quantises it first unless ``force_not_quantize``."""

    config: VQModelConfig
    precision: Any = None

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, cfg.latent_channels, self.precision)
        self.quant_conv = nn.Conv(cfg.code_channels, (1, 1), precision=self.precision)
        self.quantize = VectorQuantizer(cfg.num_vq_embeddings, cfg.code_channels)
        self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), precision=self.precision)
        self.decoder = Decoder(cfg, self.precision)

    def encode(self, images):
        return self.quant_conv(self.encoder(images))

    def quantized(self, h):
        return self.quantize(h)

    def decode(self, h, force_not_quantize: bool = False):
        if not force_not_quantize:
            h = self.quantize(h)
        return self.decoder(self.post_quant_conv(h))

    def __call__(self, images):
        return self.decode(self.encode(images))


# ==================================================================================================
# Registration: ModelSpec (for loading/saving folders) and latent codecs (for the Denoiser)
# ==================================================================================================


@functools.lru_cache(maxsize=32)
def _abstract_params(module_cls, config) -> dict:
    """Parameter shapes without computing anything (they do not depend on the image size)."""
    side = config.downsample_factor
    x = jnp.zeros((1, side, side, config.in_channels), jnp.float32)
    return jax.eval_shape(lambda: module_cls(config).init(jax.random.key(0), x))["params"]


def abstract_params(module) -> dict:
    return _abstract_params(type(module), module.config)


def init_params(module, seed: int = 0) -> dict:
    """Random float32 parameters drawn on the host with PyTorch's default initialisation (the
    codebook N(0, 1)): :func:`jaxmia.models.blocks.torch_default_params`. Jitting ``module.init``
    instead would compile one RNG program per leaf."""
    return torch_default_params(abstract_params(module), seed)


def _reconstruct(module, params, x, t=None, cond=None):
    # A ModelSpec's apply_fn: the autoencoder's reconstruction; t and cond have no meaning here.
    return module.apply({"params": params}, x)


def _spec(module, cfg) -> ModelSpec:
    return ModelSpec(
        module=module,
        config=cfg,
        abstract_params=abstract_params(module),
        apply_fn=functools.partial(_reconstruct, module),
        sample_shape=cfg.sample_shape,
        out_channels=cfg.out_channels,
        cond_kind="none",
    )


@register_model("AutoencoderKL", role="autoencoder", module_lists=UNET_MODULE_LISTS)
def build_autoencoder_kl(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    cfg = AutoencoderKLConfig.from_diffusers(config, source=source)
    return _spec(AutoencoderKL(cfg), cfg)


@register_model("VQModel", role="autoencoder", module_lists=UNET_MODULE_LISTS)
def build_vq_model(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    cfg = VQModelConfig.from_diffusers(config, source=source)
    return _spec(VQModel(cfg), cfg)


def is_autoencoder(spec: ModelSpec) -> bool:
    return isinstance(spec.config, (AutoencoderKLConfig, VQModelConfig))


class LatentCodec(NamedTuple):
    """How a latent diffusion model sees images.

    Attributes:
      encode_fn: ``(params, images[B,H,W,C] in [-1, 1], keys[B]) -> latents[B,h,w,c]``, already
        ``(z − shift)·scale``; keys are used by ``mode="sample"`` only (one draw per image).
      decode_fn: ``(params, latents[B,h,w,c]) -> images[B,H,W,C]`` (divides by the scale first).
      mode: the encode mode (:data:`ENCODE_MODES`). scale, shift: the latent affine map.
      latent_channels: c. downsample_factor: H / h. in_channels: C.
    """

    encode_fn: Callable
    decode_fn: Callable
    mode: str
    scale: float
    shift: float
    latent_channels: int
    downsample_factor: int
    in_channels: int

    def latent_shape(self, image_shape) -> tuple[int, int, int]:
        h, w, _ = image_shape
        return (h // self.downsample_factor, w // self.downsample_factor, self.latent_channels)

    def image_shape(self, latent_shape) -> tuple[int, int, int]:
        h, w, _ = latent_shape
        return (h * self.downsample_factor, w * self.downsample_factor, self.in_channels)


def _kl_encode(module, params, images, keys, *, mode, scale, shift):
    mean, logvar = module.apply({"params": params}, images, method=AutoencoderKL.moments)
    if mode == "sample":
        noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
        z = posterior_sample(mean, logvar, noise)
    else:
        z = mean
    return (z - shift) * scale


def _kl_decode(module, params, latents, *, scale, shift):
    return module.apply({"params": params}, latents / scale + shift, method=AutoencoderKL.decode)


def _vq_encode(module, params, images, keys, *, mode, scale):
    del keys  # deterministic
    h = module.apply({"params": params}, images, method=VQModel.encode)
    if mode == "quantized":
        h = module.apply({"params": params}, h, method=VQModel.quantized)
    return h * scale


def _vq_decode(module, params, latents, *, scale, quantize):
    return module.apply({"params": params}, latents / scale, not quantize, method=VQModel.decode)


def latent_codec(spec: ModelSpec, *, mode: Optional[str] = None, scale: Optional[float] = None,
                 quantize_on_decode: bool = True, source: str = "autoencoder") -> LatentCodec:
    """The encode/decode functions of a loaded autoencoder (a :class:`ModelSpec` of this module).

    Args:
      mode: AutoencoderKL ``"sample"`` (default; the reference for DiT, U-ViT and SD, docs/methods/cdi.md
        §9) or ``"mean"``; VQModel ``"pre_quantization"`` (default; CompVis LDM) or ``"quantized"``.
      scale: the latent scale; None takes the config's ``scaling_factor``.
      quantize_on_decode: VQModel only; False is diffusers' ``force_not_quantize=True``.
    """
    cfg = spec.config
    if not is_autoencoder(spec):
        raise ValueError(f"{source}: {type(cfg).__name__} is not an autoencoder ({', '.join(ENCODE_MODES)})")
    modes = ENCODE_MODES[cfg.class_name]
    mode = modes[0] if mode is None else mode
    if mode not in modes:
        raise ValueError(f"{source}: encode mode {mode!r} is not one of {cfg.class_name}'s ({', '.join(modes)})")
    scale = float(cfg.scaling_factor if scale is None else scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"{source}: latent scale {scale!r} must be a positive number")
    module = spec.module
    if cfg.class_name == "AutoencoderKL":
        shift = float(cfg.shift_factor or 0.0)
        encode = functools.partial(_kl_encode, module, mode=mode, scale=scale, shift=shift)
        decode = functools.partial(_kl_decode, module, scale=scale, shift=shift)
    else:
        shift = 0.0
        encode = functools.partial(_vq_encode, module, mode=mode, scale=scale)
        decode = functools.partial(_vq_decode, module, scale=scale, quantize=bool(quantize_on_decode))
    return LatentCodec(encode, decode, mode, scale, shift, cfg.code_channels, cfg.downsample_factor, cfg.in_channels)
