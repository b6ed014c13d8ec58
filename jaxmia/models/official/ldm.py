"""CompVis latent diffusion (``ldm``): a Lightning ``model.ckpt`` plus its ``config.yaml`` → a jaxmia
latent pipeline folder (``unet/`` = :class:`~jaxmia.models.class_token.ClassTokenUNet`, ``vqvae/`` =
:class:`~jaxmia.models.vae.VQModel`, ``scheduler/``).

Scope: the class-conditional ImageNet model of CDI (``configs/latent-diffusion/cin256-v2.yaml``: a
``LatentDiffusion`` with an ``openaimodel.UNetModel`` with spatial transformers, a
``VQModelInterface`` first stage and a ``ClassEmbedder``), at any size of that architecture.

What is read, and from where:

* ``config.yaml`` with PyYAML's ``safe_load`` (no Python object is ever built from it). Every
  ``target`` must be one of :data:`TARGETS` (else refused by name); every parameter under a target
  must be known: it is either interpreted (its meaning is ported) or inert (training-only:
  learning rates, monitors, loss weights, data keys) — an unknown one is refused by name. Top-level
  sections other than ``model`` (``data``, ``lightning``) are not read.
* ``model.ckpt``'s ``"state_dict"`` only, by :func:`~jaxmia.models.torch_checkpoint.read_torch_checkpoint`
  (nothing in the file runs). The architecture (widths, levels, blocks, attention levels, transformer
  depth, context width, latent and code widths, codebook and class-table sizes) is read from the
  tensor **shapes** and compared with the config, field by field; a disagreement is refused naming
  both. Only what shapes cannot tell comes from the config alone: the attention head count
  (``num_heads`` / ``num_head_channels``), the image sizes, the schedule and the latent scale.
* The key sets are compared with the ones the architecture implies; **every** missing or
  unexpected key is reported by name (the official loaders use ``load_state_dict(strict=False)``
  and skip them silently).

The mappings (each proven on the official fixture, ``tests/test_official_ldm.py``):

* UNet → diffusers ``UNet2DConditionModel``, exactly, when ``channel_mult[0] == 1`` (else refused):
  ``time_embed.{0,2}`` → ``time_embedding.linear_{1,2}`` (sinusoid of width ``model_channels``,
  ``[cos, sin]``: ``flip_sin_to_cos=True, freq_shift=0``); ``input_blocks.0.0`` → ``conv_in``; per
  level, ResBlocks → ``down_blocks.L.resnets.j`` (``in_layers.{0,2}`` → ``norm1``/``conv1``,
  ``emb_layers.1`` → ``time_emb_proj``, ``out_layers.{0,3}`` → ``norm2``/``conv2``,
  ``skip_connection`` → ``conv_shortcut``; GroupNorm(32, eps 1e-5); the embedding is added, or
  FiLM with ``use_scale_shift_norm`` = diffusers' ``scale_shift``), spatial transformers →
  ``attentions.j`` (GroupNorm eps 1e-6, 1×1-conv ``proj_in``/``proj_out`` =
  ``use_linear_projection=False``, blocks with the same names: self-attention, cross-attention, GEGLU
  value-then-gate), ``.0.op`` (3×3 stride 2, padding 1) → ``downsamplers.0.conv``
  (``downsample_padding=1``); ``middle_block.{0,1,2}`` → ``mid_block.{resnets.0, attentions.0,
  resnets.1}``; ``output_blocks`` → ``up_blocks`` (deepest first, ``num_res_blocks + 1`` each, the
  skip concatenated after h, ``.K.conv`` → ``upsamplers.0.conv``); ``out.{0,2}`` →
  ``conv_norm_out``/``conv_out``. ``attention_resolutions`` are down-sampling factors: level l has
  attention iff 2**l is listed. Heads: ``num_heads`` n gives n heads of width C // n at every level;
  ``num_head_channels`` k gives C // k heads of width C // (C // k) (``legacy=True``) — diffusers'
  per-level ``attention_head_dim`` (a head *count*, diffusers issue #2011) carries both.
* VQ first stage → diffusers ``VQModel``, exactly, when ``ch_mult[0] == 1``: ``encoder.down.i.block.j``
  → ``encoder.down_blocks.i.resnets.j`` (``nin_shortcut`` → ``conv_shortcut``), ``.attn.j`` and
  ``mid.attn_1`` (``norm, q, k, v, proj_out`` 1×1 convs → ``group_norm, to_q, to_k, to_v, to_out.0``),
  ``down.i.downsample.conv`` → ``downsamplers.0.conv`` (pad right/bottom by one, stride 2),
  ``mid.block_{1,2}`` → ``mid_block.resnets.{0,1}``, ``decoder.up.i`` → ``decoder.up_blocks.(L−1−i)``,
  ``norm_out`` → ``conv_norm_out``; ``quant_conv``, ``quantize.embedding``, ``post_quant_conv`` keep
  their names (``latent_channels = z_channels``, ``vq_embed_dim = embed_dim``).
* ``cond_stage_model.embedding.weight`` → ``class_embedder`` of the :class:`ClassTokenUNet`.
* Schedule: CompVis ``linear`` (linear in √β) = diffusers ``scaled_linear``; ``sqrt_linear``
  (linear in β) = ``linear``; ``cosine`` (s = 0.008) = ``squaredcos_cap_v2``. The checkpoint's
  ``betas`` and ``alphas_cumprod`` buffers are compared with what the written scheduler config
  gives (:func:`jaxmia.schedule.schedule_from_config`); a mismatch is refused by name.
* Latent scale: the ``scale_factor`` buffer when the model was trained with ``scale_by_std``, else
  the config's ``scale_factor`` (default 1.0, as cin256-v2) → ``vqvae/config.json``'s
  ``scaling_factor``. Encoding is the pre-quantisation latent (``encode_first_stage`` does not
  quantise for ``VQModelInterface``); decoding quantises (``decode_first_stage``).

References: Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv
2112.10752 (§3, App. G, H); CompVis/latent-diffusion @ a506df5 (``ldm/modules/diffusionmodules/
openaimodel.py``, ``model.py``, ``ldm/modules/attention.py``, ``ldm/models/diffusion/ddpm.py``,
``ldm/models/autoencoder.py``, ``ldm/modules/encoders/modules.py``); diffusers
``scripts/convert_ldm_original_checkpoint_to_diffusers.py`` and ``pipelines/stable_diffusion/
convert_from_ckpt.py`` (the same renaming; their head-count rule handles ``num_heads`` only).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from jaxmia import schedule as sched
from jaxmia.fileio import file_sha256
from jaxmia.models import convert as tree_convert
from jaxmia.models.official.registry import register_format
from jaxmia.models.official.output import check_keys
from jaxmia.models.torch_checkpoint import flat_state_dict, read_torch_checkpoint

CONFIG_NAME = "config.yaml"
CONVERSION_RECORD_NAME = "jaxmia_conversion.json"
UNET_PREFIX, VQ_PREFIX, COND_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
GROUPS = 32  # CompVis GroupNorm32 / Normalize: 32 groups everywhere

# The only classes a config may name, by role.
TARGETS = {
    "model": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "unet_config": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "first_stage_config": "ldm.models.autoencoder.VQModelInterface",
    "cond_stage_config": "ldm.modules.encoders.modules.ClassEmbedder",
    "lossconfig": "torch.nn.Identity",
}
# CompVis beta_schedule -> diffusers beta_schedule (ldm/modules/diffusionmodules/util.py::make_beta_schedule).
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
# Schedule buffers are float32 casts of float64 tables; both sides round the same float64 values.
SCHEDULE_RTOL = 1e-6

_REQUIRED = object()

# name -> (kind, default). Kinds: int, float, bool, str, int_list, opt_int, opt_str, dict, any (inert).
LDM_PARAMS = {
    "unet_config": ("dict", _REQUIRED), "first_stage_config": ("dict", _REQUIRED),
    "cond_stage_config": ("any", _REQUIRED),
    "timesteps": ("int", 1000), "beta_schedule": ("str", "linear"), "linear_start": ("float", 1e-4),
    "linear_end": ("float", 2e-2), "cosine_s": ("float", 8e-3), "given_betas": ("none", None),
    "parameterization": ("str", "eps"), "conditioning_key": ("opt_str", None), "concat_mode": ("bool", True),
    "use_ema": ("bool", True), "scale_factor": ("float", 1.0), "scale_by_std": ("bool", False),
    "image_size": ("int", 256), "channels": ("int", 3), "use_positional_encodings": ("bool", False),
    "cond_stage_forward": ("none", None),
}
LDM_INERT = {  # training-only: optimisation, logging, data keys, loss weights
    "num_timesteps_cond", "log_every_t", "first_stage_key", "cond_stage_key", "cond_stage_trainable", "monitor",
    "loss_type", "ckpt_path", "ignore_keys", "load_only_unet", "clip_denoised", "original_elbo_weight",
    "v_posterior", "l_simple_weight", "scheduler_config", "learn_logvar", "logvar_init",
}
UNET_PARAMS = {
    "image_size": ("int", _REQUIRED), "in_channels": ("int", _REQUIRED), "model_channels": ("int", _REQUIRED),
    "out_channels": ("int", _REQUIRED), "num_res_blocks": ("int", _REQUIRED),
    "attention_resolutions": ("int_list", _REQUIRED), "channel_mult": ("int_list", [1, 2, 4, 8]),
    "conv_resample": ("bool", True), "dims": ("int", 2), "num_classes": ("none", None),
    "num_heads": ("int", -1), "num_head_channels": ("int", -1), "use_scale_shift_norm": ("bool", False),
    "resblock_updown": ("bool", False), "use_spatial_transformer": ("bool", False),
    "transformer_depth": ("int", 1), "context_dim": ("opt_int", None), "n_embed": ("none", None),
    "legacy": ("bool", True),
}
UNET_INERT = {  # dropout (inference), checkpointing (memory), and AttentionBlock-only options
    "dropout", "use_checkpoint", "use_fp16", "num_heads_upsample", "use_new_attention_order",
}
VQ_PARAMS = {
    "embed_dim": ("int", _REQUIRED), "n_embed": ("int", _REQUIRED), "ddconfig": ("dict", _REQUIRED),
    "lossconfig": ("dict", _REQUIRED), "remap": ("none", None), "colorize_nlabels": ("none", None),
    "use_ema": ("bool", False),
}
VQ_INERT = {"ckpt_path", "ignore_keys", "image_key", "monitor", "batch_resize_range", "scheduler_config",
            "lr_g_factor", "sane_index_shape"}
DD_PARAMS = {
    "ch": ("int", _REQUIRED), "out_ch": ("int", _REQUIRED), "ch_mult": ("int_list", [1, 2, 4, 8]),
    "num_res_blocks": ("int", _REQUIRED), "attn_resolutions": ("int_list", _REQUIRED),
    "in_channels": ("int", _REQUIRED), "resolution": ("int", _REQUIRED), "z_channels": ("int", _REQUIRED),
    "double_z": ("bool", True), "resamp_with_conv": ("bool", True), "use_linear_attn": ("bool", False),
    "attn_type": ("str", "vanilla"), "give_pre_end": ("bool", False), "tanh_out": ("bool", False),
}
DD_INERT = {"dropout"}
CLASS_PARAMS = {"embed_dim": ("int", _REQUIRED), "n_classes": ("int", 1000)}
CLASS_INERT = {"key"}

# Values whose only supported setting is the one given (anything else selects an unported part).
_ONLY = {
    "model.params.parameterization": ("eps", "x0-prediction is not ported (jaxmia's LDM family predicts epsilon)"),
    "model.params.use_ema": (False, "the EMA copy (model_ema.*) is not converted; this converter reads "
                                    "model.diffusion_model.* (cin256-v2 sets use_ema: false)"),
    "model.params.use_positional_encodings": (False, "positional-encoding conditioning is not ported"),
    "unet_config.params.use_spatial_transformer": (True, "the cross-attention UNet is the one ported"),
    "unet_config.params.conv_resample": (True, "pooling/nearest-only resampling is not ported"),
    "unet_config.params.dims": (2, "only 2-D UNets exist in jaxmia"),
    "unet_config.params.resblock_updown": (False, "ResBlock up/down-sampling is not ported"),
    "unet_config.params.legacy": (True, "legacy=False head widths are not ported"),
    "first_stage_config.params.use_ema": (False, "the first stage's EMA copy is not converted"),
    "ddconfig.double_z": (False, "a VQ encoder outputs z_channels (double_z: false)"),
    "ddconfig.resamp_with_conv": (True, "pooling/nearest-only resampling is not ported"),
    "ddconfig.use_linear_attn": (False, "linear attention is not ported"),
    "ddconfig.attn_type": ("vanilla", "only the vanilla AttnBlock is ported"),
    "ddconfig.give_pre_end": (False, "the decoder must end with conv_out"),
    "ddconfig.tanh_out": (False, "a tanh on the decoder output is not ported"),
}


# ==================================================================================================
# config.yaml
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class LDMConfig:
    """The parts of an LDM ``config.yaml`` that define the model (typed; defaults are CompVis')."""

    model: dict
    unet: dict
    first_stage: dict
    ddconfig: dict
    cond_stage: dict
    ignored_sections: tuple[str, ...] = ()

    @property
    def conditioning_key(self) -> str:
        """LatentDiffusion's rule: an absent key means 'concat' when concat_mode (default) else 'crossattn'."""
        key = self.model["conditioning_key"]
        return key if key is not None else ("concat" if self.model["concat_mode"] else "crossattn")


def _float_like(value) -> bool:
    # PyYAML reads "1e-4" (no dot) as a string; OmegaConf, which CompVis uses, reads it as a float.
    return isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()) is not None


def _typed(value, kind: str, where: str, source: str):
    def bad(expected):
        raise ValueError(f"{source}: {where}={value!r} must be {expected}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int":
        return value if is_int else bad("an integer")
    if kind == "opt_int":
        return value if value is None or is_int else bad("an integer or null")
    if kind == "float":
        if is_int or isinstance(value, float):
            return float(value)
        return float(value) if _float_like(value) else bad("a number")
    if kind == "bool":
        return value if isinstance(value, bool) else bad("true or false")
    if kind == "str":
        return value if isinstance(value, str) else bad("a string")
    if kind == "opt_str":
        return value if value is None or isinstance(value, str) else bad("a string or null")
    if kind == "int_list":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return list(value) if ok else bad("a list of integers")
    if kind == "dict":
        return value if isinstance(value, Mapping) else bad("a mapping")
    if kind == "none":
        return None if value is None else bad("null (anything else selects a part that is not ported)")
    if kind == "any":
        return value
    raise AssertionError(kind)


def _params(node, where: str, known: Mapping, inert: set, source: str) -> dict:
    """The typed ``params`` of one config node, defaults filled; unknown keys refused by name."""
    if node is None:
        node = {}
    if not isinstance(node, Mapping):
        raise ValueError(f"{source}: {where} must be a mapping, got {type(node).__name__}")
    unknown = sorted(set(node) - set(known) - inert)
    if unknown:
        raise ValueError(f"{source}: unknown {where} key(s) {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(sorted(set(known) | inert))})")
    out = {}
    for key, (kind, default) in known.items():
        if key not in node:
            if default is _REQUIRED:
                raise ValueError(f"{source}: {where} needs {key!r}")
            out[key] = default
        else:
            out[key] = _typed(node[key], kind, f"{where}.{key}", source)
    return out


def _node(parent: Mapping, key: str, where: str, source: str) -> Mapping:
    """A ``{target, params}`` node; the target must be :data:`TARGETS`[key]."""
    node = parent.get(key)
    if not isinstance(node, Mapping):
        raise ValueError(f"{source}: {where} must be a mapping with 'target' and 'params'")
    unknown = sorted(set(node) - {"target", "params", "base_learning_rate"})
    if unknown:
        raise ValueError(f"{source}: unknown {where} key(s) {', '.join(map(repr, unknown))}")
    target = node.get("target")
    if target != TARGETS[key]:
        raise ValueError(f"{source}: {where}.target={target!r} is not supported (supported: {TARGETS[key]!r}; "
                         "jaxmia never imports a class named by a config)")
    return node.get("params") or {}


def parse_config(data: Any, *, source: str = CONFIG_NAME) -> LDMConfig:
    """Checks a ``safe_load``-ed LDM config and returns its typed model parts.

    Raises:
      ValueError naming ``source`` and the key: an unknown target or key, a mistyped value, or a value
      that selects a part of CompVis LDM that jaxmia does not port.
    """
    if not isinstance(data, Mapping) or "model" not in data:
        raise ValueError(f"{source}: not an LDM config (no top-level 'model' mapping)")
    model_node = data["model"]
    if isinstance(model_node, Mapping):  # the top-level node is named "model", its role "model"
        model_node = {"model": model_node}
    model = _params(_node(model_node, "model", "model", source), "model.params", LDM_PARAMS, LDM_INERT, source)
    unet = _params(_node(model, "unet_config", "model.params.unet_config", source), "unet_config.params",
                   UNET_PARAMS, UNET_INERT, source)
    first = _params(_node(model, "first_stage_config", "model.params.first_stage_config", source),
                    "first_stage_config.params", VQ_PARAMS, VQ_INERT, source)
    dd = _params(first["ddconfig"], "ddconfig", DD_PARAMS, DD_INERT, source)
    _node(first, "lossconfig", "first_stage_config.params.lossconfig", source)
    cond_node = model["cond_stage_config"]
    if cond_node == "__is_unconditional__":
        raise ValueError(f"{source}: cond_stage_config is '__is_unconditional__'; only the class-conditional "
                         "LDM (ClassEmbedder) is ported")
    cond = _params(_node(model, "cond_stage_config", "model.params.cond_stage_config", source),
                   "cond_stage_config.params", CLASS_PARAMS, CLASS_INERT, source)
    values = {f"{where}.{k}": v
              for where, table in (("model.params", model), ("unet_config.params", unet),
                                   ("first_stage_config.params", first), ("ddconfig", dd))
              for k, v in table.items()}
    for key, (want, why) in _ONLY.items():
        if values[key] != want:
            raise ValueError(f"{source}: {key}={values[key]!r} is not supported ({why}; supported: {want!r})")
    cfg = LDMConfig(model=model, unet=unet, first_stage=first, ddconfig=dd, cond_stage=cond,
                    ignored_sections=tuple(sorted(k for k in data if k != "model")))
    if cfg.conditioning_key != "crossattn":
        raise ValueError(f"{source}: model.params.conditioning_key={cfg.conditioning_key!r} is not supported "
                         "(the ClassEmbedder token enters through cross-attention: 'crossattn')")
    if model["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(f"{source}: model.params.beta_schedule={model['beta_schedule']!r} is not supported "
                         f"(supported: {', '.join(BETA_SCHEDULES)})")
    if model["beta_schedule"] == "cosine" and not math.isclose(model["cosine_s"], 0.008, rel_tol=1e-12):
        raise ValueError(f"{source}: model.params.cosine_s={model['cosine_s']!r} is not supported "
                         "(diffusers' squaredcos_cap_v2 has s = 0.008)")
    if unet["context_dim"] is None:
        raise ValueError(f"{source}: unet_config.params.context_dim is missing (the class token's width)")
    if unet["num_heads"] == -1 and unet["num_head_channels"] == -1:
        raise ValueError(f"{source}: unet_config.params needs num_heads or num_head_channels")
    if not unet["channel_mult"] or not dd["ch_mult"]:
        raise ValueError(f"{source}: channel_mult / ch_mult must name at least one level")
    return cfg


def read_config(path) -> LDMConfig:
    """Reads an LDM ``config.yaml`` with ``yaml.safe_load`` (plain data only) and :func:`parse_config`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: LDM config not found (pass --option config=PATH)")
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        raise ImportError("reading an LDM config.yaml needs PyYAML (pip install pyyaml)") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a YAML file safe_load accepts ({type(err).__name__}: {err})") from None
    return parse_config(data, source=str(path))


# ==================================================================================================
# Architectures: from the config and from the shapes, compared field by field
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class UNetLayout:
    """What defines a CompVis UNet's tensors (everything but the head split and the image size)."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]  # level l (down-sampling factor 2**l) has spatial transformers
    transformer_depth: int
    context_dim: int
    scale_shift: bool  # use_scale_shift_norm

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


@dataclasses.dataclass(frozen=True)
class VQLayout:
    """What defines a CompVis VQ first stage's tensors (everything but the pixel resolution)."""

    in_channels: int
    out_ch: int
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]
    z_channels: int
    embed_dim: int
    n_embed: int

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)


def unet_layout_from_config(cfg: LDMConfig) -> UNetLayout:
    u = cfg.unet
    levels = len(u["channel_mult"])
    return UNetLayout(u["in_channels"], u["out_channels"], u["model_channels"], tuple(u["channel_mult"]),
                      u["num_res_blocks"], tuple(2**lvl in u["attention_resolutions"] for lvl in range(levels)),
                      u["transformer_depth"], u["context_dim"], u["use_scale_shift_norm"])


def vq_layout_from_config(cfg: LDMConfig) -> VQLayout:
    d = cfg.ddconfig
    levels = len(d["ch_mult"])
    return VQLayout(d["in_channels"], d["out_ch"], d["ch"], tuple(d["ch_mult"]), d["num_res_blocks"],
                    tuple(d["resolution"] // 2**lvl in d["attn_resolutions"] for lvl in range(levels)),
                    d["z_channels"], cfg.first_stage["embed_dim"], cfg.first_stage["n_embed"])


def _shape(sd: Mapping, key: str, prefix: str, source: str) -> tuple:
    if key not in sd:
        raise ValueError(f"{source}: cannot read the architecture: no {prefix + key!r}")
    return tuple(sd[key].shape)


def _multiple(width: int, base: int, what: str, source: str) -> int:
    if width % base:
        raise ValueError(f"{source}: {what} has {width} channels, not a multiple of {base}")
    return width // base


def unet_layout_from_shapes(sd: Mapping, *, source: str) -> UNetLayout:
    """The UNet architecture read from ``model.diffusion_model.*`` shapes (``sd`` without the prefix)."""
    p = UNET_PREFIX
    mc, cin = _shape(sd, "input_blocks.0.0.weight", p, source)[:2]
    cout = _shape(sd, "out.2.weight", p, source)[0]
    levels, current, i = [], [], 1
    while True:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append(current)
            current = []
        elif f"input_blocks.{i}.0.in_layers.2.weight" in sd:
            width = sd[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
            current.append((width, f"input_blocks.{i}.1.proj_in.weight" in sd))
        else:
            break
        i += 1
    levels.append(current)
    counts = {len(lvl) for lvl in levels}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"{source}: cannot read the architecture: levels hold {[len(lvl) for lvl in levels]} "
                         f"ResBlocks under {p}input_blocks (CompVis uses one num_res_blocks for all levels)")
    mult, attention = [], []
    for lvl, blocks in enumerate(levels):
        widths, attn = {w for w, _ in blocks}, {a for _, a in blocks}
        if len(widths) != 1 or len(attn) != 1:
            raise ValueError(f"{source}: cannot read the architecture: level {lvl} mixes widths {sorted(widths)} "
                             f"or attention {sorted(attn)} under {p}input_blocks")
        mult.append(_multiple(widths.pop(), mc, f"{p}input_blocks level {lvl}", source))
        attention.append(attn.pop())
    depth = 0
    while f"middle_block.1.transformer_blocks.{depth}.norm1.weight" in sd:
        depth += 1
    context = _shape(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", p, source)[1]
    emb_width = _shape(sd, "input_blocks.1.0.emb_layers.1.weight", p, source)[0]
    return UNetLayout(cin, cout, mc, tuple(mult), counts.pop(), tuple(attention), depth, context,
                      emb_width == 2 * mc * mult[0])


def vq_layout_from_shapes(sd: Mapping, *, source: str) -> VQLayout:
    """The first stage's architecture read from ``first_stage_model.*`` shapes (without the prefix)."""
    p = VQ_PREFIX
    ch, cin = _shape(sd, "encoder.conv_in.weight", p, source)[:2]
    n_levels = 0
    while f"encoder.down.{n_levels}.block.0.conv1.weight" in sd:
        n_levels += 1
    if n_levels == 0:
        raise ValueError(f"{source}: cannot read the architecture: no {p}encoder.down.0.block.0.conv1.weight")
    blocks = 0
    while f"encoder.down.0.block.{blocks}.conv1.weight" in sd:
        blocks += 1
    mult = tuple(_multiple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0], ch, f"{p}encoder.down.{i}", source)
                 for i in range(n_levels))
    attention = tuple(f"encoder.down.{i}.attn.0.q.weight" in sd for i in range(n_levels))
    z = _shape(sd, "encoder.conv_out.weight", p, source)[0]
    embed_dim = _shape(sd, "quant_conv.weight", p, source)[0]
    n_embed = _shape(sd, "quantize.embedding.weight", p, source)[0]
    out_ch = _shape(sd, "decoder.conv_out.weight", p, source)[0]
    return VQLayout(cin, out_ch, ch, mult, blocks, attention, z, embed_dim, n_embed)


# Where each layout field lives in config.yaml, for messages.
_UNET_FIELDS = {
    "in_channels": "unet_config.params.in_channels", "out_channels": "unet_config.params.out_channels",
    "model_channels": "unet_config.params.model_channels", "channel_mult": "unet_config.params.channel_mult",
    "num_res_blocks": "unet_config.params.num_res_blocks",
    "attention_levels": "unet_config.params.attention_resolutions (as levels 2**l)",
    "transformer_depth": "unet_config.params.transformer_depth", "context_dim": "unet_config.params.context_dim",
    "scale_shift": "unet_config.params.use_scale_shift_norm",
}
_VQ_FIELDS = {
    "in_channels": "ddconfig.in_channels", "out_ch": "ddconfig.out_ch", "ch": "ddconfig.ch",
    "ch_mult": "ddconfig.ch_mult", "num_res_blocks": "ddconfig.num_res_blocks",
    "attention_levels": "ddconfig.attn_resolutions (as levels resolution // 2**l)",
    "z_channels": "ddconfig.z_channels", "embed_dim": "first_stage_config.params.embed_dim",
    "n_embed": "first_stage_config.params.n_embed",
}


def _compare(from_config, from_shapes, fields: Mapping[str, str], config_source: str, ckpt_source: str) -> None:
    problems = [f"{where}: the config says {getattr(from_config, name)!r}, the tensor shapes say "
                f"{getattr(from_shapes, name)!r}"
                for name, where in fields.items() if getattr(from_config, name) != getattr(from_shapes, name)]
    if problems:
        raise ValueError(f"{config_source} does not describe {ckpt_source}: {'; '.join(problems)}")


# ==================================================================================================
# Key maps: official name -> diffusers name (the expected key set of the architecture)
# ==================================================================================================


def _pair(m: dict, old: str, new: str, bias: bool = True) -> None:
    m[f"{old}.weight"] = f"{new}.weight"
    if bias:
        m[f"{old}.bias"] = f"{new}.bias"


def _resblock(m: dict, old: str, new: str, shortcut: bool) -> None:
    for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                 ("out_layers.0", "norm2"), ("out_layers.3", "conv2")):
        _pair(m, f"{old}.{a}", f"{new}.{b}")
    if shortcut:
        _pair(m, f"{old}.skip_connection", f"{new}.conv_shortcut")


def _transformer(m: dict, old: str, new: str, depth: int) -> None:
    for name in ("norm", "proj_in", "proj_out"):
        _pair(m, f"{old}.{name}", f"{new}.{name}")
    for d in range(depth):
        b = f"transformer_blocks.{d}"
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v"):
                _pair(m, f"{old}.{b}.{attn}.{proj}", f"{new}.{b}.{attn}.{proj}", bias=False)
            _pair(m, f"{old}.{b}.{attn}.to_out.0", f"{new}.{b}.{attn}.to_out.0")
        for name in ("ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3"):
            _pair(m, f"{old}.{b}.{name}", f"{new}.{b}.{name}")


def unet_key_map(layout: UNetLayout) -> dict[str, str]:
    """``model.diffusion_model`` names (without the prefix) → diffusers ``UNet2DConditionModel`` names,
    following openaimodel.UNetModel's construction order (its ``input_block_chans`` bookkeeping)."""
    m: dict[str, str] = {}
    _pair(m, "time_embed.0", "time_embedding.linear_1")
    _pair(m, "time_embed.2", "time_embedding.linear_2")
    _pair(m, "input_blocks.0.0", "conv_in")
    widths, n, depth = layout.channels, len(layout.channels), layout.transformer_depth
    chans, ch, index = [layout.model_channels], layout.model_channels, 1
    for lvl in range(n):
        for j in range(layout.num_res_blocks):
            _resblock(m, f"input_blocks.{index}.0", f"down_blocks.{lvl}.resnets.{j}", ch != widths[lvl])
            ch = widths[lvl]
            if layout.attention_levels[lvl]:
                _transformer(m, f"input_blocks.{index}.1", f"down_blocks.{lvl}.attentions.{j}", depth)
            chans.append(ch)
            index += 1
        if lvl != n - 1:
            _pair(m, f"input_blocks.{index}.0.op", f"down_blocks.{lvl}.downsamplers.0.conv")
            chans.append(ch)
            index += 1
    _resblock(m, "middle_block.0", "mid_block.resnets.0", False)
    _transformer(m, "middle_block.1", "mid_block.attentions.0", depth)
    _resblock(m, "middle_block.2", "mid_block.resnets.1", False)
    index = 0
    for up, lvl in enumerate(reversed(range(n))):
        for j in range(layout.num_res_blocks + 1):
            skip = chans.pop()
            _resblock(m, f"output_blocks.{index}.0", f"up_blocks.{up}.resnets.{j}", ch + skip != widths[lvl])
            ch = widths[lvl]
            k = 1
            if layout.attention_levels[lvl]:
                _transformer(m, f"output_blocks.{index}.1", f"up_blocks.{up}.attentions.{j}", depth)
                k = 2
            if lvl and j == layout.num_res_blocks:
                _pair(m, f"output_blocks.{index}.{k}.conv", f"up_blocks.{up}.upsamplers.0.conv")
            index += 1
    _pair(m, "out.0", "conv_norm_out")
    _pair(m, "out.2", "conv_out")
    return m


def _vq_resnet(m: dict, old: str, new: str, shortcut: bool) -> None:
    for name in ("norm1", "conv1", "norm2", "conv2"):
        _pair(m, f"{old}.{name}", f"{new}.{name}")
    if shortcut:
        _pair(m, f"{old}.nin_shortcut", f"{new}.conv_shortcut")


def _vq_attention(m: dict, old: str, new: str) -> None:
    for a, b in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        _pair(m, f"{old}.{a}", f"{new}.{b}")


def vq_key_map(layout: VQLayout) -> dict[str, str]:
    """``first_stage_model`` names (without the prefix) → diffusers ``VQModel`` names."""
    m: dict[str, str] = {}
    widths, n = layout.channels, len(layout.channels)
    _pair(m, "encoder.conv_in", "encoder.conv_in")
    block_in = layout.ch
    for i in range(n):
        for j in range(layout.num_res_blocks):
            _vq_resnet(m, f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", block_in != widths[i])
            block_in = widths[i]
            if layout.attention_levels[i]:
                _vq_attention(m, f"encoder.down.{i}.attn.{j}", f"encoder.down_blocks.{i}.attentions.{j}")
        if i != n - 1:
            _pair(m, f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    for part in ("encoder", "decoder"):
        _vq_resnet(m, f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", False)
        _vq_attention(m, f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0")
        _vq_resnet(m, f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", False)
        _pair(m, f"{part}.norm_out", f"{part}.conv_norm_out")
        _pair(m, f"{part}.conv_out", f"{part}.conv_out")
    _pair(m, "decoder.conv_in", "decoder.conv_in")
    block_in = widths[-1]
    for i in reversed(range(n)):
        up = n - 1 - i
        for j in range(layout.num_res_blocks + 1):
            _vq_resnet(m, f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{up}.resnets.{j}", block_in != widths[i])
            block_in = widths[i]
            if layout.attention_levels[i]:
                _vq_attention(m, f"decoder.up.{i}.attn.{j}", f"decoder.up_blocks.{up}.attentions.{j}")
        if i != 0:
            _pair(m, f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv")
    for name in ("quant_conv", "post_quant_conv"):
        _pair(m, name, name)
    _pair(m, "quantize.embedding", "quantize.embedding", bias=False)
    return m


# ==================================================================================================
# jaxmia configs
# ==================================================================================================


def head_counts(cfg: LDMConfig, layout: UNetLayout, *, source: str = CONFIG_NAME) -> tuple[int, ...]:
    """Attention heads of each level, as openaimodel computes them (``legacy=True``, spatial transformer).

    ``num_head_channels`` k (when set) wins: C // k heads; else ``num_heads`` n heads. Heads are
    C // heads wide in both cases, which is diffusers' rule for a per-level head count.
    """
    u = cfg.unet
    heads = []
    for lvl, c in enumerate(layout.channels):
        n = c // u["num_head_channels"] if u["num_head_channels"] != -1 else u["num_heads"]
        if not 1 <= n <= c:
            which = "num_head_channels" if u["num_head_channels"] != -1 else "num_heads"
            raise ValueError(f"{source}: unet_config.params.{which}={u[which]} gives {n} heads for the {c} channels "
                             f"of level {lvl}")
        heads.append(n)
    return tuple(heads)


def unet_config(cfg: LDMConfig, layout: UNetLayout, *, source: str = CONFIG_NAME):
    """The :class:`~jaxmia.models.unet2d_condition.UNet2DConditionConfig` of a CompVis UNet (exact when
    ``channel_mult[0] == 1``; otherwise conv_in and the sinusoid widths differ and it is refused)."""
    from jaxmia.models.unet2d_condition import (CROSS_DOWN, CROSS_MID, CROSS_UP, PLAIN_DOWN, PLAIN_UP,
                                                UNet2DConditionConfig)

    if layout.channel_mult[0] != 1:
        raise ValueError(f"{source}: unet_config.params.channel_mult={list(layout.channel_mult)} starts with "
                         f"{layout.channel_mult[0]}, not 1: openaimodel's input conv and time sinusoid are then "
                         "model_channels wide but diffusers' are block_out_channels[0]; this UNet has no exact "
                         "UNet2DConditionModel form")
    for lvl, c in enumerate(layout.channels):
        if c % GROUPS:
            raise ValueError(f"{source}: level {lvl} has {c} channels, not a multiple of GroupNorm32's {GROUPS} groups")
    down = tuple(CROSS_DOWN if a else PLAIN_DOWN for a in layout.attention_levels)
    up = tuple(CROSS_UP if a else PLAIN_UP for a in reversed(layout.attention_levels))
    config = UNet2DConditionConfig(
        sample_size=cfg.unet["image_size"], in_channels=layout.in_channels, out_channels=layout.out_channels,
        flip_sin_to_cos=True, freq_shift=0, down_block_types=down, mid_block_type=CROSS_MID, up_block_types=up,
        block_out_channels=layout.channels, layers_per_block=layout.num_res_blocks, downsample_padding=1,
        act_fn="silu", norm_num_groups=GROUPS, norm_eps=1e-5, cross_attention_dim=layout.context_dim,
        transformer_layers_per_block=layout.transformer_depth,
        attention_head_dim=head_counts(cfg, layout, source=source),
        use_linear_projection=False, resnet_time_scale_shift="scale_shift" if layout.scale_shift else "default",
    )
    config.validate(source=source)
    return config


def vq_config(cfg: LDMConfig, layout: VQLayout, scale: float, *, source: str = CONFIG_NAME):
    """The :class:`~jaxmia.models.vae.VQModelConfig` of a CompVis ``VQModelInterface``."""
    from jaxmia.models.vae import VQModelConfig

    if layout.ch_mult[0] != 1:
        raise ValueError(f"{source}: ddconfig.ch_mult={list(layout.ch_mult)} starts with {layout.ch_mult[0]}, not 1: "
                         "the CompVis encoder's conv_in is then ch wide but diffusers' is block_out_channels[0]")
    down = tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in layout.attention_levels)
    up = tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(layout.attention_levels))
    return VQModelConfig.from_diffusers({
        "in_channels": layout.in_channels, "out_channels": layout.out_ch, "down_block_types": list(down),
        "up_block_types": list(up), "block_out_channels": list(layout.channels),
        "layers_per_block": layout.num_res_blocks, "act_fn": "silu", "latent_channels": layout.z_channels,
        "sample_size": cfg.ddconfig["resolution"], "num_vq_embeddings": layout.n_embed, "norm_num_groups": GROUPS,
        "vq_embed_dim": layout.embed_dim, "scaling_factor": float(scale), "norm_type": "group",
        "mid_block_add_attention": True, "lookup_from_codebook": False, "force_upcast": False,
    }, source=source)


def pipeline_configs(cfg: LDMConfig, *, null_class: int | str | None = "last", source: str = CONFIG_NAME):
    """(ClassTokenUNetConfig, VQModelConfig) from the config alone (real-size parameter counts without
    a checkpoint; :func:`convert` builds them from the shapes and checks the config against them)."""
    from jaxmia.models.class_token import ClassTokenUNetConfig

    n_classes = cfg.cond_stage["n_classes"]
    null = n_classes - 1 if null_class == "last" else null_class
    unet = ClassTokenUNetConfig(n_classes, unet_config(cfg, unet_layout_from_config(cfg), source=source), null)
    unet.validate(source=source)
    return unet, vq_config(cfg, vq_layout_from_config(cfg), cfg.model["scale_factor"], source=source)


def scheduler_config(cfg: LDMConfig) -> dict:
    """The diffusers ``scheduler_config.json`` of the LDM's forward process (ε-prediction, ā[0] = 1 − β_0)."""
    m = cfg.model
    return {"_class_name": "DDPMScheduler", "num_train_timesteps": m["timesteps"],
            "beta_schedule": BETA_SCHEDULES[m["beta_schedule"]], "beta_start": m["linear_start"],
            "beta_end": m["linear_end"], "prediction_type": "epsilon", "clip_sample": False,
            "first_index_clean": False, "variance_type": "fixed_small"}


def check_schedule(buffers: Mapping[str, np.ndarray], scheduler: Mapping, *, source: str) -> dict:
    """Compares the checkpoint's ``betas`` / ``alphas_cumprod`` with the written scheduler config.

    Returns ``{name: max |difference|}``. Raises ValueError naming the buffer, the largest difference
    and where it is when they differ by more than :data:`SCHEDULE_RTOL` (relative).
    """
    schedule = sched.schedule_from_config(scheduler, source="the written scheduler config")
    found = {}
    for name, ours in (("betas", schedule.betas), ("alphas_cumprod", schedule.alphas_cumprod)):
        theirs = np.asarray(buffers[name], np.float64)
        ours = np.asarray(ours, np.float64)
        if theirs.shape != ours.shape:
            raise ValueError(f"{source}: {name} has shape {theirs.shape} but the config's schedule has "
                             f"{ours.shape[0]} steps (model.params.timesteps)")
        diff = np.abs(theirs - ours)
        worst = int(np.argmax(diff / np.maximum(np.abs(ours), 1e-30)))
        if not np.allclose(theirs, ours, rtol=SCHEDULE_RTOL, atol=0.0):
            raise ValueError(f"{source}: {name} differs from the config's {scheduler['beta_schedule']} schedule "
                             f"{scheduler['beta_start']}..{scheduler['beta_end']} "
                             f"(T={scheduler['num_train_timesteps']}): {theirs[worst]!r} vs {ours[worst]!r} at "
                             f"t={worst} (max |diff| {diff.max():.3g}); the checkpoint was not trained with this "
                             "config")
        found[name] = float(diff.max())
    return found


# ==================================================================================================
# The converter
# ==================================================================================================


def _to_flax(official: Mapping[str, np.ndarray], key_map: Mapping[str, str], abstract, *, source: str):
    """torch_to_flax on the renamed tensors (``key_map``: full official name -> torch-style Flax name);
    a shape error names the official key."""
    renamed = {key_map[k]: v for k, v in official.items()}
    try:
        return tree_convert.torch_to_flax(renamed, abstract, source=source)
    except ValueError as err:
        back = {new: old for old, new in key_map.items()}
        message = re.sub(r"'([^']+)'", lambda hit: f"'{back[hit.group(1)]}'" if hit.group(1) in back else hit.group(0),
                         str(err))
        raise ValueError(message) from None


def _parse_null_class(value, n_classes: int) -> Optional[int]:
    text = str(value).strip().lower()
    if text == "last":
        return n_classes - 1
    if text == "none":
        return None
    try:
        null = int(text)
    except ValueError:
        raise ValueError(f"--option null_class={value!r} must be 'last', 'none' or a class index") from None
    if not 0 <= null < n_classes:
        raise ValueError(f"--option null_class={null} is not a row of the {n_classes}-row class table")
    return null


def _count(tree) -> int:
    from flax import traverse_util

    return int(sum(math.prod(np.shape(v)) for v in traverse_util.flatten_dict(tree).values()))


@register_format("ldm", "CompVis latent diffusion, class-conditional (model.ckpt + config.yaml; cin256-v2)",
                 options={"config": "the official config.yaml (default: config.yaml beside the checkpoint)",
                          "null_class": "the unconditional label: 'last' (default; cin256-v2: 1000 of 1001 rows), "
                                        "'none' (a table without one), or an index"})
def convert(src: Path, dst: Path, config: Optional[str] = None, null_class: str = "last") -> dict:
    """Converts a CompVis LDM checkpoint into a pipeline folder :func:`jaxmia.models.load_denoiser` reads.

    Args:
      src: ``model.ckpt`` (a Lightning checkpoint; only ``"state_dict"`` is read).
      dst: a new or empty folder; receives ``unet/`` (ClassTokenUNet), ``vqvae/`` (VQModel),
        ``scheduler/scheduler_config.json``, ``model_index.json`` and ``jaxmia_conversion.json``.
      config: the official ``config.yaml`` (default: beside ``src``).
      null_class: see the format's options.

    Returns:
      The conversion record (also written to ``dst/jaxmia_conversion.json``).
    """
    from jaxmia.models import class_token, vae
    from jaxmia.models.formats import require_empty_folder, weights_digest
    from jaxmia.models.loading import save_unet

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: LDM checkpoint not found")
    config_path = Path(config) if config is not None else src.parent / CONFIG_NAME
    cfg = read_config(config_path)
    require_empty_folder(dst)
    sd = flat_state_dict(read_torch_checkpoint(src), source=str(src), key="state_dict")

    # Partition the state dict; anything outside the four parts is unexpected.
    parts = {UNET_PREFIX: {}, VQ_PREFIX: {}, COND_PREFIX: {}}
    buffers, stray = {}, []
    for name, value in sd.items():
        prefix = next((p for p in parts if name.startswith(p)), None)
        if prefix is not None:
            parts[prefix][name[len(prefix):]] = value
        elif name in SCHEDULE_BUFFERS or (name == "scale_factor" and cfg.model["scale_by_std"]):
            buffers[name] = value
        else:
            stray.append(name)
    expected_buffers = set(SCHEDULE_BUFFERS) | ({"scale_factor"} if cfg.model["scale_by_std"] else set())
    check_keys(set(buffers) | set(stray), expected_buffers, str(src), what="set of un-prefixed buffers", quote=True)
    unet_sd, vq_sd, cond_sd = parts[UNET_PREFIX], parts[VQ_PREFIX], parts[COND_PREFIX]

    # Architectures from the shapes, checked against the config.
    unet_layout = unet_layout_from_shapes(unet_sd, source=str(src))
    _compare(unet_layout_from_config(cfg), unet_layout, _UNET_FIELDS, str(config_path), str(src))
    vq_layout = vq_layout_from_shapes(vq_sd, source=str(src))
    _compare(vq_layout_from_config(cfg), vq_layout, _VQ_FIELDS, str(config_path), str(src))
    unet_map, vq_map = unet_key_map(unet_layout), vq_key_map(vq_layout)
    check_keys(unet_sd, unet_map, str(src), what="UNet", prefix=UNET_PREFIX, quote=True)
    check_keys(vq_sd, vq_map, str(src), what="first stage", prefix=VQ_PREFIX, quote=True)
    check_keys(cond_sd, {"embedding.weight"}, str(src), what="class embedder", prefix=COND_PREFIX, quote=True)
    table = cond_sd["embedding.weight"]
    want_table = (cfg.cond_stage["n_classes"], cfg.cond_stage["embed_dim"])
    if table.ndim != 2 or tuple(table.shape) != want_table:
        raise ValueError(f"{src}: {COND_PREFIX}embedding.weight has shape {tuple(table.shape)} but "
                         f"{config_path}'s cond_stage_config.params (n_classes, embed_dim) say {want_table}")
    if table.shape[1] != unet_layout.context_dim:
        raise ValueError(f"{src}: the class embeddings are {table.shape[1]} wide but the UNet cross-attends to "
                         f"{unet_layout.context_dim}-wide contexts")

    # Latent scale and schedule.
    if cfg.model["scale_by_std"]:
        buffer = np.asarray(buffers["scale_factor"])
        if buffer.size != 1:
            raise ValueError(f"{src}: scale_factor has shape {buffer.shape}, expected a scalar")
        scale, scale_from = float(buffer.reshape(())), f"{src} [scale_factor buffer, scale_by_std]"
    else:
        scale, scale_from = cfg.model["scale_factor"], f"{config_path} [model.params.scale_factor, default 1.0]"
    scheduler = scheduler_config(cfg)
    schedule_diff = check_schedule(buffers, scheduler, source=str(src))
    if cfg.model["image_size"] != cfg.unet["image_size"] or cfg.model["channels"] != unet_layout.in_channels:
        raise ValueError(f"{config_path}: model.params.image_size/channels ({cfg.model['image_size']}, "
                         f"{cfg.model['channels']}) disagree with the UNet's ({cfg.unet['image_size']}, "
                         f"{unet_layout.in_channels})")
    if vq_layout.embed_dim != unet_layout.in_channels:
        raise ValueError(f"{src}: the first stage makes {vq_layout.embed_dim}-channel latents but the UNet takes "
                         f"{unet_layout.in_channels} channels")

    # The jaxmia networks and their weights.
    null = _parse_null_class(null_class, int(table.shape[0]))
    token_cfg = class_token.ClassTokenUNetConfig(
        int(table.shape[0]), unet_config(cfg, unet_layout, source=str(config_path)), null)
    token_cfg.validate(source=str(config_path))
    token_map = {UNET_PREFIX + k: f"unet.{v}" for k, v in unet_map.items()}
    token_map[COND_PREFIX + "embedding.weight"] = "class_embedder.weight"
    unet_params = _to_flax({k: sd[k] for k in token_map}, token_map, class_token.abstract_params(token_cfg),
                           source=str(src))
    vq_cfg = vq_config(cfg, vq_layout, scale, source=str(config_path))
    vq_full = {VQ_PREFIX + k: v for k, v in vq_map.items()}
    vq_params = _to_flax({k: sd[k] for k in vq_full}, vq_full, vae.abstract_params(vae.VQModel(vq_cfg)),
                         source=str(src))

    save_unet(dst / "unet", token_cfg, unet_params)
    save_unet(dst / "vqvae", vq_cfg, vq_params)
    (dst / "scheduler").mkdir(parents=True, exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2, sort_keys=True) + "\n")
    index = {"_class_name": "LDMPipeline", "_diffusers_version": "0.39.0", "unet": ["jaxmia", class_token.CLASS_NAME],
             "vqvae": ["diffusers", "VQModel"], "scheduler": ["diffusers", "DDPMScheduler"]}
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    record = {
        "format": "ldm",
        "source": str(src), "source_sha256": file_sha256(src),
        "config": str(config_path), "config_sha256": file_sha256(config_path),
        "config_sections_not_read": list(cfg.ignored_sections),
        "unet_layout": dataclasses.asdict(unet_layout), "vq_layout": dataclasses.asdict(vq_layout),
        "heads_per_level": list(token_cfg.unet.attention_head_dim),
        "num_classes": int(table.shape[0]), "null_class": null,
        "latent_scale": scale, "latent_scale_from": scale_from,
        "schedule": {"ldm": {k: cfg.model[k] for k in ("beta_schedule", "linear_start", "linear_end", "timesteps")},
                     "scheduler_config": scheduler, "max_abs_diff_vs_checkpoint": schedule_diff},
        "n_params": {"unet": _count(unet_params["unet"]), "class_embedder": int(table.size),
                     "first_stage": _count(vq_params)},
        "weights_digest": {"unet": weights_digest(unet_params), "vqvae": weights_digest(vq_params)},
        "keys": {"unet": len(unet_map), "first_stage": len(vq_map), "cond_stage": 1, "buffers": len(expected_buffers),
                 "missing": 0, "unexpected": 0},
    }
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    (dst / CONVERSION_RECORD_NAME).write_text(text)
    return json.loads(text)  # what the file says (lists, not tuples)
