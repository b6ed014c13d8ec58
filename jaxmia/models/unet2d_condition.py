"""diffusers' ``UNet2DConditionModel`` (the Stable Diffusion 1.x / 2.x UNet) as a Flax linen module, NHWC.

Text conditioning enters through cross-attention: every ``CrossAttnDownBlock2D``,
``UNetMidBlock2DCrossAttn`` and ``CrossAttnUpBlock2D`` follows each resnet with a
``Transformer2DModel`` (GroupNorm, ``proj_in``, ``BasicTransformerBlock`` × n, ``proj_out``, residual)
whose blocks cross-attend to the text embeddings (B, L, ``cross_attention_dim``). The parameter tree
mirrors diffusers' state-dict names (``down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k``,
``.../ff/net_0/proj``, ``mid_block/attentions_0/proj_in``, ...), so :mod:`jaxmia.models.convert`
converts a ``diffusion_pytorch_model.safetensors`` mechanically (docs/methods/models.md §4).

Head count: diffusers' ``attention_head_dim`` is, for historical reasons, the number of heads of
each level (diffusers issue #2011); ``num_attention_heads`` must be absent (diffusers refuses it
too). A level with C channels and n heads has heads of width C // n. jaxmia mirrors this exactly.

References:
  Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752,
  §3.3 (cross-attention conditioning) and Appendix (the UNet); diffusers 0.42
  ``models/unets/unet_2d_condition.py``, ``unet_2d_blocks.py`` and ``transformers/transformer_2d.py``.

Deliberate differences from diffusers:
  * NHWC tensors; inference only (dropout is the identity); attention in float32.
  * Sample sizes must be divisible by 2**(levels − 1) (diffusers' ``upsample_size`` forwarding for
    odd sizes is not ported).
  * Not ported, and refused by name in :meth:`UNet2DConditionConfig.from_diffusers`: additional
    embeddings (``addition_embed_type``, SDXL's ``text_time``), ``class_embed_type`` other than null,
    ``time_cond_proj_dim`` (LCM), ``encoder_hid_dim_type``, dual cross-attention, ``only_cross_attention``,
    GLIGEN ``attention_type``, Fourier time embeddings, the Simple/K/Skip block families, a text
    model that is also class-conditional (two conditions per image), and per-level
    ``cross_attention_dim`` values that differ.
  * Options that only the unported Simple* blocks read (``resnet_skip_time_act``,
    ``resnet_out_scale_factor``, ``cross_attention_norm``, ``mid_block_only_cross_attention``,
    ``addition_embed_type_num_heads``) are accepted and, as in diffusers for these blocks, ignored.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.attention import TRANSFORMER_MODULE_LISTS, BasicTransformerBlock
from jaxmia.models.blocks import (ACTIVATIONS, UNET_MODULE_LISTS, Downsample2D, ResnetBlock2D, TimestepEmbedding,
                                  Upsample2D, conv, group_norm, timestep_sinusoid)
from jaxmia.models.registry import ModelSpec, register_model
from jaxmia.models.unet2d import _block_kind

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"
CROSS_MID, PLAIN_MID = "UNetMidBlock2DCrossAttn", "UNetMidBlock2D"
DOWN_BLOCK_TYPES = (CROSS_DOWN, PLAIN_DOWN)
UP_BLOCK_TYPES = (CROSS_UP, PLAIN_UP)
MID_BLOCK_TYPES = (CROSS_MID, PLAIN_MID, None)
TIME_SCALE_SHIFTS = ("default", "scale_shift")

# Keys whose only supported value is the diffusers default; anything else selects an unported part.
_DEFAULT_ONLY = {
    "num_attention_heads": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "reverse_transformer_layers_per_block": None,
}


@dataclasses.dataclass(frozen=True)
class UNet2DConditionConfig:
    """The constructor arguments of diffusers' ``UNet2DConditionModel`` (0.42 defaults), typed and frozen.

    Per-level options (``layers_per_block``, ``attention_head_dim``, ``cross_attention_dim``,
    ``transformer_layers_per_block``, ``only_cross_attention``) are an int/bool or a tuple with one
    entry per level, as in diffusers; the ``*_per_level`` properties expand them.
    """

    sample_size: Optional[int | tuple[int, int]] = None
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: float = 0
    down_block_types: tuple[str, ...] = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    mid_block_type: Optional[str] = CROSS_MID
    up_block_types: tuple[str, ...] = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: Optional[int] = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    reverse_transformer_layers_per_block: Any = None
    encoder_hid_dim: Optional[int] = None
    encoder_hid_dim_type: Optional[str] = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: Any = None
    dual_cross_attention: bool = False
    use_linear_projection: bool = False
    class_embed_type: Optional[str] = None
    addition_embed_type: Optional[str] = None
    addition_time_embed_dim: Optional[int] = None
    num_class_embeds: Optional[int] = None
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: Optional[int] = None
    time_embedding_act_fn: Optional[str] = None
    timestep_post_act: Optional[str] = None
    time_cond_proj_dim: Optional[int] = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    projection_class_embeddings_input_dim: Optional[int] = None
    attention_type: str = "default"
    class_embeddings_concat: bool = False
    mid_block_only_cross_attention: Optional[bool] = None
    cross_attention_norm: Optional[str] = None
    addition_embed_type_num_heads: int = 64

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config") -> "UNet2DConditionConfig":
        """Builds the config from a diffusers ``config.json`` dictionary.

        Raises:
          ValueError naming ``source`` and the key: an unknown key, a value of the wrong type, or a
          value that selects a part of diffusers jaxmia does not port.
        """
        if isinstance(config, Mapping):
            for key, default in _DEFAULT_ONLY.items():
                if key in config and config[key] != default:
                    why = ("diffusers refuses it too: the head count comes from attention_head_dim"
                           if key == "num_attention_heads" else "selects a part of diffusers that jaxmia does not port")
                    raise ValueError(f"{source}: {key}={config[key]!r} is not supported ({why}; supported: {default!r})")
            tlpb = config.get("transformer_layers_per_block")
            if isinstance(tlpb, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in tlpb):
                raise ValueError(f"{source}: transformer_layers_per_block={tlpb!r} must be an integer or a flat list "
                                 "(asymmetric per-layer lists need reverse_transformer_layers_per_block, which is not "
                                 "ported)")
        return typed.from_class_config(cls, config, "UNet2DConditionModel", source=source)

    def to_diffusers(self) -> dict:
        """The ``config.json`` dictionary (lists, not tuples) diffusers' ``UNet2DConditionModel`` accepts."""
        return typed.to_class_config(self, "UNet2DConditionModel")

    # ----------------------------------------------------------------------------------------------
    def validate(self, *, source: str = "config") -> None:
        """Refuses, by key and value, what diffusers would refuse and what jaxmia does not port."""

        def bad(key, value, why):
            raise ValueError(f"{source}: {key}={value!r} {why}")

        n = len(self.block_out_channels)
        if n == 0:
            bad("block_out_channels", list(self.block_out_channels), "must name at least one level")
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"{source}: block_out_channels, down_block_types and up_block_types must have the same "
                f"length, got {n}, {len(self.down_block_types)}, {len(self.up_block_types)}")
        for key in ("only_cross_attention", "layers_per_block", "attention_head_dim", "cross_attention_dim",
                    "transformer_layers_per_block"):
            value = getattr(self, key)
            if isinstance(value, tuple) and len(value) != n:
                bad(key, list(value), f"must have one entry per level ({n})")
        for i, kind in enumerate(self.down_block_types):
            if _block_kind(kind) not in DOWN_BLOCK_TYPES:
                bad(f"down_block_types[{i}]", kind, f"is not supported (supported: {', '.join(DOWN_BLOCK_TYPES)})")
        for i, kind in enumerate(self.up_block_types):
            if _block_kind(kind) not in UP_BLOCK_TYPES:
                bad(f"up_block_types[{i}]", kind, f"is not supported (supported: {', '.join(UP_BLOCK_TYPES)})")
        if self.mid_block_type not in MID_BLOCK_TYPES:
            bad("mid_block_type", self.mid_block_type, f"is not supported (supported: {CROSS_MID!r}, {PLAIN_MID!r}, null)")
        if any(self.only_cross_attention_per_level):
            bad("only_cross_attention", self.only_cross_attention,
                "is not supported (self-attention replaced by cross-attention is not ported; supported: false)")
        if self.norm_num_groups is None:
            bad("norm_num_groups", None, "is not supported (no output GroupNorm; supported: a positive integer)")
        if self.act_fn.lower() not in ACTIVATIONS:
            bad("act_fn", self.act_fn, f"is not supported (supported: {', '.join(ACTIVATIONS)})")
        if self.resnet_time_scale_shift not in TIME_SCALE_SHIFTS:
            bad("resnet_time_scale_shift", self.resnet_time_scale_shift,
                f"is not supported (supported: {', '.join(TIME_SCALE_SHIFTS)})")
        for key in ("in_channels", "out_channels", "norm_num_groups"):
            if getattr(self, key) < 1:
                bad(key, getattr(self, key), "must be a positive integer")
        for key in ("conv_in_kernel", "conv_out_kernel"):
            if getattr(self, key) < 1 or getattr(self, key) % 2 == 0:
                bad(key, getattr(self, key), "must be a positive odd integer")
        if self.downsample_padding < 0:
            bad("downsample_padding", self.downsample_padding, "must be >= 0")
        if self.norm_eps <= 0:
            bad("norm_eps", self.norm_eps, "must be > 0")
        for key in ("num_class_embeds", "time_embedding_dim"):
            value = getattr(self, key)
            if value is not None and value < 1:
                bad(key, value, "must be a positive integer or null")
        for key in ("layers_per_block", "attention_head_dim", "cross_attention_dim", "transformer_layers_per_block"):
            for i, value in enumerate(getattr(self, f"{key}_per_level")):
                if value < 1:
                    bad(f"{key}[{i}]" if isinstance(getattr(self, key), tuple) else key, value, "must be a positive integer")
        for i, c in enumerate(self.block_out_channels):
            if c < 1 or c % self.norm_num_groups:
                bad(f"block_out_channels[{i}]", c, f"must be a positive multiple of norm_num_groups={self.norm_num_groups}")
        for i in self.attention_levels:
            if self.heads_per_level[i] > self.block_out_channels[i]:
                bad("attention_head_dim", self.attention_head_dim,
                    f"asks for {self.heads_per_level[i]} heads at level {i} with only "
                    f"{self.block_out_channels[i]} channels (zero-width heads)")
        if len(set(self.cross_attention_dim_per_level)) > 1:
            bad("cross_attention_dim", list(self.cross_attention_dim_per_level),
                "differs between levels; one text embedding per image cannot feed them (supported: one value)")
        if self.has_cross_attention and self.num_class_embeds is not None:
            bad("num_class_embeds", self.num_class_embeds,
                "together with cross-attention blocks needs two conditions per image (text and label); "
                "jaxmia passes one (supported: null for text models)")
        if self.sample_size is not None:
            factor = 2 ** (n - 1)
            for side in self.image_hw:
                if side < 1 or side % factor:
                    bad("sample_size", self.sample_size, f"must be a multiple of 2**(levels-1)={factor}")

    # ----------------------------------------------------------------------------------------------
    def _per_level(self, value) -> tuple:
        return tuple(value) if isinstance(value, tuple) else (value,) * len(self.block_out_channels)

    @property
    def only_cross_attention_per_level(self) -> tuple[bool, ...]:
        return self._per_level(self.only_cross_attention)

    @property
    def layers_per_block_per_level(self) -> tuple[int, ...]:
        return self._per_level(self.layers_per_block)

    @property
    def attention_head_dim_per_level(self) -> tuple[int, ...]:
        return self._per_level(self.attention_head_dim)

    @property
    def heads_per_level(self) -> tuple[int, ...]:
        """Attention heads of each level: diffusers reads ``attention_head_dim`` as the head count."""
        return self.attention_head_dim_per_level

    @property
    def cross_attention_dim_per_level(self) -> tuple[int, ...]:
        return self._per_level(self.cross_attention_dim)

    @property
    def transformer_layers_per_block_per_level(self) -> tuple[int, ...]:
        return self._per_level(self.transformer_layers_per_block)

    @property
    def context_dim(self) -> int:
        """Width D of the text embeddings (B, L, D) the cross-attention layers read."""
        return self.cross_attention_dim_per_level[0]

    @property
    def attention_levels(self) -> tuple[int, ...]:
        """The levels (0 = full resolution) that hold at least one cross-attention block."""
        n = len(self.block_out_channels)
        levels = {i for i, k in enumerate(self.down_block_types) if _block_kind(k) == CROSS_DOWN}
        levels |= {n - 1 - i for i, k in enumerate(self.up_block_types) if _block_kind(k) == CROSS_UP}
        if self.mid_block_type == CROSS_MID:
            levels.add(n - 1)
        return tuple(sorted(levels))

    @property
    def has_cross_attention(self) -> bool:
        return bool(self.attention_levels)

    @property
    def cond_kind(self) -> str:
        """``text`` (cross-attention), ``class`` (``num_class_embeds``) or ``none``."""
        if self.has_cross_attention:
            return "text"
        return "class" if self.num_class_embeds is not None else "none"

    @property
    def image_hw(self) -> tuple[int, int]:
        if self.sample_size is None:
            raise ValueError("the UNet2DConditionModel config has no sample_size")
        if isinstance(self.sample_size, int):
            return (self.sample_size, self.sample_size)
        return tuple(self.sample_size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (*self.image_hw, self.in_channels)

    @property
    def time_embed_dim(self) -> int:
        return self.time_embedding_dim or 4 * self.block_out_channels[0]




# ==================================================================================================
# Layers and blocks
# ==================================================================================================


class Transformer2D(nn.Module):
    """diffusers ``Transformer2DModel`` on continuous inputs (the SD UNet's attention block).

    h = GroupNorm(x) (eps 1e-6); ``proj_in`` (1×1 conv, or a linear layer on the flattened tokens with
    ``use_linear_projection``); ``layers`` BasicTransformerBlocks (self-attention, cross-attention to
    the context, GEGLU feed-forward); ``proj_out``; out = h + x.
    """

    heads: int
    head_dim: int
    layers: int
    groups: int
    linear_projection: bool
    precision: Any = None

    @nn.compact
    def __call__(self, x, context):
        b, height, width, c = x.shape
        inner = self.heads * self.head_dim
        h = nn.GroupNorm(num_groups=self.groups, epsilon=1e-6, use_fast_variance=False, name="norm")(x)
        if self.linear_projection:
            h = nn.Dense(inner, precision=self.precision, name="proj_in")(h.reshape(b, height * width, c))
        else:
            h = conv(inner, 1, "proj_in", self.precision)(h).reshape(b, height * width, inner)
        for i in range(self.layers):
            h = BasicTransformerBlock(self.heads, self.head_dim, cross_attention=True, precision=self.precision,
                                      name=f"transformer_blocks_{i}")(h, context)
        if self.linear_projection:
            h = nn.Dense(c, precision=self.precision, name="proj_out")(h).reshape(b, height, width, c)
        else:
            h = conv(c, 1, "proj_out", self.precision)(h.reshape(b, height, width, inner))
        return h + x


def _resnet(cfg: UNet2DConditionConfig, out_channels: int, name: str, precision, *, output_scale_factor=1.0):
    return ResnetBlock2D(out_channels, cfg.norm_num_groups, cfg.norm_eps, cfg.act_fn, cfg.resnet_time_scale_shift,
                         output_scale_factor, None, precision, name=name)


def _transformer(cfg: UNet2DConditionConfig, level: int, name: str, precision) -> Transformer2D:
    """The attention block of ``level``: heads from ``attention_head_dim[level]``, width C // heads."""
    channels, heads = cfg.block_out_channels[level], cfg.heads_per_level[level]
    return Transformer2D(heads, channels // heads, cfg.transformer_layers_per_block_per_level[level],
                         cfg.norm_num_groups, cfg.use_linear_projection, precision, name=name)


class DownBlock(nn.Module):
    """``DownBlock2D`` / ``CrossAttnDownBlock2D`` of ``level``: layers × [resnet (+ Transformer2D)], then a
    stride-2 conv unless it is the last level. Returns (h, skips): one skip per resnet and downsampler."""

    config: UNet2DConditionConfig
    level: int
    precision: Any = None

    @nn.compact
    def __call__(self, h, temb, context):
        cfg, level = self.config, self.level
        channels = cfg.block_out_channels[level]
        cross = _block_kind(cfg.down_block_types[level]) == CROSS_DOWN
        skips = []
        for j in range(cfg.layers_per_block_per_level[level]):
            h = _resnet(cfg, channels, f"resnets_{j}", self.precision)(h, temb)
            if cross:
                h = _transformer(cfg, level, f"attentions_{j}", self.precision)(h, context)
            skips.append(h)
        if level < len(cfg.block_out_channels) - 1:
            h = Downsample2D(channels, cfg.downsample_padding, self.precision, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class UpBlock(nn.Module):
    """``UpBlock2D`` / ``CrossAttnUpBlock2D`` number ``index`` (deepest first): (layers + 1) × [concatenate a
    popped skip, resnet (+ Transformer2D)], then nearest ×2 and a conv unless it is the last block."""

    config: UNet2DConditionConfig
    index: int
    precision: Any = None

    @nn.compact
    def __call__(self, h, skips, temb, context):
        cfg = self.config
        level = len(cfg.block_out_channels) - 1 - self.index  # the matching down level
        channels = cfg.block_out_channels[level]
        cross = _block_kind(cfg.up_block_types[self.index]) == CROSS_UP
        for j, skip in enumerate(reversed(skips)):
            h = jnp.concatenate([h, skip], axis=-1)
            h = _resnet(cfg, channels, f"resnets_{j}", self.precision)(h, temb)
            if cross:
                h = _transformer(cfg, level, f"attentions_{j}", self.precision)(h, context)
        if level > 0:
            h = Upsample2D(channels, self.precision, name="upsamplers_0")(h)
        return h


class MidBlock(nn.Module):
    """``UNetMidBlock2DCrossAttn``: resnet, Transformer2D, resnet; ``UNetMidBlock2D`` (as the conditional
    UNet builds it, with no attention layers): one resnet. Resnets scale by ``mid_block_scale_factor``."""

    config: UNet2DConditionConfig
    precision: Any = None

    @nn.compact
    def __call__(self, h, temb, context):
        cfg = self.config
        channels, scale = cfg.block_out_channels[-1], cfg.mid_block_scale_factor
        h = _resnet(cfg, channels, "resnets_0", self.precision, output_scale_factor=scale)(h, temb)
        if cfg.mid_block_type == CROSS_MID:
            h = _transformer(cfg, len(cfg.block_out_channels) - 1, "attentions_0", self.precision)(h, context)
            h = _resnet(cfg, channels, "resnets_1", self.precision, output_scale_factor=scale)(h, temb)
        return h


# ==================================================================================================
# The model
# ==================================================================================================


class UNet2DConditionModel(nn.Module):
    """diffusers ``UNet2DConditionModel`` in Flax: ``(sample[B,H,W,C], timesteps[B], encoder_hidden_states
    [B,L,D], class_labels[B]) -> [B,H,W,C_out]``.

    ``encoder_hidden_states`` (text embeddings, e.g. CLIP's last hidden state (B, 77, 768)) are
    required when the config has cross-attention blocks; ``class_labels`` (B,) ints when it has
    ``num_class_embeds``. Passing a condition the model does not read is refused, as is a missing one.

    Attributes:
      config: the :class:`UNet2DConditionConfig`.
      precision: matmul/conv precision of every layer (None: JAX's default; ``jax.lax.Precision.HIGHEST``
        gives full float32 on GPUs with TF32).
    """

    config: UNet2DConditionConfig
    precision: Any = None

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states=None, class_labels=None):
        cfg = self.config
        if sample.ndim != 4 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet2DConditionModel expects NHWC input with {cfg.in_channels} channels, "
                             f"got shape {sample.shape}")
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if sample.shape[1] % factor or sample.shape[2] % factor:
            raise ValueError(f"UNet2DConditionModel: height and width must be multiples of {factor}, "
                             f"got {sample.shape[1:3]}")
        batch = sample.shape[0]
        context = _check_context(cfg, encoder_hidden_states, batch)
        if cfg.center_input_sample:
            sample = 2.0 * sample - 1.0

        # 1. time (and class) embedding
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        c0 = cfg.block_out_channels[0]
        t_proj = timestep_sinusoid(timesteps, c0, flip_sin_to_cos=cfg.flip_sin_to_cos, freq_shift=cfg.freq_shift)
        emb = TimestepEmbedding(cfg.time_embed_dim, cfg.act_fn, self.precision, name="time_embedding")(t_proj)
        if cfg.num_class_embeds is not None:
            if class_labels is None:
                raise ValueError("this UNet2DConditionModel is class-conditional: class_labels are required")
            emb = emb + nn.Embed(cfg.num_class_embeds, cfg.time_embed_dim, name="class_embedding")(class_labels)
        elif class_labels is not None:
            raise ValueError("this UNet2DConditionModel has no class embedding: class_labels must be None")

        # 2. down path; the skip stack starts with conv_in's output
        h = conv(c0, cfg.conv_in_kernel, "conv_in", self.precision)(sample)
        skips = [h]
        for level in range(len(cfg.block_out_channels)):
            h, level_skips = DownBlock(cfg, level, self.precision, name=f"down_blocks_{level}")(h, emb, context)
            skips.extend(level_skips)

        # 3. mid
        if cfg.mid_block_type is not None:
            h = MidBlock(cfg, self.precision, name="mid_block")(h, emb, context)

        # 4. up path: block i consumes layers_per_block[level] + 1 skips
        levels = len(cfg.block_out_channels)
        for i in range(levels):
            n = cfg.layers_per_block_per_level[levels - 1 - i] + 1
            level_skips, skips = skips[-n:], skips[:-n]
            h = UpBlock(cfg, i, self.precision, name=f"up_blocks_{i}")(h, level_skips, emb, context)

        # 5. out
        h = ACTIVATIONS[cfg.act_fn.lower()](group_norm(cfg.norm_num_groups, cfg.norm_eps, "conv_norm_out")(h))
        return conv(cfg.out_channels, cfg.conv_out_kernel, "conv_out", self.precision)(h)


def _check_context(cfg: UNet2DConditionConfig, context, batch: int):
    if not cfg.has_cross_attention:
        if context is not None:
            raise ValueError("this UNet2DConditionModel has no cross-attention: encoder_hidden_states must be None")
        return None
    if context is None:
        raise ValueError("this UNet2DConditionModel cross-attends: encoder_hidden_states (B, L, "
                         f"{cfg.context_dim}) are required")
    if context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != cfg.context_dim:
        raise ValueError(f"encoder_hidden_states must be (B={batch}, L, cross_attention_dim={cfg.context_dim}), "
                         f"got shape {tuple(context.shape)}")
    return context


def example_inputs(config: UNet2DConditionConfig, batch: int = 1, context_length: int = 1):
    """Zero inputs of the right shapes for ``init`` / ``jax.eval_shape`` (parameter shapes do not depend
    on the image size or the number of text tokens)."""
    side = 2 ** (len(config.block_out_channels) - 1)
    shape = (side, side, config.in_channels)
    x = jnp.zeros((batch, *shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.int32)
    context = jnp.zeros((batch, context_length, config.context_dim), jnp.float32) if config.has_cross_attention else None
    labels = jnp.zeros((batch,), jnp.int32) if config.num_class_embeds is not None else None
    return x, t, context, labels


def init_params(module: UNet2DConditionModel, key) -> dict:
    """Random parameters (Flax's default initialisers, not diffusers')."""
    return module.init(key, *example_inputs(module.config))["params"]


@functools.lru_cache(maxsize=32)
def abstract_params(config: UNet2DConditionConfig) -> dict:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (traced once per config, nothing computed)."""
    module = UNet2DConditionModel(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config)))["params"]


def _apply(module: UNet2DConditionModel, params, x, t, cond):
    """The registry's ``apply_fn``: ``cond`` is the text embeddings, the class labels or None (by cond_kind)."""
    kind = module.config.cond_kind
    return module.apply({"params": params}, x, t, cond if kind == "text" else None, cond if kind == "class" else None)


@register_model("UNet2DConditionModel", module_lists=UNET_MODULE_LISTS + TRANSFORMER_MODULE_LISTS)
def build_unet2d_condition(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """The registry builder: text conditioning (cond (B, L, D)) for cross-attention configs, class labels
    (cond (B,) int) for ``num_class_embeds`` without cross-attention, else unconditional."""
    cfg = UNet2DConditionConfig.from_diffusers(config, source=source)
    module = UNet2DConditionModel(cfg)
    return ModelSpec(
        module=module,
        config=cfg,
        abstract_params=abstract_params(cfg),
        apply_fn=functools.partial(_apply, module),
        sample_shape=None if cfg.sample_size is None else cfg.sample_shape,
        out_channels=cfg.out_channels,
        cond_kind=cfg.cond_kind,
    )
