"""Layers shared by jaxmia's diffusers ports: the UNets (:mod:`jaxmia.models.unet2d`,
:mod:`jaxmia.models.unet2d_condition`) and the autoencoders (:mod:`jaxmia.models.vae`).

Each block mirrors the diffusers module of the same name (``models/resnet.py``,
``models/attention_processor.py``, ``models/embeddings.py``, diffusers 0.42) and its PyTorch
state-dict names (``norm1``, ``conv1``, ``time_emb_proj``, ``to_q``, ``to_out_0``, ``conv``), so
:mod:`jaxmia.models.convert` maps their weights mechanically (docs/methods/models.md §4, §5).
NHWC throughout; GroupNorm uses the two-pass variance, as PyTorch does.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

# PyTorch ModuleList attributes of the diffusers UNet / autoencoder trees (``down_blocks.1`` in
# PyTorch is ``down_blocks_1`` in Flax), declared by the classes built from these blocks.
UNET_MODULE_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers", "upsamplers", "to_out")

# diffusers' get_activation table (models/activations.py); torch's GELU is the exact (erf) one.
ACTIVATIONS = {
    "silu": nn.silu,
    "swish": nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "gelu": functools.partial(nn.gelu, approximate=False),
    "relu": nn.relu,
}


def timestep_sinusoid(timesteps, dim: int, *, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0):
    """Sinusoidal timestep embedding, (B,) -> (B, dim), as diffusers' ``get_timestep_embedding``.

    f_i = exp(−ln(max_period)·i / (h − freq_shift)), i = 0..h−1, h = dim // 2; the embedding is
    [sin(t·f), cos(t·f)] concatenated (swapped to [cos, sin] when ``flip_sin_to_cos``), zero-padded
    by one column when ``dim`` is odd (Vaswani et al., arXiv 1706.03762, §3.5; Ho et al. 2020, App. B).
    """
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def group_norm(groups: int, eps: float, name: str) -> nn.GroupNorm:
    # Two-pass variance, as torch.nn.GroupNorm computes it (the fast E[x²]−E[x]² form loses digits).
    return nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False, name=name)


def conv(features: int, kernel: int, name: str, precision, *, stride: int = 1, padding=None) -> nn.Conv:
    pad = kernel // 2 if padding is None else padding
    pads = pad if isinstance(pad, tuple) else ((pad, pad), (pad, pad))
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pads, precision=precision, name=name)


def upsample_nearest(x):
    """Nearest-neighbour ×2 (torch ``F.interpolate(scale_factor=2, mode="nearest")``), NHWC."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x):
    """2×2 average pooling with stride 2 (torch ``nn.AvgPool2d(2, 2)``), NHWC."""
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class TimestepEmbedding(nn.Module):
    """diffusers ``TimestepEmbedding``: ``linear_1`` → act → ``linear_2`` (act: SiLU in ``UNet2DModel``
    and DiT, the UNet's ``act_fn`` in ``UNet2DConditionModel``)."""

    features: int
    act_fn: str = "silu"
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.features, precision=self.precision, name="linear_1")(x)
        return nn.Dense(self.features, precision=self.precision, name="linear_2")(ACTIVATIONS[self.act_fn.lower()](x))


class ResnetBlock2D(nn.Module):
    """diffusers ``ResnetBlock2D`` with pre-norm, a time-embedding projection and a 1×1 shortcut.

    h = conv1(act(norm1(x))); "default": h = norm2(h + proj(act(temb))); "scale_shift" (FiLM):
    h = norm2(h)·(1 + scale) + shift; then h = conv2(act(h)); out = (shortcut(x) + h) / output_scale.
    ``resample`` "down"/"up" pools/repeats both branches after the first activation (the
    ``downsample_type="resnet"`` / ``upsample_type="resnet"`` samplers).
    """

    out_channels: int
    groups: int
    eps: float
    act_fn: str
    time_scale_shift: str = "default"
    output_scale_factor: float = 1.0
    resample: Optional[str] = None
    precision: Any = None

    @nn.compact
    def __call__(self, x, temb):
        act = ACTIVATIONS[self.act_fn.lower()]
        h = act(group_norm(self.groups, self.eps, "norm1")(x))
        if self.resample == "up":
            x, h = upsample_nearest(x), upsample_nearest(h)
        elif self.resample == "down":
            x, h = avg_pool2(x), avg_pool2(h)
        h = conv(self.out_channels, 3, "conv1", self.precision)(h)
        width = 2 * self.out_channels if self.time_scale_shift == "scale_shift" else self.out_channels
        t = nn.Dense(width, precision=self.precision, name="time_emb_proj")(act(temb))[:, None, None, :]
        norm2 = group_norm(self.groups, self.eps, "norm2")
        if self.time_scale_shift == "scale_shift":
            scale, shift = jnp.split(t, 2, axis=-1)
            h = norm2(h) * (1.0 + scale) + shift
        else:
            h = norm2(h + t)
        h = conv(self.out_channels, 3, "conv2", self.precision)(act(h))  # dropout: identity at inference
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut", self.precision)(x)
        return (x + h) / self.output_scale_factor


class SpatialAttention(nn.Module):
    """Self-attention over the H·W positions (diffusers ``Attention`` built with
    ``_from_deprecated_attn_block=True``, residual connection, bias everywhere).

    heads = C // head_dim, with ``head_dim=None`` meaning one head of width C; weights are
    softmax(q·kᵀ/√head_dim); out = (to_out_0(attn) + x) / rescale_output_factor.
    """

    head_dim: Optional[int]
    groups: Optional[int]  # None: no group norm (diffusers' mid block with scale_shift)
    eps: float
    rescale_output_factor: float = 1.0
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        head_dim = self.head_dim or c
        heads = c // head_dim
        inner = heads * head_dim
        h = group_norm(self.groups, self.eps, "group_norm")(x) if self.groups else x
        h = h.reshape(b, hgt * wid, c)

        def project(name):
            return nn.Dense(inner, precision=self.precision, name=name)(h).reshape(b, hgt * wid, heads, head_dim)

        q, k, v = project("to_q"), project("to_k"), project("to_v")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=self.precision) / math.sqrt(head_dim)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=self.precision).reshape(b, hgt * wid, inner)
        out = nn.Dense(c, precision=self.precision, name="to_out_0")(out).reshape(b, hgt, wid, c)
        return (out + x) / self.rescale_output_factor


class Downsample2D(nn.Module):
    """Stride-2 3×3 conv; ``padding=0`` pads one row and column at the bottom/right first (TF style)."""

    out_channels: int
    padding: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        pad = ((0, 1), (0, 1)) if self.padding == 0 else ((self.padding,) * 2,) * 2
        return conv(self.out_channels, 3, "conv", self.precision, stride=2, padding=pad)(x)


class Upsample2D(nn.Module):
    """Nearest ×2 then a 3×3 conv."""

    out_channels: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        return conv(self.out_channels, 3, "conv", self.precision)(upsample_nearest(x))


def torch_default_params(abstract: dict, seed: int = 0) -> dict:
    """Random float32 values for a parameter tree of shapes, drawn on the host like PyTorch.

    PyTorch's default initialisation, which diffusers' models start from: conv and linear weights
    and biases U(±1/√fan_in), norm scales 1 and biases 0, embedding tables N(0, 1). Each leaf has its
    own generator seeded by (seed, parameter path), so adding a layer leaves the other leaves
    unchanged. Used by every jaxmia module that trains from scratch (UNet, autoencoders).
    """
    flat = traverse_util.flatten_dict(abstract)
    out = {}
    for path, leaf in flat.items():
        rng = np.random.default_rng([int(seed), zlib.crc32("/".join(path).encode())])
        module_path, kind = path[:-1], path[-1]
        if kind == "scale" or (kind == "bias" and module_path + ("scale",) in flat):
            value = np.full(leaf.shape, 1.0 if kind == "scale" else 0.0)
        elif kind == "embedding":
            value = rng.standard_normal(leaf.shape)
        else:  # kernel (H,W,I,O or I,O) or the bias of the same layer
            fan_in = math.prod(flat[module_path + ("kernel",)].shape[:-1])
            bound = 1.0 / math.sqrt(fan_in)
            value = rng.uniform(-bound, bound, leaf.shape)
        out[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(out)

