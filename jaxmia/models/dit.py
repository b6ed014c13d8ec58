"""diffusers' ``DiTTransformer2DModel`` (DiT, class-conditional latent transformer) as a Flax linen module.

Structure (Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748, §3.2 and
Fig. 3, the adaLN-Zero block):

1. ``pos_embed``: a p×p stride-p conv (``pos_embed/proj``) turns the (H, W, C) latent into
   (H/p)·(W/p) tokens of width D = heads·head_dim, plus the fixed 2-D sin-cos table
   (:func:`jaxmia.models.attention.sinusoid_2d`; a constant, not a parameter, as in diffusers).
2. ``transformer_blocks_i``: ``norm1`` is AdaLayerNormZero. Its ``emb`` embeds the timestep (a 256-d
   sinusoid, cos first, frequency shift 1, then ``timestep_embedder/linear_{1,2}``) plus the class
   (``class_embedder/embedding_table``, with one extra row for the null class); ``norm1/linear``
   maps SiLU(emb) to six D-vectors (shift, scale, gate for attention and for the MLP).
   x = x + gate_msa·attn1(LN(x)·(1 + scale_msa) + shift_msa);
   x = x + gate_mlp·ff(norm3(x)·(1 + scale_mlp) + shift_mlp).
3. Final layer: shift, scale = ``proj_out_1``(SiLU(emb of block 0)); x = LN(x)·(1 + scale) + shift;
   ``proj_out_2`` to p·p·C_out per token; unpatchify to (H, W, C_out).

With ``out_channels = 2·in_channels`` (learned σ, as DiT-XL/2 ships) the output is [ε, variance]
on the channel axis; :class:`~jaxmia.models.denoiser.Denoiser` keeps the first half
(docs/methods/cdi.md §9).

Null class: ``LabelEmbedding`` holds ``num_embeds_ada_norm + 1`` rows; label
``num_embeds_ada_norm`` (1000 for ImageNet DiT) is the unconditional "null" class used for
classifier-free guidance (:data:`DiTConfig.null_label`).

References: diffusers 0.42 ``models/transformers/dit_transformer_2d.py``, ``attention.py``
(BasicTransformerBlock with ``norm_type="ada_norm_zero"``), ``normalization.py`` (AdaLayerNormZero),
``embeddings.py`` (PatchEmbed, CombinedTimestepLabelEmbeddings, LabelEmbedding).

Deliberate differences from diffusers: NHWC; inference only (no label dropout: diffusers drops labels
only in training mode); attention in float32; ``sample_size`` is an int (square latents), as in diffusers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.attention import (FEED_FORWARD_ACTIVATIONS, Attention, FeedForward, LabelTable, PatchEmbed, layer_norm,
                                     sinusoid_2d)
from jaxmia.models.attention import TRANSFORMER_MODULE_LISTS
from jaxmia.models.blocks import TimestepEmbedding, timestep_sinusoid
from jaxmia.models.registry import ModelSpec, register_model

TIME_PROJ_DIM = 256  # CombinedTimestepLabelEmbeddings: Timesteps(256, flip_sin_to_cos=True, shift=1)


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """The constructor arguments of diffusers' ``DiTTransformer2DModel`` (0.42 defaults), typed and frozen.

    ``num_embeds_ada_norm`` is the number of classes (1000 for ImageNet); ``norm_num_groups``,
    ``dropout`` and ``upcast_attention`` are accepted and have no effect at inference in float32, as
    in diffusers.
    """

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: Optional[int] = None
    num_layers: int = 28
    dropout: float = 0.0
    norm_num_groups: int = 32
    attention_bias: bool = True
    sample_size: int = 32
    patch_size: int = 2
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: Optional[int] = 1000
    upcast_attention: bool = False
    norm_type: str = "ada_norm_zero"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-5

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config") -> "DiTConfig":
        """Builds the config from a diffusers ``config.json`` dictionary.

        Raises:
          ValueError naming ``source`` and the key: an unknown key, a wrong type, an unsupported value.
        """
        return typed.from_class_config(cls, config, "DiTTransformer2DModel", source=source)

    def to_diffusers(self) -> dict:
        return typed.to_class_config(self, "DiTTransformer2DModel")

    def validate(self, *, source: str = "config") -> None:
        def bad(key, value, why):
            raise ValueError(f"{source}: {key}={value!r} {why}")

        if self.norm_type != "ada_norm_zero":
            bad("norm_type", self.norm_type, "is not supported (diffusers' DiT implements 'ada_norm_zero' only)")
        if self.num_embeds_ada_norm is None or self.num_embeds_ada_norm < 1:
            bad("num_embeds_ada_norm", self.num_embeds_ada_norm, "must be the (positive) number of classes")
        if self.activation_fn not in FEED_FORWARD_ACTIVATIONS:
            bad("activation_fn", self.activation_fn, f"is not supported (supported: {', '.join(FEED_FORWARD_ACTIVATIONS)})")
        for key in ("num_attention_heads", "attention_head_dim", "in_channels", "num_layers", "sample_size", "patch_size"):
            if getattr(self, key) < 1:
                bad(key, getattr(self, key), "must be a positive integer")
        if self.out_channels is not None and self.out_channels < 1:
            bad("out_channels", self.out_channels, "must be a positive integer or null")
        if self.sample_size % self.patch_size:
            bad("sample_size", self.sample_size, f"must be a multiple of patch_size={self.patch_size}")
        if self.inner_dim % 4:
            bad("num_attention_heads", self.num_attention_heads,
                f"× attention_head_dim={self.attention_head_dim} = {self.inner_dim} must be divisible by 4 "
                "(the 2-D sin-cos position table)")
        if self.norm_eps <= 0:
            bad("norm_eps", self.norm_eps, "must be > 0")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def num_classes(self) -> int:
        return self.num_embeds_ada_norm

    @property
    def null_label(self) -> int:
        """The label of the unconditional (null) class: the extra last row of the label table."""
        return self.num_embeds_ada_norm

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.sample_size, self.sample_size, self.in_channels)


# ==================================================================================================
# Modules
# ==================================================================================================


class CombinedTimestepLabelEmbeddings(nn.Module):
    """``timestep_embedder(sinusoid_256(t)) + class_embedder(label)``; the table has num_classes + 1 rows."""

    num_classes: int
    features: int
    precision: Any = None

    @nn.compact
    def __call__(self, t_proj, labels):
        t_emb = TimestepEmbedding(self.features, precision=self.precision, name="timestep_embedder")(t_proj)
        table = LabelTable(self.num_classes + 1, self.features, name="class_embedder")
        return t_emb + table(labels)


class AdaLayerNormZero(nn.Module):
    """``norm1``: returns LN(x)·(1 + scale_msa) + shift_msa, the five other modulation vectors and emb."""

    num_classes: int
    precision: Any = None

    @nn.compact
    def __call__(self, x, t_proj, labels):
        width = x.shape[-1]
        emb = CombinedTimestepLabelEmbeddings(self.num_classes, width, self.precision, name="emb")(t_proj, labels)
        mods = nn.Dense(6 * width, precision=self.precision, name="linear")(nn.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mods[:, None, :], 6, axis=-1)
        h = layer_norm(1e-6, "norm", affine=False)(x) * (1 + scale_msa) + shift_msa
        return h, (gate_msa, shift_mlp, scale_mlp, gate_mlp), emb


class AdaLNZeroBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` with ``norm_type="ada_norm_zero"`` and no cross-attention.

    Returns (x, emb): the block's conditioning vector, which DiT's final layer reads from block 0.
    """

    config: DiTConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, t_proj, labels):
        cfg = self.config
        h, (gate_msa, shift_mlp, scale_mlp, gate_mlp), emb = AdaLayerNormZero(
            cfg.num_classes, self.precision, name="norm1")(x, t_proj, labels)
        attn = Attention(cfg.num_attention_heads, cfg.attention_head_dim, cfg.attention_bias, self.precision, name="attn1")
        x = x + gate_msa * attn(h)
        h = layer_norm(cfg.norm_eps, "norm3", affine=cfg.norm_elementwise_affine)(x) * (1 + scale_mlp) + shift_mlp
        return x + gate_mlp * FeedForward(cfg.activation_fn, precision=self.precision, name="ff")(h), emb


class DiTTransformer2DModel(nn.Module):
    """DiT in Flax: ``(sample[B,H,W,C], timesteps[B], class_labels[B]) -> [B,H,W,C_out]``.

    ``class_labels`` are ints in 0..num_classes, where ``num_classes`` (= ``config.null_label``) is the
    null class. H and W must equal ``sample_size`` (the position table is built for that grid).
    """

    config: DiTConfig
    precision: Any = None

    @nn.compact
    def __call__(self, sample, timesteps, class_labels):
        cfg = self.config
        if sample.ndim != 4 or tuple(sample.shape[1:]) != cfg.sample_shape:
            raise ValueError(f"DiTTransformer2DModel expects NHWC input of shape (B, "
                             f"{', '.join(map(str, cfg.sample_shape))}), got {tuple(sample.shape)}")
        if class_labels is None:
            raise ValueError(f"DiTTransformer2DModel is class-conditional: class_labels are required "
                             f"(0..{cfg.num_classes - 1}, or {cfg.null_label} for the null class)")
        batch, p = sample.shape[0], cfg.patch_size
        grid = cfg.sample_size // p
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        labels = jnp.broadcast_to(jnp.asarray(class_labels), (batch,))

        # 1. patchify + fixed position table
        h = PatchEmbed(cfg.inner_dim, p, self.precision, name="pos_embed")(sample)
        h = h + jnp.asarray(sinusoid_2d(cfg.inner_dim, grid, grid))[None]

        # 2. blocks; every block embeds (t, y) with its own weights
        t_proj = timestep_sinusoid(timesteps, TIME_PROJ_DIM, flip_sin_to_cos=True, freq_shift=1)
        conditioning = None
        for i in range(cfg.num_layers):
            h, emb = AdaLNZeroBlock(cfg, self.precision, name=f"transformer_blocks_{i}")(h, t_proj, labels)
            conditioning = emb if conditioning is None else conditioning

        # 3. final adaLN layer (conditioned on block 0's embedding, as diffusers does) and unpatchify
        shift, scale = jnp.split(nn.Dense(2 * cfg.inner_dim, precision=self.precision, name="proj_out_1")(
            nn.silu(conditioning))[:, None, :], 2, axis=-1)
        h = layer_norm(1e-6, "norm_out", affine=False)(h) * (1 + scale) + shift
        h = nn.Dense(p * p * cfg.output_channels, precision=self.precision, name="proj_out_2")(h)
        h = h.reshape(batch, grid, grid, p, p, cfg.output_channels).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(batch, grid * p, grid * p, cfg.output_channels)


def example_inputs(config: DiTConfig, batch: int = 1):
    return (jnp.zeros((batch, *config.sample_shape), jnp.float32), jnp.zeros((batch,), jnp.int32),
            jnp.zeros((batch,), jnp.int32))


def init_params(module: DiTTransformer2DModel, key) -> dict:
    """Random parameters (Flax's default initialisers, not diffusers')."""
    return module.init(key, *example_inputs(module.config))["params"]


@functools.lru_cache(maxsize=32)
def abstract_params(config: DiTConfig) -> dict:
    module = DiTTransformer2DModel(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config)))["params"]


def _apply(module: DiTTransformer2DModel, params, x, t, cond):
    return module.apply({"params": params}, x, t, cond)


@register_model("DiTTransformer2DModel", module_lists=TRANSFORMER_MODULE_LISTS)
def build_dit(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """The registry builder: class-conditional (cond (B,) int labels, the null class = ``num_embeds_ada_norm``)."""
    cfg = DiTConfig.from_diffusers(config, source=source)
    module = DiTTransformer2DModel(cfg)
    return ModelSpec(
        module=module,
        config=cfg,
        abstract_params=abstract_params(cfg),
        apply_fn=functools.partial(_apply, module),
        sample_shape=cfg.sample_shape,
        out_channels=cfg.output_channels,
        cond_kind="class",
    )
