"""A cross-attention UNet conditioned on a class label through one learned token: CompVis LDM's
class-conditional ImageNet model (``cin256-v2``) in jaxmia's terms.

CompVis' ``ClassEmbedder`` turns a label y into the row ``embedding[y]`` of a learned table and
hands it to the UNet as a one-token cross-attention context (B, 1, D). The UNet is the CompVis
``openaimodel.UNetModel`` with spatial transformers, which maps exactly onto diffusers'
``UNet2DConditionModel`` (:mod:`jaxmia.models.official.ldm` proves the mapping on the official
fixture). This module joins the two, so the denoiser takes integer labels like every other
class-conditional model jaxmia audits (``cond_kind="class"``):

    eps(x, t, y) = UNet2DConditionModel(x, t, context=class_embedder[y][:, None, :])

Parameters: ``class_embedder/embedding`` (num_classes, D) and ``unet/...`` (diffusers' names).
``config.json``::

    {"_class_name": "ClassTokenUNet", "num_classes": 1001, "null_class": 1000,
     "unet": {<a UNet2DConditionModel config with cross-attention>}}

``null_class`` is the label of the unconditional input (classifier-free guidance; cin256-v2 uses
1000 of 1001 rows) or null when the table has no such row. It is recorded for the reader and
checked against the table size; the attacks take the null label from the model family
(``configs/families/ldm.toml``, :func:`jaxmia.models.conditioning.spec_from_family`).

References:
  Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752,
  §3.3 (conditioning through cross-attention, τ_θ a learned class embedding for ImageNet);
  CompVis latent-diffusion ``ldm/modules/encoders/modules.py::ClassEmbedder``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmia import config as typed
from jaxmia.models.conditioning import register_condition_probe
from jaxmia.models.attention import TRANSFORMER_MODULE_LISTS
from jaxmia.models.blocks import UNET_MODULE_LISTS, torch_default_params
from jaxmia.models.registry import ModelSpec, register_model
from jaxmia.models.unet2d_condition import UNet2DConditionConfig, UNet2DConditionModel

CLASS_NAME = "ClassTokenUNet"


@dataclasses.dataclass(frozen=True)
class ClassTokenUNetConfig:
    """A class table of ``num_classes`` rows of width ``unet.context_dim`` feeding a cross-attention UNet."""

    num_classes: int
    unet: UNet2DConditionConfig
    null_class: Optional[int] = None

    class_name = CLASS_NAME

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], *, source: str = "config") -> "ClassTokenUNetConfig":
        """Parses ``config.json``; unknown keys, wrong types and inconsistent values are refused by name."""
        values = dict(config) if isinstance(config, Mapping) else config
        if isinstance(values, dict) and isinstance(values.get("unet"), Mapping):  # the nested network config
            values["unet"] = UNet2DConditionConfig.from_diffusers(
                {"_class_name": "UNet2DConditionModel", **values["unet"]}, source=f"{source} [unet]")
        return typed.from_class_config(cls, values, CLASS_NAME, source=source)

    def to_diffusers(self) -> dict:
        unet = self.unet.to_diffusers()
        unet.pop("_class_name")
        return {"_class_name": CLASS_NAME, "num_classes": self.num_classes, "null_class": self.null_class,
                "unet": unet}

    def validate(self, *, source: str = "config") -> None:
        if self.num_classes < 1:
            raise ValueError(f"{source}: num_classes={self.num_classes} must be positive")
        if self.null_class is not None and not 0 <= self.null_class < self.num_classes:
            raise ValueError(f"{source}: null_class={self.null_class} is not a row of the {self.num_classes}-row "
                             f"class table (0..{self.num_classes - 1})")
        if not self.unet.has_cross_attention:
            raise ValueError(f"{source}: the unet has no cross-attention blocks, so a class token cannot reach it")
        if self.unet.num_class_embeds is not None:
            raise ValueError(f"{source}: unet.num_class_embeds={self.unet.num_class_embeds} (a second class "
                             "embedding) is not supported here; the label enters as the context token")

    @property
    def context_dim(self) -> int:
        return self.unet.context_dim


class ClassTokenUNet(nn.Module):
    """``(sample[B,H,W,C], timesteps[B], labels[B] int) -> eps[B,H,W,C_out]``: label → table row → one
    cross-attention token → :class:`UNet2DConditionModel`."""

    config: ClassTokenUNetConfig
    precision: Any = None

    @nn.compact
    def __call__(self, sample, timesteps, labels):
        cfg = self.config
        labels = jnp.asarray(labels)
        if labels.shape != sample.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"ClassTokenUNet expects one integer label per image (shape {sample.shape[:1]}), "
                             f"got {labels.dtype} of shape {labels.shape}")
        context = nn.Embed(cfg.num_classes, cfg.context_dim, name="class_embedder")(labels)[:, None, :]
        return UNet2DConditionModel(cfg.unet, self.precision, name="unet")(sample, timesteps, context)


def example_inputs(config: ClassTokenUNetConfig, batch: int = 1):
    side = 2 ** (len(config.unet.block_out_channels) - 1)
    x = jnp.zeros((batch, side, side, config.unet.in_channels), jnp.float32)
    return x, jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), jnp.int32)


@functools.lru_cache(maxsize=32)
def abstract_params(config: ClassTokenUNetConfig) -> dict:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves (nothing is computed)."""
    module = ClassTokenUNet(config)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *example_inputs(config)))["params"]


def init_params(config: ClassTokenUNetConfig, seed: int = 0) -> dict:
    """Random float32 parameters with PyTorch's default initialisation (host-side, no compilation)."""
    return torch_default_params(abstract_params(config), seed)


def _apply(module: ClassTokenUNet, params, x, t, cond):
    if cond is None:
        raise ValueError("this ClassTokenUNet is class-conditional: pass one integer label per image "
                         f"(the null class {module.config.null_class} is the unconditional input)")
    return module.apply({"params": params}, x, t, cond)


@register_model(CLASS_NAME, module_lists=UNET_MODULE_LISTS + TRANSFORMER_MODULE_LISTS)
def build_class_token_unet(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    cfg = ClassTokenUNetConfig.from_diffusers(config, source=source)
    module = ClassTokenUNet(cfg)
    return ModelSpec(
        module=module,
        config=cfg,
        abstract_params=abstract_params(cfg),
        apply_fn=functools.partial(_apply, module),
        sample_shape=None if cfg.unet.sample_size is None else cfg.unet.sample_shape,
        out_channels=cfg.unet.out_channels,
        cond_kind="class",
    )


@register_condition_probe("class_token")
def _class_token_probe(shapes: dict) -> dict:
    """:class:`ClassTokenUNet`: the labels are the rows of ``class_embedder`` (the null row, if any, is
    among them; which one it is comes from the family)."""
    shape = shapes.get(("class_embedder", "embedding"))
    return {} if shape is None else {"num_labels": shape[0]}
