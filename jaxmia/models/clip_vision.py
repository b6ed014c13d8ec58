"""The CLIP image encoder (transformers' ``CLIPVisionModel`` family) in Flax, its preprocessing in JAX,
and a DRC embedder built from them.

"Model Will Tell" (Fu et al., arXiv 2403.08487) compares an image with its restoration by the cosine
similarity of CLIP image embeddings (docs/methods/mia.md §4.1, "Compare"); :func:`clip_image_embedder`
gives :func:`jaxmia.drc.run_drc` that ``embed_fn`` from a local transformers folder, with no torch.

Structure (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
arXiv 2103.00020, §2.4; Dosovitskiy et al., "An Image is Worth 16x16 Words", arXiv 2010.11929, §3.1;
transformers ``models/clip/modeling_clip.py``): a p×p stride-p convolution without bias cuts the
image into patches; a learned ``class_embedding`` token is prepended and learned position
embeddings added; ``pre_layrnorm`` (sic, transformers' name); the pre-LN encoder layers of the text
model without a causal mask (:class:`jaxmia.models.clip_text.CLIPEncoderLayer`); the pooled output
is ``post_layernorm`` of the class token's final state, and ``image_embeds`` its
``visual_projection`` (a linear map without bias), where the model has one.

Files: a transformers folder of a ``CLIPVisionModel`` (keys with or without ``vision_model.``), a
``CLIPVisionModelWithProjection`` or a ``CLIPModel`` (its text half, ``text_projection`` and
``logit_scale`` are not read): ``config.json`` + ``model.safetensors`` (or a sharded index), and,
if present, ``preprocessor_config.json`` (a ``CLIPImageProcessor``).

Preprocessing (:class:`CLIPPreprocess`, transformers' ``CLIPImageProcessor``): resize so the
shorter side is ``size["shortest_edge"]`` (the longer side ``int(s·long/short)``; or to
``size = {"height", "width"}``) with an antialiased bicubic (``resample`` 3) or bilinear (2) filter,
centre-crop to ``crop_size`` (``top = int((H − h)/2)``; zero-padded if the image is smaller), rescale
by ``rescale_factor`` (1/255), normalise with ``image_mean`` / ``image_std``; greyscale images are
repeated to RGB. Without a ``preprocessor_config.json``: resize and crop to the config's
``image_size`` with CLIP's mean and std (:data:`OPENAI_CLIP_MEAN`, :data:`OPENAI_CLIP_STD`).

Deliberate differences from transformers: inference only; images arrive as floats in [−1, 1]
(jaxmia's range; ``(x + 1)·127.5`` is the 0–255 value the processor rescales), are resized in float
and clamped to [0, 255] afterwards (the processor resizes uint8 images, which rounds to integers
as well as clamping).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmia.fileio import read_json
from jaxmia import config as typed
from jaxmia.models import convert
from jaxmia.models.attention import layer_norm
from jaxmia.models.clip_text import _GENERIC_KEYS, HIDDEN_ACTIVATIONS, CLIPEncoderLayer, _read_state_dict

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
PREFIX = "vision_model."
PROJECTION = "visual_projection."
POSITION_IDS_KEY = "vision_model.embeddings.position_ids"
ARCHITECTURES = {"CLIPVisionModel": False, "CLIPVisionModelWithProjection": True, "CLIPModel": True}
# transformers image_utils: the mean and std CLIP was trained with.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resampling codes transformers stores → jax.image.resize methods (antialiased when downsizing).
RESAMPLE = {2: "linear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """The fields of transformers' ``CLIPVisionConfig`` that shape the forward pass (its defaults)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int = 512

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any], *, source: str = "config") -> "CLIPVisionConfig":
        """From a ``config.json`` of a ``clip_vision_model`` or of a ``clip`` model (its ``vision_config``
        and top-level ``projection_dim``).

        Raises:
          ValueError naming ``source`` and the key: another model type, an unknown key, a wrong type.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: a model config must be a JSON object, got {type(config).__name__}")
        model_type = config.get("model_type")
        if model_type == "clip":
            vision = config.get("vision_config") or {}
            if not isinstance(vision, Mapping):
                raise ValueError(f"{source}: vision_config must be an object")
            values = dict(vision)
            if "projection_dim" in config:
                values["projection_dim"] = config["projection_dim"]
            return cls._from_fields(values, source=f"{source} vision_config")
        if model_type != "clip_vision_model":
            raise ValueError(f"{source}: model_type is {model_type!r}, not 'clip_vision_model' or 'clip' "
                             "(a CLIPVisionModel, CLIPVisionModelWithProjection or CLIPModel folder)")
        return cls._from_fields(config, source=source)

    @classmethod
    def _from_fields(cls, config: Mapping[str, Any], *, source: str) -> "CLIPVisionConfig":
        return typed.from_class_config(cls, config, None, what="CLIPVisionModel", source=source, ignore=_GENERIC_KEYS)

    def validate(self, *, source: str = "config") -> None:
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act={self.hidden_act!r} is not supported "
                             f"(supported: {', '.join(HIDDEN_ACTIVATIONS)})")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                     "image_size", "patch_size", "projection_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{source}: {name}={getattr(self, name)!r} must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{source}: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"{source}: image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"{source}: layer_norm_eps={self.layer_norm_eps!r} must be > 0")

    @property
    def num_positions(self) -> int:
        """The class token plus (image_size / patch_size)² patches."""
        return (self.image_size // self.patch_size) ** 2 + 1


# ==================================================================================================
# Modules
# ==================================================================================================


class _Embeddings(nn.Module):
    config: CLIPVisionConfig
    precision: Any = None

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.config
        p = cfg.patch_size
        patches = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding="VALID", use_bias=False,
                          precision=self.precision, name="patch_embedding")(pixel_values)
        b = patches.shape[0]
        patches = patches.reshape(b, -1, cfg.hidden_size)  # row-major over the patch grid, as torch's flatten
        cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.hidden_size,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, cfg.hidden_size)).astype(patches.dtype), patches], axis=1)
        positions = nn.Embed(cfg.num_positions, cfg.hidden_size, name="position_embedding")(
            jnp.arange(cfg.num_positions))
        return x + positions[None]


class _Encoder(nn.Module):
    config: CLIPVisionConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        for i in range(self.config.num_hidden_layers):
            # The text model's layer; it reads only heads, widths, activation and eps from the config.
            x = CLIPEncoderLayer(self.config, self.precision, name=f"layers_{i}")(x, None)
        return x


class CLIPVisionTransformer(nn.Module):
    """``pixel_values (B, S, S, C) -> (last_hidden_state (B, 1 + n², D), pooled (B, D))`` (transformers'
    ``CLIPVisionTransformer``; NHWC, preprocessed)."""

    config: CLIPVisionConfig
    precision: Any = None

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.config
        size = (cfg.image_size, cfg.image_size, cfg.num_channels)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != size:
            raise ValueError(f"CLIP vision encoder: pixel_values must be (B, {size[0]}, {size[1]}, {size[2]}), got "
                             f"shape {tuple(pixel_values.shape)} (preprocess first)")
        h = _Embeddings(cfg, self.precision, name="embeddings")(pixel_values)
        h = layer_norm(cfg.layer_norm_eps, "pre_layrnorm")(h)
        h = _Encoder(cfg, self.precision, name="encoder")(h)
        pooled = layer_norm(cfg.layer_norm_eps, "post_layernorm")(h[:, 0])
        return h, pooled


class CLIPVisionModel(nn.Module):
    """``pixel_values -> (last_hidden_state, pooled, image_embeds or None)``.

    ``with_projection``: the model has ``visual_projection`` (CLIPVisionModelWithProjection,
    CLIPModel); ``image_embeds`` = pooled · W (no bias), the vector CLIP compares across modalities.
    """

    config: CLIPVisionConfig
    with_projection: bool = False
    precision: Any = None

    @nn.compact
    def __call__(self, pixel_values):
        h, pooled = CLIPVisionTransformer(self.config, self.precision, name="vision_model")(pixel_values)
        embeds = None
        if self.with_projection:
            embeds = nn.Dense(self.config.projection_dim, use_bias=False, precision=self.precision,
                              name="visual_projection")(pooled)
        return h, pooled, embeds


# ==================================================================================================
# Preprocessing
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class CLIPPreprocess:
    """transformers' ``CLIPImageProcessor`` settings (module docstring).

    Attributes:
      shortest_edge: resize so the shorter side has this length; or None with ``resize_to``.
      resize_to: (height, width) to resize to (``size = {"height", "width"}``); None with shortest_edge.
      crop_size: (height, width) of the centre crop, or None for no crop.
    """

    do_resize: bool = True
    shortest_edge: Optional[int] = 224
    resize_to: Optional[tuple] = None
    resample: int = 3
    crop_size: Optional[tuple] = (224, 224)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = OPENAI_CLIP_MEAN
    image_std: tuple = OPENAI_CLIP_STD
    source: str = "CLIP defaults"

    @classmethod
    def defaults_for(cls, config: CLIPVisionConfig) -> "CLIPPreprocess":
        """No ``preprocessor_config.json``: resize and crop to the model's ``image_size``, CLIP's mean/std."""
        s = config.image_size
        return cls(shortest_edge=s, crop_size=(s, s), source=f"CLIP defaults at image_size {s}")

    @classmethod
    def from_file(cls, path) -> "CLIPPreprocess":
        """Reads a ``preprocessor_config.json`` of a ``CLIPImageProcessor`` (or the older ``CLIPFeatureExtractor``).

        Raises:
          ValueError naming the file and the key.
        """
        path = Path(path)
        data = read_json(path, what="image preprocessor config")
        kind = data.get("image_processor_type", data.get("feature_extractor_type"))
        if kind is not None and kind not in ("CLIPImageProcessor", "CLIPImageProcessorFast", "CLIPFeatureExtractor"):
            raise ValueError(f"{path}: image_processor_type={kind!r} is not CLIPImageProcessor")
        known = {"do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                 "do_normalize", "image_mean", "image_std", "do_convert_rgb", "image_processor_type",
                 "feature_extractor_type", "processor_class", "default_to_square"}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{path}: unknown CLIPImageProcessor key(s) {', '.join(map(repr, unknown))}")

        def flag(name, default=True):
            value = data.get(name, default)
            if not isinstance(value, bool):
                raise ValueError(f"{path}: {name}={value!r} must be true or false")
            return value

        def side(value, name):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{path}: {name}={value!r} must be a positive integer")
            return value

        values: dict = {"source": str(path), "do_resize": flag("do_resize"), "do_rescale": flag("do_rescale"),
                        "do_normalize": flag("do_normalize")}
        if data.get("default_to_square", False):
            raise ValueError(f"{path}: default_to_square=true is not CLIP's preprocessing")
        size = data.get("size", {"shortest_edge": 224})
        if isinstance(size, int):  # CLIPFeatureExtractor: the shorter side
            values["shortest_edge"] = side(size, "size")
        elif isinstance(size, Mapping) and set(size) == {"shortest_edge"}:
            values["shortest_edge"] = side(size["shortest_edge"], "size.shortest_edge")
        elif isinstance(size, Mapping) and set(size) == {"height", "width"}:
            values["shortest_edge"] = None
            values["resize_to"] = (side(size["height"], "size.height"), side(size["width"], "size.width"))
        else:
            raise ValueError(f"{path}: size={size!r} must be an integer, {{'shortest_edge'}} or {{'height', 'width'}}")
        resample = data.get("resample", 3)
        if resample not in RESAMPLE:
            raise ValueError(f"{path}: resample={resample!r} is not supported (2 = bilinear, 3 = bicubic)")
        values["resample"] = resample
        if flag("do_center_crop"):
            crop = data.get("crop_size", {"height": 224, "width": 224})
            if isinstance(crop, int):
                values["crop_size"] = (side(crop, "crop_size"),) * 2
            elif isinstance(crop, Mapping) and set(crop) == {"height", "width"}:
                values["crop_size"] = (side(crop["height"], "crop_size.height"), side(crop["width"], "crop_size.width"))
            else:
                raise ValueError(f"{path}: crop_size={crop!r} must be an integer or {{'height', 'width'}}")
        else:
            values["crop_size"] = None
        factor = data.get("rescale_factor", 1 / 255)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
            raise ValueError(f"{path}: rescale_factor={factor!r} must be a positive number")
        values["rescale_factor"] = float(factor)
        for name, default in (("image_mean", OPENAI_CLIP_MEAN), ("image_std", OPENAI_CLIP_STD)):
            value = data.get(name, list(default))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value] * 3
            if (not isinstance(value, list) or len(value) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"{path}: {name}={value!r} must be three numbers (R, G, B)")
            values[name] = tuple(float(v) for v in value)
        if any(s <= 0 for s in values["image_std"]):
            raise ValueError(f"{path}: image_std={list(values['image_std'])} must be positive")
        if not flag("do_convert_rgb"):
            raise ValueError(f"{path}: do_convert_rgb=false is not supported (jaxmia feeds CLIP RGB images)")
        return cls(**values)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after the resize and the crop of an H×W image."""
        h, w = self._resized(height, width)
        return (h, w) if self.crop_size is None else tuple(self.crop_size)

    def _resized(self, height: int, width: int) -> tuple[int, int]:
        if not self.do_resize:
            return height, width
        if self.shortest_edge is None:
            return tuple(self.resize_to)
        s = self.shortest_edge
        if width <= height:
            return int(s * height / width), s
        return s, int(s * width / height)

    def __call__(self, images):
        """(B, H, W, C) in [−1, 1], C ∈ {1, 3} → (B, h, w, 3) float32 pixel values for the encoder. Jittable."""
        x = jnp.asarray(images, jnp.float32)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"CLIP preprocessing: images must be (B, H, W, 1 or 3), got shape {tuple(x.shape)}")
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        x = (x + 1.0) * 127.5  # the 0..255 values the processor starts from
        b, height, width, _ = x.shape
        h, w = self._resized(height, width)
        if (h, w) != (height, width):
            x = jax.image.resize(x, (b, h, w, 3), method=RESAMPLE[self.resample], antialias=True)
            x = jnp.clip(x, 0.0, 255.0)
        if self.crop_size is not None:
            ch, cw = self.crop_size
            pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
            if pad_h or pad_w:  # torchvision's centre crop pads a small image with zeros first
                x = jnp.pad(x, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2), (0, 0)))
                h, w = h + pad_h, w + pad_w
            top, left = int((h - ch) / 2.0), int((w - cw) / 2.0)
            x = x[:, top:top + ch, left:left + cw]
        if self.do_rescale:
            x = x * self.rescale_factor
        if self.do_normalize:
            x = (x - jnp.asarray(self.image_mean, jnp.float32)) / jnp.asarray(self.image_std, jnp.float32)
        return x

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# ==================================================================================================
# Loading and running
# ==================================================================================================


@functools.lru_cache(maxsize=16)
def abstract_params(config: CLIPVisionConfig, with_projection: bool) -> dict:
    module = CLIPVisionModel(config, with_projection)
    x = jnp.zeros((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), x))["params"]


def vision_state_dict_to_flax(state_dict: Mapping[str, Any], config: CLIPVisionConfig, *, architecture: str,
                              source: str = "state dict") -> tuple[dict, bool]:
    """transformers weights → (Flax tree, with_projection).

    Keys without ``vision_model.`` (transformers ≥ 5 ``CLIPVisionModel``) get it; a ``CLIPModel``'s
    ``text_model.*``, ``text_projection`` and ``logit_scale`` are left out; anything else the model
    does not declare is refused by name.
    """
    renamed = {}
    for key, value in state_dict.items():
        if architecture == "CLIPModel" and (key.startswith("text_model.") or key in ("text_projection.weight",
                                                                                    "logit_scale")):
            continue
        name = key if key.startswith((PREFIX, PROJECTION)) else PREFIX + key
        if name == POSITION_IDS_KEY:
            continue  # a buffer (0..n), recomputed here
        renamed[name] = value
    with_projection = "visual_projection.weight" in renamed
    expected = ARCHITECTURES[architecture]
    if expected and not with_projection:
        raise ValueError(f"{source}: a {architecture} needs 'visual_projection.weight', which the file lacks")
    if with_projection and not expected:
        raise ValueError(f"{source}: unexpected weight 'visual_projection.weight' for a {architecture} (the config's "
                         "architectures say it has no projection)")
    return convert.torch_to_flax(renamed, abstract_params(config, with_projection), source=source), with_projection


@dataclasses.dataclass(frozen=True)
class LoadedCLIPVision:
    """What :func:`load_clip_vision` returns."""

    module: CLIPVisionModel
    config: CLIPVisionConfig
    params: Any
    preprocess: CLIPPreprocess
    architecture: str
    weights_source: str


def _architecture(config: Mapping, state_keys, source: str) -> str:
    names = [a for a in (config.get("architectures") or []) if a in ARCHITECTURES]
    if len(names) > 1:
        raise ValueError(f"{source}: architectures lists several CLIP models {names}")
    if names:
        return names[0]
    if config.get("model_type") == "clip":
        return "CLIPModel"
    has_projection = any(k == "visual_projection.weight" for k in state_keys)
    return "CLIPVisionModelWithProjection" if has_projection else "CLIPVisionModel"


def load_clip_vision(folder) -> LoadedCLIPVision:
    """Loads a transformers ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` / ``CLIPModel`` folder.

    Raises:
      FileNotFoundError / ValueError with one line naming the file (and key).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: CLIP image encoder folder not found")
    config_path = folder / CONFIG_NAME
    raw = read_json(config_path, what="CLIP model config")
    config = CLIPVisionConfig.from_transformers(raw, source=str(config_path))
    state_dict, source = _read_state_dict(folder)
    architecture = _architecture(raw, state_dict.keys(), str(config_path))
    params, with_projection = vision_state_dict_to_flax(state_dict, config, architecture=architecture, source=source)
    pre_path = folder / PREPROCESSOR_NAME
    preprocess = CLIPPreprocess.from_file(pre_path) if pre_path.is_file() else CLIPPreprocess.defaults_for(config)
    out_hw = preprocess.output_size(config.image_size, config.image_size)
    if tuple(out_hw) != (config.image_size, config.image_size):
        raise ValueError(f"{preprocess.source}: preprocessing yields {out_hw[0]}x{out_hw[1]} images but the model "
                         f"takes image_size={config.image_size} ({config_path})")
    if config.num_channels != 3:
        raise ValueError(f"{config_path}: num_channels={config.num_channels}; CLIP image encoders take RGB (3)")
    return LoadedCLIPVision(CLIPVisionModel(config, with_projection), config,
                            jax.tree_util.tree_map(jnp.asarray, params), preprocess, architecture, source)


def encode_images(loaded: LoadedCLIPVision, params, images):
    """(pooled (B, D), image_embeds (B, P) or None) of images in [−1, 1] (B, H, W, C). Jittable."""
    pixel_values = loaded.preprocess(images)
    _, pooled, embeds = loaded.module.apply({"params": params}, pixel_values)
    return pooled, embeds


class CLIPImageEmbedder:
    """``embed_fn`` for :func:`jaxmia.drc.run_drc`: images (n, H, W, C) in [−1, 1] → (n, D) NumPy.

    The vector is ``image_embeds`` where the model has a projection (what CLIP compares), else the
    pooled output. Runs in fixed chunks of ``batch_size`` (the last one padded), one compilation per
    image shape. ``info`` describes the encoder for run metadata.
    """

    def __init__(self, loaded: LoadedCLIPVision, *, batch_size: int = 16, folder: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded, self.batch_size = loaded, int(batch_size)
        self.output = "image_embeds" if loaded.module.with_projection else "pooler_output"
        from jaxmia.models.formats import weights_digest

        self.info = {"kind": "clip_vision", "folder": folder, "architecture": loaded.architecture,
                     "output": self.output, "weights_digest": weights_digest(loaded.params),
                     "preprocess": loaded.preprocess.to_dict()}
        # Static: the loaded model (its module and preprocessing); jit retraces per image shape.
        self._run = jax.jit(self._embed)

    def _embed(self, params, images):
        pooled, embeds = encode_images(self.loaded, params, images)
        return pooled if embeds is None else embeds

    def __call__(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"CLIP embedder: images must be (n, H, W, C), got shape {images.shape}")
        out = []
        for lo in range(0, len(images), self.batch_size):
            chunk = images[lo:lo + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out.append(np.asarray(self._run(self.loaded.params, chunk))[: self.batch_size - pad])
        width = self.loaded.config.projection_dim if self.output == "image_embeds" else self.loaded.config.hidden_size
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def clip_image_embedder(folder, *, batch_size: int = 16) -> CLIPImageEmbedder:
    """:class:`CLIPImageEmbedder` of the CLIP folder ``folder`` (see :func:`load_clip_vision`)."""
    return CLIPImageEmbedder(load_clip_vision(folder), batch_size=batch_size, folder=str(folder))
