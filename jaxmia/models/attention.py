"""Transformer pieces shared by the cross-attention UNet, DiT and the CLIP text encoder.

diffusers' ``Attention`` (multi-head, optional context for cross-attention), ``FeedForward`` with
its GELU / GEGLU input projections, and the layer norms, as Flax linen modules whose parameter names
mirror the PyTorch state-dict names (``to_q``, ``to_k``, ``to_v``, ``to_out_0``; ``ff/net_0/proj``,
``ff/net_2``), so :func:`jaxmia.models.convert.torch_to_flax` converts them mechanically.

References:
  Vaswani et al., "Attention Is All You Need", arXiv 1706.03762, §3.2 (scaled dot-product attention);
  Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202 (GEGLU); diffusers 0.42
  ``models/attention.py`` / ``attention_processor.py`` / ``activations.py`` (the reference code).

Deliberate differences from diffusers: inference only (dropout is the identity); attention is
always computed in float32 (diffusers' ``upcast_attention`` only matters in half precision).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# diffusers' FeedForward activation names (models/attention.py). GELU is torch's exact erf form;
# "-approximate" is the tanh form. "geglu" gates half of a doubled projection.
FEED_FORWARD_ACTIVATIONS = ("gelu", "gelu-approximate", "geglu")
# PyTorch ModuleList attributes of diffusers' transformer blocks (``transformer_blocks.0``, ``ff.net.0``,
# ``attn1.to_out.0``), declared by the classes that use them (jaxmia.models.registry).
TRANSFORMER_MODULE_LISTS = ("transformer_blocks", "net", "to_out")


def layer_norm(eps: float, name: str, *, affine: bool = True) -> nn.LayerNorm:
    """torch ``nn.LayerNorm(dim, eps, elementwise_affine=affine)``; two-pass variance as torch does."""
    return nn.LayerNorm(epsilon=eps, use_bias=affine, use_scale=affine, use_fast_variance=False, name=name)


def dot_product_attention(q, k, v, *, mask=None, precision=None):
    """softmax(q·kᵀ/√d)·v for (B, Lq, H, d) / (B, Lk, H, d) inputs; returns (B, Lq, H, d).

    ``mask`` (bool, True = attend) broadcasts against the (B, H, Lq, Lk) logits; masked logits take
    the most negative float, as transformers does, so a fully masked row stays finite.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)


class Attention(nn.Module):
    """diffusers ``Attention`` without residual: to_out_0(MHA(to_q(x), to_k(c), to_v(c))), c = context or x.

    Attributes:
      heads, head_dim: the inner width is heads·head_dim; the output width is x's width.
      qkv_bias: bias on to_q / to_k / to_v (diffusers' ``bias``; False in SD's UNet, True in DiT).
    """

    heads: int
    head_dim: int
    qkv_bias: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, x, context=None):
        context = x if context is None else context
        b, lq, width = x.shape
        inner = self.heads * self.head_dim

        def project(name, source):
            out = nn.Dense(inner, use_bias=self.qkv_bias, precision=self.precision, name=name)(source)
            return out.reshape(b, source.shape[1], self.heads, self.head_dim)

        q, k, v = project("to_q", x), project("to_k", context), project("to_v", context)
        out = dot_product_attention(q, k, v, precision=self.precision).reshape(b, lq, inner)
        return nn.Dense(width, precision=self.precision, name="to_out_0")(out)


class _Projection(nn.Module):
    """The activation module of ``FeedForward.net[0]``: a linear ``proj`` then GELU, or GEGLU."""

    inner_dim: int
    activation: str
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        width = 2 * self.inner_dim if self.activation == "geglu" else self.inner_dim
        h = nn.Dense(width, precision=self.precision, name="proj")(x)
        if self.activation == "geglu":
            h, gate = jnp.split(h, 2, axis=-1)
            return h * jax.nn.gelu(gate, approximate=False)
        return jax.nn.gelu(h, approximate=self.activation == "gelu-approximate")


class FeedForward(nn.Module):
    """diffusers ``FeedForward``: ``net_0`` (projection + activation, width mult·dim), ``net_2`` back to dim."""

    activation: str = "geglu"
    mult: int = 4
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        if self.activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(f"feed-forward activation {self.activation!r} is not supported "
                             f"(supported: {', '.join(FEED_FORWARD_ACTIVATIONS)})")
        width = x.shape[-1]
        h = _Projection(width * self.mult, self.activation, self.precision, name="net_0")(x)
        return nn.Dense(width, precision=self.precision, name="net_2")(h)  # net_1 is dropout


class BasicTransformerBlock(nn.Module):
    """diffusers ``BasicTransformerBlock`` with ``norm_type="layer_norm"`` (the SD UNet's block).

    x = x + attn1(norm1(x)); x = x + attn2(norm2(x), context) (when ``cross_attention``);
    x = x + ff(norm3(x)). LayerNorm eps ``norm_eps``, with affine parameters.
    """

    heads: int
    head_dim: int
    cross_attention: bool = True
    activation: str = "geglu"
    qkv_bias: bool = False
    norm_eps: float = 1e-5
    precision: Any = None

    @nn.compact
    def __call__(self, x, context=None):
        attention = functools.partial(Attention, self.heads, self.head_dim, self.qkv_bias, self.precision)
        x = x + attention(name="attn1")(layer_norm(self.norm_eps, "norm1")(x))
        if self.cross_attention:
            if context is None:
                raise ValueError("this transformer block cross-attends: a context (B, L, D) is required")
            x = x + attention(name="attn2")(layer_norm(self.norm_eps, "norm2")(x), context)
        return x + FeedForward(self.activation, precision=self.precision, name="ff")(layer_norm(self.norm_eps, "norm3")(x))


def sinusoid_2d(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """The fixed 2-D sin-cos position table (grid_h·grid_w, embed_dim), row-major over (row, column).

    MAE / DiT layout (diffusers ``get_2d_sincos_pos_embed`` with base_size = grid size and
    interpolation scale 1): the first half of the channels encodes the column, the second half the
    row, each as [sin(p·ω), cos(p·ω)] with ω_i = 10000^(−2i/(embed_dim/2)). Computed in float64 as
    diffusers does, then cast to float32. References: Peebles & Xie, "Scalable Diffusion Models with
    Transformers", arXiv 2212.09748, §3.2 (patchify); He et al., arXiv 2111.06377 (the table).
    """
    if embed_dim % 4:
        raise ValueError(f"a 2-D sin-cos position table needs embed_dim divisible by 4, got {embed_dim}")

    def one_axis(dim, positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angles = np.outer(positions.astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    # diffusers scales positions by base_size / grid_size, which is 1 for DiT's own grid size.
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    table = np.concatenate([one_axis(embed_dim // 2, cols.ravel()), one_axis(embed_dim // 2, rows.ravel())], axis=1)
    return table.astype(np.float32)


class PatchEmbed(nn.Module):
    """timm's / diffusers' ``PatchEmbed``: a p×p stride-p conv ``proj``; tokens row-major over the grid
    (torch's ``flatten(2)``). Shared by diffusers' DiT, the official DiT and U-ViT."""

    features: int
    patch: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        p = self.patch
        h = nn.Conv(self.features, (p, p), strides=(p, p), padding="VALID", precision=self.precision, name="proj")(x)
        return h.reshape(h.shape[0], -1, self.features)


class LabelTable(nn.Module):
    """A class-label embedding table named ``embedding_table`` (DiT's ``LabelEmbedder``)."""

    rows: int
    features: int

    @nn.compact
    def __call__(self, labels):
        return nn.Embed(self.rows, self.features, name="embedding_table")(labels)
