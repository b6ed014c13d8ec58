"""diffusers' ``UNet2DModel`` (the pixel-space DDPM UNet) as a Flax linen module, NHWC throughout.

The parameter tree mirrors the PyTorch state-dict names of diffusers (``conv_in``,
``time_embedding/linear_1``, ``down_blocks_0/resnets_0/conv1``, ``down_blocks_1/attentions_0/to_q``,
``.../to_out_0``, ``down_blocks_0/downsamplers_0/conv``, ``mid_block/...``,
``up_blocks_0/upsamplers_0/conv``, ``conv_norm_out``, ``conv_out``, ``class_embedding``), so the
conversion in :mod:`jaxmia.models.convert` is a mechanical rename plus transpose
(docs/methods/models.md §4, §5).

References:
  Ho et al., "Denoising Diffusion Probabilistic Models", arXiv 2006.11239, Appendix B (the
  architecture); diffusers ``models/unets/unet_2d.py`` (the reference implementation, 0.42).

Deliberate differences from diffusers:
  * NHWC tensors; the caller transposes once at the data boundary.
  * Inference only: ``dropout`` is accepted and ignored (deterministic), as in diffusers' eval mode.
  * GroupNorm statistics use the two-pass variance (``use_fast_variance=False``) to match PyTorch.
  * Not ported, and refused by name in :meth:`UNet2DConfig.from_diffusers`: the Skip/Cross-attention/
    KDownBlock block families, ``time_embedding_type="fourier"`` (score-SDE models), the
    ``spatial``/``ada_group`` time-scale shifts and ``norm_num_groups=None``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.blocks import (ACTIVATIONS, UNET_MODULE_LISTS, Downsample2D, ResnetBlock2D, SpatialAttention,
                                  TimestepEmbedding, Upsample2D, conv, group_norm, timestep_sinusoid,
                                  torch_default_params)
from jaxmia.models.registry import ModelSpec, register_model

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)
TIME_EMBEDDING_TYPES = ("positional", "learned")
CLASS_EMBED_TYPES = (None, "timestep", "identity")
TIME_SCALE_SHIFTS = ("default", "scale_shift")
RESAMPLE_TYPES = ("conv", "resnet")


def _block_kind(block_type: str) -> str:
    """diffusers accepts a ``UNetRes`` prefix on every block name (get_down_block / get_up_block)."""
    return block_type[len("UNetRes"):] if block_type.startswith("UNetRes") else block_type


@dataclasses.dataclass(frozen=True)
class UNet2DConfig:
    """The constructor arguments of diffusers' ``UNet2DModel``, typed and frozen.

    Field defaults are diffusers' own defaults for ``UNet2DModel.__init__`` (0.42), so a key absent
    from a ``config.json`` means what it means to diffusers. In particular ``attention_head_dim``
    defaults to 8 (multi-head); ``google/ddpm-cifar10-32`` writes ``null`` explicitly, which means
    one head as wide as the channels.
    """

    sample_size: Optional[int | tuple[int, int]] = None
    in_channels: int = 3
    out_channels: int = 3
    center_input_sample: bool = False
    time_embedding_type: str = "positional"
    time_embedding_dim: Optional[int] = None
    freq_shift: float = 0
    flip_sin_to_cos: bool = True
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    mid_block_type: Optional[str] = "UNetMidBlock2D"
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    block_out_channels: tuple[int, ...] = (224, 448, 672, 896)
    layers_per_block: int = 2
    mid_block_scale_factor: float = 1
    downsample_padding: int = 1
    downsample_type: str = "conv"
    upsample_type: str = "conv"
    dropout: float = 0.0
    act_fn: str = "silu"
    attention_head_dim: Optional[int] = 8
    norm_num_groups: int = 32
    attn_norm_num_groups: Optional[int] = None
    norm_eps: float = 1e-5
    resnet_time_scale_shift: str = "default"
    add_attention: bool = True
    class_embed_type: Optional[str] = None
    num_class_embeds: Optional[int] = None
    num_train_timesteps: Optional[int] = None

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config") -> "UNet2DConfig":
        """Builds the config from a diffusers ``config.json`` dictionary.

        Raises:
          ValueError naming ``source`` and the key when a key is unknown, a value has the wrong type
          or a value selects a part of diffusers that jaxmia does not port.
        """
        return typed.from_class_config(cls, config, "UNet2DModel", source=source)

    def __post_init__(self):
        # Lists given in Python become tuples, so the config stays hashable (a static jit argument).
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self.validate()

    def to_diffusers(self) -> dict:
        """The ``config.json`` dictionary diffusers' ``UNet2DModel`` accepts (lists, not tuples)."""
        return typed.to_class_config(self, "UNet2DModel")

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuses, by key and value, what diffusers would refuse and what jaxmia does not port."""

        def bad(key, value, why):
            raise ValueError(f"{key}={value!r} {why}")

        n = len(self.block_out_channels)
        if n == 0:
            bad("block_out_channels", list(self.block_out_channels), "must name at least one level")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                "block_out_channels, down_block_types and up_block_types must have the same "
                f"length, got {n}, {len(self.down_block_types)}, {len(self.up_block_types)}")
        for i, kind in enumerate(self.down_block_types):
            if _block_kind(kind) not in DOWN_BLOCK_TYPES:
                bad(f"down_block_types[{i}]", kind, f"is not supported (supported: {', '.join(DOWN_BLOCK_TYPES)})")
        for i, kind in enumerate(self.up_block_types):
            if _block_kind(kind) not in UP_BLOCK_TYPES:
                bad(f"up_block_types[{i}]", kind, f"is not supported (supported: {', '.join(UP_BLOCK_TYPES)})")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            bad("mid_block_type", self.mid_block_type, "is not supported (supported: 'UNetMidBlock2D', null)")
        if self.time_embedding_type not in TIME_EMBEDDING_TYPES:
            bad("time_embedding_type", self.time_embedding_type,
                f"is not supported (supported: {', '.join(TIME_EMBEDDING_TYPES)})")
        if self.time_embedding_type == "learned" and not self.num_train_timesteps:
            bad("num_train_timesteps", self.num_train_timesteps, "must be set when time_embedding_type='learned'")
        if self.class_embed_type not in CLASS_EMBED_TYPES:
            bad("class_embed_type", self.class_embed_type, "is not supported (supported: null, 'timestep', 'identity')")
        if self.act_fn.lower() not in ACTIVATIONS:
            bad("act_fn", self.act_fn, f"is not supported (supported: {', '.join(ACTIVATIONS)})")
        if self.resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
            bad("resnet_time_scale_shift", self.resnet_time_scale_shift,
                f"is not supported (supported: {', '.join(TIME_SCALE_SHIFTS)})")
        for key in ("downsample_type", "upsample_type"):
            if getattr(self, key) not in RESAMPLE_TYPES:
                bad(key, getattr(self, key), f"is not supported (supported: {', '.join(RESAMPLE_TYPES)})")
        if self.downsample_padding < 0:
            bad("downsample_padding", self.downsample_padding, "must be >= 0")
        for key in ("in_channels", "out_channels", "layers_per_block", "norm_num_groups"):
            if getattr(self, key) < 1:
                bad(key, getattr(self, key), "must be a positive integer")
        for key in ("attention_head_dim", "attn_norm_num_groups", "num_class_embeds", "time_embedding_dim",
                    "num_train_timesteps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                bad(key, value, "must be a positive integer or null")
        for i, c in enumerate(self.block_out_channels):
            if c < 1 or c % self.norm_num_groups:
                bad(f"block_out_channels[{i}]", c, f"must be a positive multiple of norm_num_groups={self.norm_num_groups}")
        if self.attn_norm_num_groups and self.block_out_channels[-1] % self.attn_norm_num_groups:
            bad("attn_norm_num_groups", self.attn_norm_num_groups,
                f"must divide block_out_channels[-1]={self.block_out_channels[-1]}")
        if self.attention_head_dim is not None:
            attended = [i for i, kind in enumerate(self.down_block_types) if _block_kind(kind) == "AttnDownBlock2D"]
            attended += [n - 1 - i for i, kind in enumerate(self.up_block_types) if _block_kind(kind) == "AttnUpBlock2D"]
            if self.mid_block_type is not None and self.add_attention:
                attended.append(n - 1)
            for i in sorted(set(attended)):
                if self.block_out_channels[i] < self.attention_head_dim:
                    bad("attention_head_dim", self.attention_head_dim,
                        f"exceeds block_out_channels[{i}]={self.block_out_channels[i]} (zero attention heads)")
        if self.norm_eps <= 0:
            bad("norm_eps", self.norm_eps, "must be > 0")
        if self.sample_size is not None:
            factor = 2 ** (n - 1)
            for side in self.image_hw:
                if side < 1 or side % factor:
                    bad("sample_size", self.sample_size, f"must be a multiple of 2**(levels-1)={factor}")

    # ----------------------------------------------------------------------------------------------
    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the samples; diffusers' ``sample_size`` is an int (square) or [H, W]."""
        if self.sample_size is None:
            raise ValueError("the UNet2DModel config has no sample_size")
        if isinstance(self.sample_size, int):
            return (self.sample_size, self.sample_size)
        return tuple(self.sample_size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the network input x_t."""
        return (*self.image_hw, self.in_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]

    @property
    def has_class_embedding(self) -> bool:
        return self.class_embed_type is not None or self.num_class_embeds is not None


# ==================================================================================================
# Blocks
# ==================================================================================================


class DownBlock(nn.Module):
    """``DownBlock2D`` / ``AttnDownBlock2D``: ``num_layers`` × [resnet (+ attention)], then a
    downsampler unless ``sampler`` is None. Returns (h, skips), one skip per resnet and sampler."""

    config: UNet2DConfig
    out_channels: int
    attention: bool
    sampler: Optional[str]  # "conv", "resnet" or None (last level)
    precision: Any = None

    @nn.compact
    def __call__(self, h, temb):
        cfg = self.config
        skips = []
        for i in range(cfg.layers_per_block):
            h = _resnet(cfg, self.out_channels, f"resnets_{i}", self.precision)(h, temb)
            if self.attention:
                h = _attention(cfg, f"attentions_{i}", self.precision)(h)
            skips.append(h)
        if self.sampler == "conv":
            h = Downsample2D(self.out_channels, cfg.downsample_padding, self.precision, name="downsamplers_0")(h)
        elif self.sampler == "resnet":
            h = _resnet(cfg, self.out_channels, "downsamplers_0", self.precision, resample="down")(h, temb)
        if self.sampler is not None:
            skips.append(h)
        return h, skips


class UpBlock(nn.Module):
    """``UpBlock2D`` / ``AttnUpBlock2D``: (layers_per_block + 1) × [concat a popped skip, resnet
    (+ attention)], then an upsampler unless ``sampler`` is None."""

    config: UNet2DConfig
    out_channels: int
    attention: bool
    sampler: Optional[str]
    precision: Any = None

    @nn.compact
    def __call__(self, h, skips, temb):
        cfg = self.config
        for i, skip in enumerate(reversed(skips)):
            h = jnp.concatenate([h, skip], axis=-1)
            h = _resnet(cfg, self.out_channels, f"resnets_{i}", self.precision)(h, temb)
            if self.attention:
                h = _attention(cfg, f"attentions_{i}", self.precision)(h)
        if self.sampler == "conv":
            h = Upsample2D(self.out_channels, self.precision, name="upsamplers_0")(h)
        elif self.sampler == "resnet":
            h = _resnet(cfg, self.out_channels, "upsamplers_0", self.precision, resample="up")(h, temb)
        return h


class MidBlock(nn.Module):
    """``UNetMidBlock2D``: resnet, attention (if ``add_attention``), resnet, all scaled by
    ``mid_block_scale_factor``."""

    config: UNet2DConfig
    precision: Any = None

    @nn.compact
    def __call__(self, h, temb):
        cfg = self.config
        c = cfg.block_out_channels[-1]
        scale = cfg.mid_block_scale_factor
        h = _resnet(cfg, c, "resnets_0", self.precision, output_scale_factor=scale)(h, temb)
        if cfg.add_attention:
            # diffusers drops the attention group norm for scale_shift unless attn_norm_num_groups is set.
            groups = cfg.attn_norm_num_groups or (cfg.norm_num_groups if cfg.resnet_time_scale_shift == "default" else None)
            h = SpatialAttention(cfg.attention_head_dim, groups, cfg.norm_eps, scale, self.precision,
                                 name="attentions_0")(h)
        return _resnet(cfg, c, "resnets_1", self.precision, output_scale_factor=scale)(h, temb)


def _resnet(cfg: UNet2DConfig, out_channels, name, precision, *, output_scale_factor=1.0, resample=None):
    return ResnetBlock2D(out_channels, cfg.norm_num_groups, cfg.norm_eps, cfg.act_fn, cfg.resnet_time_scale_shift,
                         output_scale_factor, resample, precision, name=name)


def _attention(cfg: UNet2DConfig, name, precision):
    return SpatialAttention(cfg.attention_head_dim, cfg.norm_num_groups, cfg.norm_eps, 1.0, precision, name=name)


# ==================================================================================================
# The model
# ==================================================================================================


class UNet2DModel(nn.Module):
    """diffusers ``UNet2DModel`` in Flax: ``(sample[B,H,W,C], timesteps[B], class_labels) -> [B,H,W,C_out]``.

    Attributes:
      config: the :class:`UNet2DConfig`.
      precision: matmul/conv precision passed to every layer (None: JAX's default, which is TF32 on
        recent NVIDIA GPUs; ``jax.lax.Precision.HIGHEST`` gives full float32 there).

    ``class_labels`` are (B,) ints for ``num_class_embeds`` / ``class_embed_type="timestep"``, a
    (B, time_embed_dim) array for ``class_embed_type="identity"``, and None otherwise; like
    diffusers, a class-conditional model refuses missing labels and an unconditional one refuses
    labels.
    """

    config: UNet2DConfig
    precision: Any = None

    @nn.compact
    def __call__(self, sample, timesteps, class_labels=None):
        cfg = self.config
        if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet2DModel expects NHWC input with {cfg.in_channels} channels, got shape {sample.shape}")
        batch = sample.shape[0]
        if cfg.center_input_sample:
            sample = 2.0 * sample - 1.0

        # 1. time (and class) embedding
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        c0 = cfg.block_out_channels[0]
        if cfg.time_embedding_type == "learned":
            time_proj = nn.Embed(cfg.num_train_timesteps, c0, name="time_proj")
        else:
            time_proj = functools.partial(timestep_sinusoid, dim=c0, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                          freq_shift=cfg.freq_shift)
        emb = TimestepEmbedding(cfg.time_embed_dim, precision=self.precision, name="time_embedding")(time_proj(timesteps))
        if cfg.has_class_embedding:
            if class_labels is None:
                raise ValueError("this UNet2DModel is class-conditional: class_labels are required")
            if cfg.class_embed_type == "timestep":
                emb = emb + TimestepEmbedding(cfg.time_embed_dim, precision=self.precision, name="class_embedding")(
                    time_proj(class_labels))
            elif cfg.class_embed_type == "identity":
                emb = emb + jnp.asarray(class_labels, emb.dtype)
            else:
                emb = emb + nn.Embed(cfg.num_class_embeds, cfg.time_embed_dim, name="class_embedding")(class_labels)
        elif class_labels is not None:
            raise ValueError("this UNet2DModel has no class embedding: class_labels must be None")

        # 2. down path; the skip stack starts with conv_in's output
        h = conv(c0, 3, "conv_in", self.precision)(sample)
        skips = [h]
        levels = len(cfg.block_out_channels)
        for i, kind in enumerate(cfg.down_block_types):
            attention = _block_kind(kind) == "AttnDownBlock2D"
            last = i == levels - 1
            # Only AttnDownBlock2D honours downsample_type; DownBlock2D always uses the conv.
            sampler = None if last else (cfg.downsample_type if attention else "conv")
            h, level_skips = DownBlock(cfg, cfg.block_out_channels[i], attention, sampler, self.precision,
                                       name=f"down_blocks_{i}")(h, emb)
            skips.extend(level_skips)

        # 3. mid
        if cfg.mid_block_type is not None:
            h = MidBlock(cfg, self.precision, name="mid_block")(h, emb)

        # 4. up path: each level consumes layers_per_block + 1 skips
        for i, kind in enumerate(cfg.up_block_types):
            attention = _block_kind(kind) == "AttnUpBlock2D"
            last = i == levels - 1
            sampler = None if last else (cfg.upsample_type if attention else "conv")
            n = cfg.layers_per_block + 1
            level_skips, skips = skips[-n:], skips[:-n]
            h = UpBlock(cfg, cfg.block_out_channels[levels - 1 - i], attention, sampler, self.precision,
                        name=f"up_blocks_{i}")(h, level_skips, emb)

        # 5. out
        h = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out")(h))
        return conv(cfg.out_channels, 3, "conv_out", self.precision)(h)


def example_inputs(config: UNet2DConfig, batch: int = 1):
    """Zero inputs of the right shapes and dtypes for ``init`` / ``jax.eval_shape``.

    Parameter shapes do not depend on the image size, so a config without ``sample_size`` gets the
    smallest size its levels accept.
    """
    if config.sample_size is None:
        side = 2 ** (len(config.block_out_channels) - 1)
        shape = (side, side, config.in_channels)
    else:
        shape = config.sample_shape
    x = jnp.zeros((batch, *shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    if not config.has_class_embedding:
        labels = None
    elif config.class_embed_type == "identity":
        labels = jnp.zeros((batch, config.time_embed_dim), jnp.float32)
    else:
        labels = jnp.zeros((batch,), jnp.int32)
    return x, t, labels


def init_params(module: UNet2DModel, seed: int = 0) -> dict:
    """Random float32 parameters for training a new target (:func:`torch_default_params`).

    Differs from ``module.init``: Flax's initialisers are not PyTorch's, and jitting ``module.init``
    compiles one RNG program per leaf (tens of seconds of XLA time on CPU even for a tiny UNet).
    """
    return torch_default_params(abstract_params(module), seed)


def abstract_params(module: UNet2DModel) -> dict:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves, without computing anything.

    Shapes depend on the config only, so they are traced once per config (tracing costs ~1 s).
    """
    return _abstract_params(module.config)


@functools.lru_cache(maxsize=32)
def _abstract_params(config: UNet2DConfig) -> dict:
    module = UNet2DModel(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config)))["params"]


# ==================================================================================================
# Registration
# ==================================================================================================


def _unet2d_apply(module: UNet2DModel, params, x, t, cond):
    return module.apply({"params": params}, x, t, cond)


@register_model("UNet2DModel", module_lists=UNET_MODULE_LISTS)
def build_unet2d(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    cfg = UNet2DConfig.from_diffusers(config, source=source)
    module = UNet2DModel(cfg)
    if not cfg.has_class_embedding:
        cond_kind = "none"
    elif cfg.class_embed_type == "identity":
        cond_kind = "embedding"  # a float vector per image: no attack supplies one
    else:
        cond_kind = "class"
    return ModelSpec(
        module=module,
        config=cfg,
        abstract_params=abstract_params(module),
        apply_fn=functools.partial(_unet2d_apply, module),
        sample_shape=None if cfg.sample_size is None else cfg.sample_shape,
        out_channels=cfg.out_channels,
        cond_kind=cond_kind,
    )
