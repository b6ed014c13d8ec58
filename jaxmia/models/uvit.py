"""U-ViT (baofff/U-ViT ``libs/uvit.py`` and ``libs/uvit_t2i.py``, class ``UViT``) as Flax linen modules.

Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", arXiv 2209.12152, §3 and
Fig. 1: every input is a token (time, condition, patches), and transformer blocks of the shallow
and deep halves are joined by long skip connections.

Two registered classes, one module:

* ``UViT`` (``libs/uvit.py``): class-conditional (``num_classes > 0``: token order **[label, time,
  patches]**, the ImageNet models with 1001 rows, row 1000 the null class) or unconditional
  (``num_classes = -1``: [time, patches]); cond (B,) int labels.
* ``UViTT2I`` (``libs/uvit_t2i.py``): text-conditional, token order **[time, context tokens,
  patches]**, the (L = ``num_clip_token``, D = ``clip_dim``) CLIP context through one Linear;
  cond (B, L, D) float embeddings.

Parameter names mirror the official state-dict keys one to one: ``patch_embed/proj``,
``time_embed_0``/``time_embed_2`` (only with ``mlp_time_embed``), ``label_emb`` or
``context_embed``, ``pos_embed`` (1, extras + patches, D), ``in_blocks_<i>``, ``mid_block``,
``out_blocks_<i>`` (each ``norm1``, ``attn/qkv``, ``attn/proj``, ``norm2``, ``mlp/fc1``, ``mlp/fc2``;
out blocks also ``skip_linear``), ``norm``, ``decoder_pred``, ``final_layer`` (the optional 3×3
conv), so official files convert by the mechanical rules of :mod:`jaxmia.models.convert`
(:mod:`jaxmia.models.official.uvit`).

Forward (NHWC here, NCHW upstream): the time token is the sinusoid [cos, sin](t·f) of width D,
f_i = 10000^(−i/(D/2)) (then an MLP Linear-SiLU-Linear with ``mlp_time_embed``); tokens +
``pos_embed``; ``depth // 2`` in-blocks, whose outputs are pushed on a stack; the mid block; ``depth //
2`` out-blocks, each first joining the popped (last-in-first-out) skip as ``skip_linear([x, skip])``;
blocks are pre-norm, ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, LayerNorm eps 1e-5 (affine),
exact GELU, fused ``qkv`` split as (3, heads, head_dim), scale head_dim^−½; then ``norm``,
``decoder_pred`` to p·p·C per token, the first ``extras`` tokens dropped, unpatchify as (p_row,
p_col, channel) and the optional 3×3 ``final_layer`` conv.

Timesteps: the network sees ``t·timestep_scale``. The discrete-time models (``*_huge``, mscoco) were
trained on integer n ∈ 1..1000 with n = 0 clean: scale 1. The continuous-time ones (``*_large``,
pixel models) were fed t_c·999 for t_c ∈ [0, 1]; jaxmia indexes them by n = 1000·t_c, so scale
0.999 (:mod:`jaxmia.models.official.uvit` writes the matching schedule).

Not ported: ``qk_scale`` (upstream's default attention path, ``scaled_dot_product_attention``,
ignores it; every config leaves it None); dropout (inference only).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.attention import PatchEmbed, layer_norm
from jaxmia.models.conditioning import register_condition_probe
from jaxmia.models.dit_official import FusedAttention, Mlp
from jaxmia.models.blocks import timestep_sinusoid
from jaxmia.models.registry import ModelSpec, register_model

CLASS_NAME = "UViT"
T2I_CLASS_NAME = "UViTT2I"
# num_heads of the official configs (configs/*.py), by embed_dim.
OFFICIAL_NUM_HEADS = {512: 8, 768: 12, 1024: 16, 1152: 16}
# PyTorch ModuleList attributes of the official U-ViT (``in_blocks.0``, ``out_blocks.0``, ``time_embed.0``).
UVIT_MODULE_LISTS = ("in_blocks", "out_blocks", "time_embed")


@dataclasses.dataclass(frozen=True)
class _Common:
    """Fields shared by both forms (the official constructor arguments; defaults: U-ViT-H/2)."""

    img_size: int = 32
    patch_size: int = 2
    in_chans: int = 4
    embed_dim: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    conv: bool = False
    skip: bool = True
    timestep_scale: float = 1.0  # jaxmia's: the network is fed t * timestep_scale (see the module docstring)

    class_name = ""

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config"):
        """From a ``config.json`` dict; unknown keys, wrong types and bad values refused by name."""
        return typed.from_class_config(cls, config, cls.class_name, source=source)

    def to_diffusers(self) -> dict:
        return typed.to_class_config(self, self.class_name)

    def validate(self, *, source: str = "config") -> None:
        def bad(key, why):
            raise ValueError(f"{source}: {key}={getattr(self, key)!r} {why}")

        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            if getattr(self, key) < 1:
                bad(key, "must be a positive integer")
        if self.depth < 2:
            bad("depth", "must be >= 2 (depth // 2 in-blocks and out-blocks around the mid block)")
        if self.img_size % self.patch_size:
            bad("img_size", f"must be a multiple of patch_size={self.patch_size}")
        if self.embed_dim % self.num_heads:
            bad("num_heads", f"must divide embed_dim={self.embed_dim}")
        if not self.mlp_ratio > 0 or int(self.embed_dim * self.mlp_ratio) < 1:
            bad("mlp_ratio", "must be positive")
        if not self.timestep_scale > 0:
            bad("timestep_scale", "must be positive")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.img_size, self.img_size, self.in_chans)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class UViTConfig(_Common):
    """``libs/uvit.py``'s ``UViT``: ``num_classes > 0`` adds a label token (−1: unconditional)."""

    num_classes: int = 1001

    class_name = CLASS_NAME

    def validate(self, *, source: str = "config") -> None:
        super().validate(source=source)
        if self.num_classes == 0 or self.num_classes < -1:
            raise ValueError(f"{source}: num_classes={self.num_classes!r} must be positive (class-conditional) "
                             "or -1 (unconditional)")

    @property
    def extras(self) -> int:
        return 2 if self.num_classes > 0 else 1

    @property
    def cond_kind(self) -> str:
        return "class" if self.num_classes > 0 else "none"


@dataclasses.dataclass(frozen=True)
class UViTT2IConfig(_Common):
    """``libs/uvit_t2i.py``'s ``UViT``: ``num_clip_token`` context tokens of width ``clip_dim``."""

    conv: bool = True
    clip_dim: int = 768
    num_clip_token: int = 77

    class_name = T2I_CLASS_NAME

    def validate(self, *, source: str = "config") -> None:
        super().validate(source=source)
        for key in ("clip_dim", "num_clip_token"):
            if getattr(self, key) < 1:
                raise ValueError(f"{source}: {key}={getattr(self, key)!r} must be a positive integer")

    @property
    def extras(self) -> int:
        return 1 + self.num_clip_token

    @property
    def cond_kind(self) -> str:
        return "text"


# ==================================================================================================
# Modules
# ==================================================================================================


class Block(nn.Module):
    """U-ViT's pre-norm transformer block; with ``skip``, ``skip_linear([x, skip])`` first."""

    config: Any
    skip: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, x, skip=None):
        cfg = self.config
        if self.skip:
            x = nn.Dense(cfg.embed_dim, precision=self.precision, name="skip_linear")(jnp.concatenate([x, skip], -1))
        x = x + FusedAttention(cfg.num_heads, cfg.qkv_bias, self.precision, name="attn")(layer_norm(1e-5, "norm1")(x))
        return x + Mlp(cfg.mlp_hidden, False, self.precision, name="mlp")(layer_norm(1e-5, "norm2")(x))


class UViT(nn.Module):
    """U-ViT, both forms: ``(x[B,H,W,C], t[B], cond) -> ε̂[B,H,W,C]`` (NHWC).

    ``cond``: (B,) int labels (``UViTConfig`` with classes), (B, L, D) context (``UViTT2IConfig``),
    or None (unconditional).
    """

    config: Any  # UViTConfig | UViTT2IConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, t, cond=None):
        cfg = self.config
        text = isinstance(cfg, UViTT2IConfig)
        if x.ndim != 4 or tuple(x.shape[1:]) != cfg.sample_shape:
            shape = ", ".join(map(str, cfg.sample_shape))
            raise ValueError(f"{cfg.class_name} expects NHWC input of shape (B, {shape}), got {tuple(x.shape)}")
        batch, p, d = x.shape[0], cfg.patch_size, cfg.embed_dim
        g = cfg.img_size // p
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,)) * cfg.timestep_scale

        h = PatchEmbed(d, p, self.precision, name="patch_embed")(x)
        time = timestep_sinusoid(t, d, flip_sin_to_cos=True, freq_shift=0)
        if cfg.mlp_time_embed:
            time = nn.silu(nn.Dense(4 * d, precision=self.precision, name="time_embed_0")(time))
            time = nn.Dense(d, precision=self.precision, name="time_embed_2")(time)
        tokens = [time[:, None, :]]
        if text:
            if cond is None or cond.ndim != 3 or tuple(cond.shape[1:]) != (cfg.num_clip_token, cfg.clip_dim):
                shape = None if cond is None else tuple(cond.shape)
                raise ValueError(f"{cfg.class_name} takes a context of shape (B, {cfg.num_clip_token}, {cfg.clip_dim}) "
                                 f"(num_clip_token, clip_dim), got {shape}")
            tokens.append(nn.Dense(d, precision=self.precision, name="context_embed")(cond))
        elif cfg.num_classes > 0:
            if cond is None:
                raise ValueError(f"{cfg.class_name} is class-conditional: labels are required "
                                 f"(0..{cfg.num_classes - 1})")
            labels = jnp.broadcast_to(jnp.asarray(cond), (batch,))
            tokens.insert(0, nn.Embed(cfg.num_classes, d, name="label_emb")(labels)[:, None, :])
        elif cond is not None:
            raise ValueError(f"{cfg.class_name} with num_classes=-1 is unconditional: it takes no condition")
        pos_embed = self.param("pos_embed", nn.initializers.normal(0.02), (1, cfg.extras + g * g, d))
        h = jnp.concatenate(tokens + [h], axis=1) + pos_embed

        skips = []
        for i in range(cfg.depth // 2):
            h = Block(cfg, False, self.precision, name=f"in_blocks_{i}")(h)
            skips.append(h)
        h = Block(cfg, False, self.precision, name="mid_block")(h)
        for i in range(cfg.depth // 2):
            h = Block(cfg, cfg.skip, self.precision, name=f"out_blocks_{i}")(h, skips.pop())

        h = layer_norm(1e-5, "norm")(h)
        h = nn.Dense(p * p * cfg.in_chans, precision=self.precision, name="decoder_pred")(h)[:, cfg.extras:]
        h = h.reshape(batch, g, g, p, p, cfg.in_chans).transpose(0, 1, 3, 2, 4, 5)
        h = h.reshape(batch, g * p, g * p, cfg.in_chans)
        if cfg.conv:
            h = nn.Conv(cfg.in_chans, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision, name="final_layer")(h)
        return h


# ==================================================================================================
# Registration
# ==================================================================================================


def example_inputs(config, batch: int = 1):
    x = jnp.zeros((batch, *config.sample_shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.float32)
    if isinstance(config, UViTT2IConfig):
        return x, t, jnp.zeros((batch, config.num_clip_token, config.clip_dim), jnp.float32)
    return x, t, (jnp.zeros((batch,), jnp.int32) if config.num_classes > 0 else None)


@functools.lru_cache(maxsize=32)
def abstract_params(config) -> dict:
    """The parameter tree as shapes (``jax.eval_shape``: nothing is computed)."""
    module = UViT(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config)))["params"]


def _apply(module: UViT, params, x, t, cond):
    return module.apply({"params": params}, x, t, cond)


def _spec(cfg) -> ModelSpec:
    module = UViT(cfg)
    return ModelSpec(module=module, config=cfg, abstract_params=abstract_params(cfg),
                     apply_fn=functools.partial(_apply, module), sample_shape=cfg.sample_shape,
                     out_channels=cfg.in_chans, cond_kind=cfg.cond_kind)


@register_model(CLASS_NAME, module_lists=UVIT_MODULE_LISTS)
def build_uvit(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """Class-conditional (cond (B,) int labels) or, with ``num_classes = -1``, unconditional."""
    return _spec(UViTConfig.from_diffusers(config, source=source))


@register_model(T2I_CLASS_NAME, module_lists=UVIT_MODULE_LISTS)
def build_uvit_t2i(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """Text-conditional: cond (B, num_clip_token, clip_dim) float embeddings."""
    return _spec(UViTT2IConfig.from_diffusers(config, source=source))


@register_condition_probe("uvit")
def _uvit_probe(shapes: dict) -> dict:
    """U-ViT's ``label_emb`` (its rows are the labels; the ImageNet models' last row, 1000, is the
    null class, but a table without one looks the same, so the null class comes from the family) and
    ``context_embed`` (reads D = clip_dim)."""
    out = {}
    table = shapes.get(("label_emb", "embedding"))
    if table is not None:
        out["num_labels"] = table[0]
    context = shapes.get(("context_embed", "kernel"))
    if context is not None:
        out["context_dim"] = context[0]
    return out
