"""The official DiT (facebookresearch/DiT ``models.py``, class ``DiT``) as a Flax linen module.

Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748, §3.2 and Fig. 3
(patchify, adaLN-Zero blocks, the final layer). Parameter names mirror the official state-dict keys
one to one (``x_embedder/proj``, ``t_embedder/mlp_0``, ``t_embedder/mlp_2``,
``y_embedder/embedding_table``, ``pos_embed``, ``blocks_<i>/{attn/qkv, attn/proj, mlp/fc1, mlp/fc2,
adaLN_modulation_1}``, ``final_layer/{linear, adaLN_modulation_1}``), so the released
``DiT-XL-2-*.pt`` converts by the mechanical rules of :mod:`jaxmia.models.convert`
(:mod:`jaxmia.models.official.dit`).

Why not diffusers' ``DiTTransformer2DModel`` (:mod:`jaxmia.models.dit`): mapping the official
weights onto it is not exact. (1) diffusers embeds the timestep with frequencies
10000^(−i/(128 − 1)) (``downscale_freq_shift=1``), the official code with 10000^(−i/128);
(2) diffusers recomputes the sin-cos position table, the official model stores it in the state
dict (``pos_embed``; a checkpoint may hold any table); (3) diffusers copies the timestep and label
embedders into every block, so its parameter count is not the published one (675.13 M for
DiT-XL/2-256).

Forward (NHWC here, NCHW upstream): tokens = patch-embed(x) + pos_embed; c = t_emb + y_emb, with
t_emb = MLP([cos, sin](t·f)), f_i = 10000^(−i/128), i < 128 (256 frequencies, whatever the width);
each block: shift/scale/gate ×2 = Linear(SiLU(c)) in the order (shift_msa, scale_msa, gate_msa,
shift_mlp, scale_mlp, gate_mlp); x += gate_msa·attn(LN(x)·(1 + scale_msa) + shift_msa);
x += gate_mlp·mlp(LN(x)·(1 + scale_mlp) + shift_mlp); LayerNorms non-affine with eps 1e-6, the MLP's
GELU the tanh form, attention a fused ``qkv`` split as (3, heads, head_dim) with scale head_dim^−½.
Final layer: shift, scale = Linear(SiLU(c)); Linear(LN(x)·(1 + scale) + shift) → p·p·C_out per
token, unpatchified as (p_row, p_col, channel). With ``learn_sigma`` C_out = 2C: [ε, v], v the
variance interpolation, which :class:`~jaxmia.models.denoiser.Denoiser` drops.

Labels: the table has ``num_classes + 1`` rows when ``class_dropout_prob > 0`` (every released
model): row ``num_classes`` is the null class of classifier-free guidance. Inference only: no label
dropout (the official model drops labels only in training mode).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.attention import LabelTable, PatchEmbed, dot_product_attention, layer_norm, sinusoid_2d
from jaxmia.models.conditioning import register_condition_probe
from jaxmia.models.blocks import timestep_sinusoid
from jaxmia.models.registry import ModelSpec, register_model

CLASS_NAME = "DiT"
FREQUENCY_EMBEDDING_SIZE = 256  # TimestepEmbedder's fixed sinusoid width
# num_heads of the official model sizes (models.py: DiT-S/B/L/XL), by hidden size.
OFFICIAL_NUM_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}


@dataclasses.dataclass(frozen=True)
class DiTOfficialConfig:
    """The official ``DiT(...)`` constructor arguments (defaults: DiT-XL/2 at 256 px)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config") -> "DiTOfficialConfig":
        """From a ``config.json`` dict (``_class_name`` ``DiT``); bad keys and values refused by name."""
        return typed.from_class_config(cls, config, CLASS_NAME, source=source)

    def to_diffusers(self) -> dict:
        return typed.to_class_config(self, CLASS_NAME)

    def validate(self, *, source: str = "config") -> None:
        def bad(key, why):
            raise ValueError(f"{source}: {key}={getattr(self, key)!r} {why}")

        for key in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes"):
            if getattr(self, key) < 1:
                bad(key, "must be a positive integer")
        if self.input_size % self.patch_size:
            bad("input_size", f"must be a multiple of patch_size={self.patch_size}")
        if self.hidden_size % self.num_heads:
            bad("num_heads", f"must divide hidden_size={self.hidden_size}")
        if self.hidden_size % 4:
            bad("hidden_size", "must be divisible by 4 (the 2-D sin-cos position table)")
        if not self.mlp_ratio > 0 or int(self.hidden_size * self.mlp_ratio) < 1:
            bad("mlp_ratio", "must be positive")
        if not 0 <= self.class_dropout_prob < 1:
            bad("class_dropout_prob", "must be in [0, 1)")

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def label_rows(self) -> int:
        """Rows of the label table: one extra (the null class) when labels were dropped in training."""
        return self.num_classes + (1 if self.class_dropout_prob > 0 else 0)

    @property
    def null_label(self) -> Optional[int]:
        return self.num_classes if self.class_dropout_prob > 0 else None

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, self.in_channels)


# ==================================================================================================
# Modules
# ==================================================================================================


class _Sequential2(nn.Module):
    """``nn.Sequential(Linear, SiLU, Linear)``: keys ``<name>.0`` and ``<name>.2``."""

    hidden: int
    out: int
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        h = nn.silu(nn.Dense(self.hidden, precision=self.precision, name="mlp_0")(x))
        return nn.Dense(self.out, precision=self.precision, name="mlp_2")(h)


class FusedAttention(nn.Module):
    """timm ``Attention``: ``qkv`` → (3, heads, head_dim) → softmax(q·kᵀ/√d)·v → ``proj``.

    Also U-ViT's ``Attention`` (same layout; its ``qkv`` has no bias)."""

    heads: int
    qkv_bias: bool = True
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        b, length, width = x.shape
        qkv = nn.Dense(3 * width, use_bias=self.qkv_bias, precision=self.precision, name="qkv")(x)
        qkv = qkv.reshape(b, length, 3, self.heads, width // self.heads)
        out = dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], precision=self.precision)
        return nn.Dense(width, precision=self.precision, name="proj")(out.reshape(b, length, width))


class Mlp(nn.Module):
    """timm ``Mlp``: ``fc1`` → GELU (exact, or the tanh form) → ``fc2``."""

    hidden: int
    approximate: bool
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.hidden, precision=self.precision, name="fc1")(x)
        h = jax.nn.gelu(h, approximate=self.approximate)
        return nn.Dense(x.shape[-1], precision=self.precision, name="fc2")(h)


def _modulation(c, chunks: int, precision):
    """``adaLN_modulation = Sequential(SiLU, Linear)`` (key ``adaLN_modulation.1``), split in ``chunks``.
    Called inside a block's ``__call__``, so the layer is the block's own."""
    out = nn.Dense(chunks * c.shape[-1], precision=precision, name="adaLN_modulation_1")(nn.silu(c))
    return jnp.split(out[:, None, :], chunks, axis=-1)


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    config: DiTOfficialConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, c):
        cfg = self.config
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = _modulation(c, 6, self.precision)
        h = _modulate(layer_norm(1e-6, "norm1", affine=False)(x), shift_msa, scale_msa)
        x = x + gate_msa * FusedAttention(cfg.num_heads, True, self.precision, name="attn")(h)
        h = _modulate(layer_norm(1e-6, "norm2", affine=False)(x), shift_mlp, scale_mlp)
        return x + gate_mlp * Mlp(cfg.mlp_hidden, True, self.precision, name="mlp")(h)


class _FinalLayer(nn.Module):
    config: DiTOfficialConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, c):
        cfg = self.config
        shift, scale = _modulation(c, 2, self.precision)
        x = _modulate(layer_norm(1e-6, "norm_final", affine=False)(x), shift, scale)
        return nn.Dense(cfg.patch_size**2 * cfg.out_channels, precision=self.precision, name="linear")(x)


class DiT(nn.Module):
    """The official DiT: ``(x[B,H,W,C], t[B], y[B]) -> [B,H,W,C_out]`` (NHWC).

    ``t`` is used as a float (the official sampler passes integer steps 0..999); ``y`` are ints in
    0..num_classes, ``num_classes`` being the null class when the table has that row.
    """

    config: DiTOfficialConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, t, y):
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != cfg.sample_shape:
            raise ValueError(f"DiT expects NHWC input of shape (B, {', '.join(map(str, cfg.sample_shape))}), "
                             f"got {tuple(x.shape)}")
        if y is None:
            raise ValueError(f"DiT is class-conditional: labels are required (0..{cfg.label_rows - 1})")
        batch, p, g = x.shape[0], cfg.patch_size, cfg.grid
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        y = jnp.broadcast_to(jnp.asarray(y), (batch,))

        pos_embed = self.param("pos_embed", lambda _key, shape: jnp.asarray(sinusoid_2d(cfg.hidden_size, g, g))[None],
                               (1, g * g, cfg.hidden_size))
        h = PatchEmbed(cfg.hidden_size, p, self.precision, name="x_embedder")(x) + pos_embed
        t_freq = timestep_sinusoid(t, FREQUENCY_EMBEDDING_SIZE, flip_sin_to_cos=True, freq_shift=0)
        c = _Sequential2(cfg.hidden_size, cfg.hidden_size, self.precision, name="t_embedder")(t_freq)
        c = c + LabelTable(cfg.label_rows, cfg.hidden_size, name="y_embedder")(y)
        for i in range(cfg.depth):
            h = DiTBlock(cfg, self.precision, name=f"blocks_{i}")(h, c)
        h = _FinalLayer(cfg, self.precision, name="final_layer")(h, c)
        h = h.reshape(batch, g, g, p, p, cfg.out_channels).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(batch, g * p, g * p, cfg.out_channels)


def forward_with_cfg(apply_fn, params, x, t, y, cfg_scale, *, guided_channels: int = 3):
    """The official sampler's guided call (``DiT.forward_with_cfg``), for a batch laid out as
    [conditional half, unconditional half] (labels ``y`` = [classes..., null...]).

    Only the first half of ``x`` is used (duplicated); ε̂ = ε_u + s·(ε_c − ε_u) on the first
    ``guided_channels`` output channels (3 upstream, a reproducibility choice its authors kept), the
    other channels passed through; both halves of the result are the guided output. Ho & Salimans,
    "Classifier-Free Diffusion Guidance", arXiv 2207.12598, Eq. (6).

    Note: CDI's attacks evaluate the conditional ε̂ only; this is for sampling and for parity.
    """
    half = x[: x.shape[0] // 2]
    out = apply_fn(params, jnp.concatenate([half, half], axis=0), t, y)
    eps, rest = out[..., :guided_channels], out[..., guided_channels:]
    cond, uncond = jnp.split(eps, 2, axis=0)
    guided = uncond + cfg_scale * (cond - uncond)
    return jnp.concatenate([jnp.concatenate([guided, guided], axis=0), rest], axis=-1)


# ==================================================================================================
# Registration
# ==================================================================================================


def example_inputs(config: DiTOfficialConfig, batch: int = 1):
    return (jnp.zeros((batch, *config.sample_shape), jnp.float32), jnp.zeros((batch,), jnp.float32),
            jnp.zeros((batch,), jnp.int32))


@functools.lru_cache(maxsize=32)
def abstract_params(config: DiTOfficialConfig) -> dict:
    """The parameter tree as shapes (``jax.eval_shape``: nothing is computed)."""
    module = DiT(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config)))["params"]


def _apply(module: DiT, params, x, t, cond):
    return module.apply({"params": params}, x, t, cond)


@register_model(CLASS_NAME, module_lists=("blocks", "adaLN_modulation", "mlp"))
def build_dit_official(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """The registry builder: class-conditional, cond (B,) int labels."""
    cfg = DiTOfficialConfig.from_diffusers(config, source=source)
    module = DiT(cfg)
    return ModelSpec(module=module, config=cfg, abstract_params=abstract_params(cfg),
                     apply_fn=functools.partial(_apply, module), sample_shape=cfg.sample_shape,
                     out_channels=cfg.out_channels, cond_kind="class")


@register_condition_probe("dit_official_label_table")
def _label_table_probe(shapes: dict) -> dict:
    """The official DiT's ``y_embedder.embedding_table``: num_classes + 1 rows, the last one the null
    class (every released DiT trained with label dropout; a table without the null row would need
    ``spec=`` or a family)."""
    rows = {shape[0] for path, shape in shapes.items() if path[-3:] == ("y_embedder", "embedding_table", "embedding")}
    if not rows:
        return {}
    n = rows.pop()
    return {"num_labels": n, "null_label": n - 1}
