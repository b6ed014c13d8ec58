"""Reading and writing diffusers-format model folders, and :func:`load_denoiser`, the one entry point
from a path to a :class:`~jaxmia.models.denoiser.Denoiser`.

Formats (docs/methods/models.md §3):

* model folder: ``config.json`` (with ``_class_name``) plus ``diffusion_flax_model.msgpack``
  (Flax, read as is) or ``diffusion_pytorch_model.safetensors`` (PyTorch, converted without torch;
  a sharded ``.safetensors.index.json`` works too). Pickles (``.bin``, ``.pt``, ``.ckpt``,
  ``.pkl``) are refused: jaxmia never unpickles.
* pipeline folder: ``unet/`` or ``transformer/`` (the denoiser's model folder),
  ``scheduler/scheduler_config.json``, for latent pipelines ``vae/`` or ``vqvae/`` (the
  autoencoder, :mod:`jaxmia.models.vae`), optionally ``model_index.json``.

Network classes plug in through :data:`MODEL_BUILDERS`, keyed by the config's ``_class_name``
(``@register_model("UNet2DModel")``); the modules of :data:`OPTIONAL_MODEL_MODULES` register
theirs when first needed. Model *families* (schedules, latent scales, conventions of a published
model line) live in :mod:`jaxmia.models.families`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from jaxmia import schedule as sched
from jaxmia.fileio import read_json
from jaxmia.models import convert
from jaxmia.models.layout import DEMO_TARGET, SCHEDULER_HINT, ModelLayout, resolve_layout
from jaxmia.models.denoiser import COND_KINDS, Denoiser
from jaxmia.models.unet2d import UNet2DConfig, UNet2DModel, abstract_params

CONFIG_NAME = "config.json"
FLAX_WEIGHTS_NAME = "diffusion_flax_model.msgpack"
SAFETENSORS_NAME = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
LATENT_COMPONENTS = ("vae", "vqvae")

# The diffusers release whose Flax classes read diffusion_flax_model.msgpack (the last with Flax).
DIFFUSERS_FORMAT_VERSION = "0.39.0"


# ==================================================================================================
# Registry of model families
# ==================================================================================================


class ModelSpec(NamedTuple):
    """What a model family tells the loader about one config.

    Attributes:
      module: the Flax module.
      config: the family's typed, frozen config.
      abstract_params: the parameter tree as ``jax.ShapeDtypeStruct`` leaves.
      apply_fn: ``(params, x[B,H,W,C], t[B], cond) -> output[B,H,W,C_out]``.
      sample_shape: (H, W, C) of the network input, or None when the config does not say.
      out_channels: channels of the output (C for ε, 2C for ε plus a learned variance).
      cond_kind: ``none``, ``class`` or a kind no attack supports (refused by :func:`load_denoiser`).
    """

    module: Any
    config: Any
    abstract_params: Any
    apply_fn: Callable
    sample_shape: Optional[tuple]
    out_channels: int
    cond_kind: str


MODEL_BUILDERS: dict[str, Callable[..., ModelSpec]] = {}


def register_model(class_name: str):
    """Registers ``builder(config_dict, *, source) -> ModelSpec`` for a diffusers ``_class_name``."""

    def decorate(builder):
        MODEL_BUILDERS[class_name] = builder
        return builder

    return decorate


# Modules that register more model classes; imported on first use (they import this module).
OPTIONAL_MODEL_MODULES = ("jaxmia.models.vae", "jaxmia.models.unet2d_condition", "jaxmia.models.dit",
                          "jaxmia.models.dit_official", "jaxmia.models.uvit", "jaxmia.models.class_token")


def _ensure_registered() -> None:
    """Imports the model modules of :data:`OPTIONAL_MODEL_MODULES` that exist, so their
    ``@register_model`` classes are known. An import error in one of them is raised, not hidden."""
    for name in OPTIONAL_MODEL_MODULES:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def build_model(config: Mapping[str, Any], *, source: str = "config") -> ModelSpec:
    """Dispatches on ``_class_name``; an absent or unknown class name is refused by name."""
    _ensure_registered()
    class_name = config.get("_class_name") if isinstance(config, Mapping) else None
    if class_name is None:
        raise ValueError(f"{source}: no _class_name; expected one of {', '.join(sorted(MODEL_BUILDERS))}")
    if class_name not in MODEL_BUILDERS:
        raise ValueError(f"{source}: model class {class_name!r} is not supported "
                         f"(supported: {', '.join(sorted(MODEL_BUILDERS))})")
    return MODEL_BUILDERS[class_name](config, source=source)


def _unet2d_apply(module: UNet2DModel, params, x, t, cond):
    return module.apply({"params": params}, x, t, cond)


@register_model("UNet2DModel")
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


# ==================================================================================================
# Files
# ==================================================================================================


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Reads a safetensors file into NumPy without torch; bfloat16 tensors come back as float32.

    ``safetensors.numpy`` has no bfloat16, so those tensors are decoded from the raw bytes
    (bfloat16 is the upper half of a float32).
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        out = {}
        bf16 = {k: v for k, v in header.items() if k != "__metadata__" and v["dtype"] == "BF16"}
        if len(bf16) < len([k for k in header if k != "__metadata__"]):
            with safe_open(str(path), framework="np") as f:
                for name in f.keys():
                    if name not in bf16:
                        out[name] = f.get_tensor(name)
        if bf16:
            raw = np.memmap(path, dtype=np.uint8, mode="r")
            base = 8 + header_len
            for name, info in bf16.items():
                start, end = info["data_offsets"]
                bits = np.frombuffer(raw[base + start: base + end].tobytes(), "<u2").astype(np.uint32) << 16
                out[name] = bits.view(np.float32).reshape(info["shape"])
    except Exception as err:  # OSError, JSON errors, safetensors' own SafetensorError, bad offsets ...
        raise ValueError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    return out


def _read_sharded_safetensors(index_path: Path) -> dict[str, np.ndarray]:
    index = read_json(index_path, what="safetensors index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: no 'weight_map' object")
    out = {}
    for shard in sorted(set(weight_map.values())):
        out.update(read_safetensors(index_path.parent / shard))
    return out


def _refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder / pickles[0]}: a pickle file; jaxmia never unpickles. Re-save the weights as safetensors "
            f"(diffusers: model.save_pretrained(dir, safe_serialization=True)) or as Flax msgpack")
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise FileNotFoundError(f"{folder}: no weights ({FLAX_WEIGHTS_NAME} or {SAFETENSORS_NAME}); found {found}")


def read_params(folder: Path, spec: ModelSpec) -> dict:
    """The parameter tree of a model folder (float32 NumPy), checked against ``spec``."""
    folder = Path(folder)
    flax_file, st_file, index_file = folder / FLAX_WEIGHTS_NAME, folder / SAFETENSORS_NAME, folder / SAFETENSORS_INDEX_NAME
    if flax_file.is_file():
        try:
            tree = serialization.msgpack_restore(flax_file.read_bytes())
        except Exception as err:  # msgpack raises several unrelated types for corrupt input
            raise ValueError(f"{flax_file}: not a valid Flax msgpack file ({type(err).__name__}: {err})") from None
        return convert.check_params(tree, spec.abstract_params, source=str(flax_file))
    if st_file.is_file():
        return convert.torch_to_flax(read_safetensors(st_file), spec.abstract_params, source=str(st_file))
    if index_file.is_file():
        return convert.torch_to_flax(_read_sharded_safetensors(index_file), spec.abstract_params,
                                     source=str(index_file))
    _refuse_pickles(folder)


def _load_model(folder) -> tuple[ModelSpec, dict]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: model folder not found")
    config_path = folder / CONFIG_NAME
    spec = build_model(read_json(config_path, what="model config"), source=str(config_path))
    params = read_params(folder, spec)
    return spec, jax.tree_util.tree_map(jnp.asarray, params)


def load_unet(folder) -> tuple[Any, Any, dict]:
    """Loads a diffusers model folder: returns ``(module, config, params)``.

    ``folder`` holds ``config.json`` and either ``diffusion_flax_model.msgpack`` (preferred when both
    exist) or ``diffusion_pytorch_model.safetensors``. The module is chosen by ``_class_name``
    (:data:`MODEL_BUILDERS`). Params are float32 JAX arrays named as in diffusers (§4).

    Raises:
      FileNotFoundError / ValueError with one line naming the file (and the key): missing config,
      unknown class or config key, a pickle-only folder, a corrupt file, a weight that does not fit.
    """
    spec, params = _load_model(folder)
    return spec.module, spec.config, params


def save_unet(folder, config, params) -> Path:
    """Writes ``config.json`` + ``diffusion_flax_model.msgpack`` (what Flax ``save_pretrained`` writes).

    ``config`` is a diffusers config dict (``_class_name`` defaults to ``UNet2DModel``) or a
    :class:`UNet2DConfig`. The resolved config (every field explicit) is written; the params are
    checked against it first, so a folder that would not load is never written. Reloading gives the
    params back bit for bit.
    """
    if hasattr(config, "to_diffusers"):  # a typed config of any registered class
        config = config.to_diffusers()
    config = {"_class_name": "UNet2DModel", **dict(config)}
    folder = Path(folder)
    spec = build_model(config, source=f"config for {folder}")
    params = convert.check_params(jax.device_get(params), spec.abstract_params, source=f"params for {folder}")
    resolved = {**spec.config.to_diffusers(), "_diffusers_version": DIFFUSERS_FORMAT_VERSION}
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / CONFIG_NAME, (json.dumps(resolved, indent=2, sort_keys=True) + "\n").encode())
    _atomic_write(folder / FLAX_WEIGHTS_NAME, serialization.msgpack_serialize(params))
    return folder


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def weights_digest(params) -> str:
    """SHA-256 over the parameter leaves sorted by path: name, dtype, shape and little-endian bytes."""
    digest = hashlib.sha256()
    flat = traverse_util.flatten_dict(jax.device_get(params))
    for path in sorted(flat, key=lambda p: "/".join(map(str, p))):
        array = np.asarray(flat[path])
        array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
        digest.update(f"{'/'.join(map(str, path))}\0{array.dtype.name}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


# ==================================================================================================
# load_denoiser
# ==================================================================================================


def model_roles() -> dict[str, str]:
    """Every registered class name -> ``denoiser`` or ``autoencoder`` (for :func:`resolve_layout`)."""
    _ensure_registered()
    return {name: "autoencoder" if name in AUTOENCODER_CLASSES else "denoiser" for name in MODEL_BUILDERS}


def resolve(path, *, scheduler=None) -> ModelLayout:
    """The :class:`~jaxmia.models.layout.ModelLayout` of ``path`` with every registered class known."""
    return resolve_layout(path, roles=model_roles(), scheduler=scheduler)


def _same_value(a, b) -> bool:
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if number(a) and number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _scheduler_config_with_family(config: dict, family, source) -> dict:
    """The folder's scheduler config with the family's values filled in where it is silent.

    A key the folder states must agree with the family (floats to 1e-9 relative); ``trained_betas``
    must match the family's β table (1e-7). Any disagreement is refused, naming both values.
    """
    wanted = family.schedule.as_scheduler_config()
    merged = dict(config)
    compared = dict(wanted)
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], np.float64)
        reference = sched.beta_table(wanted["beta_schedule"], wanted["num_train_timesteps"], wanted["beta_start"],
                                     wanted["beta_end"])
        if betas.shape != reference.shape or not np.allclose(betas, reference, rtol=0, atol=1e-7):
            raise ValueError(f"{source}: trained_betas differ from family {family.name!r}'s "
                             f"{wanted['beta_schedule']} betas {wanted['beta_start']}..{wanted['beta_end']} "
                             f"(T={wanted['num_train_timesteps']})")
        for key in ("beta_schedule", "beta_start", "beta_end"):  # diffusers ignores them beside trained_betas
            compared.pop(key)
    for key, want in compared.items():
        if key in config and not _same_value(config[key], want):
            raise ValueError(f"{source}: {key}={config[key]!r} conflicts with model family {family.name!r} "
                             f"({key}={want!r}); correct the file or load without the family")
        merged.setdefault(key, want)
    return merged


def _resolve_schedule(schedule, layout: ModelLayout, family) -> tuple[sched.Schedule, str]:
    """The schedule and where it came from: ``schedule=``, the layout's scheduler config (checked
    against the family, which fills keys the file lacks), else the family's reference schedule."""
    if schedule is not None:
        if not isinstance(schedule, sched.Schedule):
            raise TypeError(f"schedule must be a jaxmia.schedule.Schedule, got {type(schedule).__name__}")
        return schedule, "given as a Schedule"
    found = layout.scheduler_config
    if found is None:
        if family is not None:
            return family.make_schedule(), f"model family {family.name!r} ({family.path})"
        from jaxmia.models.families import list_families

        raise FileNotFoundError(f"{layout.model_dir}: no scheduler config (looked for "
                                f"{', '.join(map(str, layout.scheduler_searched))}); {SCHEDULER_HINT}; known "
                                f"families: {', '.join(list_families())}")
    config = read_json(found, what="scheduler config")
    how = f"{found} ({layout.scheduler_source})"
    if family is not None:
        config = _scheduler_config_with_family(config, family, found)
        how += f", checked against model family {family.name!r}"
    return sched.schedule_from_config(config, source=str(found)), how


def _check_family_denoiser(family, cond_kind: str, learned_sigma: bool, latent: bool, source) -> None:
    def refuse(what, folder, fam):
        raise ValueError(f"{source}: {what} is {folder} but model family {family.name!r} says {fam}")

    if family.is_latent != latent:
        refuse("the model", "a latent pipeline" if latent else "pixel-space",
               f"latent kind {family.latent.kind!r}")
    if family.conditioning.kind != cond_kind:
        refuse("the conditioning", repr(cond_kind), repr(family.conditioning.kind))
    if family.learned_sigma != learned_sigma:
        refuse("learned_sigma", learned_sigma, family.learned_sigma)


def _latent_codec(layout: ModelLayout, family, encode: Optional[str], quantize_on_decode: bool):
    """(codec, encoder params, encoder digest) of a latent pipeline's autoencoder."""
    from jaxmia.models import vae  # imports this module: a lazy import

    enc_spec, enc_params = _load_model(layout.encoder_dir)
    source = layout.encoder_dir / CONFIG_NAME
    if not vae.is_autoencoder(enc_spec):
        raise ValueError(f"{source}: {type(enc_spec.config).__name__} is not an autoencoder "
                         f"({', '.join(vae.ENCODE_MODES)})")
    class_name = enc_spec.config.class_name
    scale, mode = None, encode
    if family is not None:
        if family.latent.autoencoder_class != class_name:
            raise ValueError(f"{source}: the autoencoder is {class_name} but model family {family.name!r} uses "
                             f"{family.latent.autoencoder_class}")
        raw = read_json(source, what="model config")
        if "scaling_factor" in raw and not _same_value(raw["scaling_factor"], family.latent.scale):
            raise ValueError(f"{source}: scaling_factor={raw['scaling_factor']!r} conflicts with model family "
                             f"{family.name!r} (latent scale {family.latent.scale!r}); correct the file or load "
                             f"without the family")
        scale = family.latent.scale
        mode = family.latent.encode if encode is None else encode
    codec = vae.latent_codec(enc_spec, mode=mode, scale=scale, quantize_on_decode=quantize_on_decode,
                             source=str(source))
    return codec, enc_params, weights_digest(enc_params)


def _is_autoencoder(spec: ModelSpec) -> bool:
    from jaxmia.models import vae  # imports this module: a lazy import

    return vae.is_autoencoder(spec)


def load_denoiser(path, *, schedule: Optional[sched.Schedule] = None, scheduler=None, family=None,
                  encode: Optional[str] = None, quantize_on_decode: bool = True) -> Denoiser:
    """Loads a diffusion model (pixel-space or latent) as a :class:`Denoiser`.

    Args:
      path: a pipeline folder (``model_index.json`` naming its components, or component folders
        recognised by their ``config.json``: the denoiser, for latent models the autoencoder, the
        scheduler); a pixel-space model folder (``config.json`` + weights) with
        ``scheduler_config.json`` beside ``config.json``, in ``scheduler/`` inside it or in
        ``../scheduler/``; or ``"demo"`` for the bundled demo target (:data:`DEMO_TARGET`). See
        :mod:`jaxmia.models.layout`.
      schedule: the noise schedule; overrides the scheduler config (and the family) when given.
      scheduler: a ``scheduler_config.json`` (or a folder holding one) to use instead of the
        folder's own (the CLI's ``--scheduler``).
      family: a model family name (``configs/families/<name>.toml``) or
        :class:`~jaxmia.models.families.Family`. It fills what the folder lacks (a missing
        scheduler config or key, e.g. U-ViT's ``first_index_clean``; an absent ``scaling_factor``)
        and sets the encode mode; any disagreement with the folder is refused. Without a family
        nothing is assumed: the schedule comes from the folder, the scale from the autoencoder's
        config (diffusers' meaning of an absent key), the encode mode is the autoencoder's default.
      encode: latent pipelines only: ``"sample"`` (AutoencoderKL default: one posterior draw per
        image, keyed by (seed, id, "encode"), docs/methods/cdi.md §9) or ``"mean"``; VQModel
        ``"pre_quantization"`` (default) or ``"quantized"``. Overrides the family's mode.
      quantize_on_decode: VQModel pipelines: ``decode_fn`` quantises first (diffusers' default).

    Returns:
      A Denoiser: ``apply_fn(params, x[B,H,W,C], t[B], cond)`` runs the network (cond: (B,) int
      labels for class-conditional models, (B, L, D) embeddings for text, else None);
      ``learned_sigma`` when the network outputs 2C channels. Pixel models: ``x0_clip=1.0`` and
      ``digest`` the :func:`weights_digest` of the params. Latent models: ``sample_shape`` is the
      latent shape, ``image_shape`` the pixel shape (latent side × the autoencoder's downsampling),
      ``encode_fn``/``decode_fn``/``encoder_params`` set, ``x0_clip=None``, and ``digest`` covers
      both networks, the encode mode and the latent scale.
    """
    return _load_denoiser(path, schedule=schedule, scheduler=scheduler, family=family, encode=encode,
                          quantize_on_decode=quantize_on_decode)[0]


def _load_denoiser(path, *, schedule=None, scheduler=None, family=None, encode=None,
                   quantize_on_decode=True) -> tuple[Denoiser, dict]:
    """:func:`load_denoiser`, plus what was found where (for ``jaxmia inspect`` and reports)."""
    from jaxmia.models import families as model_families

    layout = resolve(path, scheduler=scheduler)
    fam = None if family is None else model_families.load_family(family)
    if encode is not None and layout.encoder_dir is None:
        raise ValueError(f"{layout.model_dir}: encode={encode!r} applies to latent pipelines only")
    spec, params = _load_model(layout.model_dir)
    source = layout.model_dir / CONFIG_NAME
    if _is_autoencoder(spec):
        raise ValueError(f"{source}: a {spec.config.class_name} is an autoencoder, not a denoiser; load the "
                         f"pipeline folder that holds it")
    if spec.sample_shape is None:
        raise ValueError(f"{source}: sample_size is null; jaxmia needs the model's input size")
    if spec.cond_kind not in COND_KINDS:
        raise ValueError(f"{source}: {spec.cond_kind!r} conditioning (e.g. class_embed_type='identity') is not "
                         f"supported by jaxmia's attacks")
    channels = spec.sample_shape[-1]
    if spec.out_channels not in (channels, 2 * channels):
        raise ValueError(f"{source}: out_channels={spec.out_channels} is neither in_channels={channels} (ε) "
                         f"nor {2 * channels} (ε and a learned variance)")
    learned_sigma = spec.out_channels == 2 * channels
    if fam is not None:
        _check_family_denoiser(fam, spec.cond_kind, learned_sigma, layout.encoder_dir is not None, source)
    schedule, schedule_source = _resolve_schedule(schedule, layout, fam)
    info = {"layout": layout, "spec": spec, "family": fam, "schedule_source": schedule_source, "codec": None}
    common = dict(params=params, schedule=schedule, apply_fn=spec.apply_fn, sample_shape=tuple(spec.sample_shape),
                  cond_kind=spec.cond_kind, learned_sigma=learned_sigma)
    if layout.encoder_dir is None:
        return Denoiser(**common, x0_clip=1.0, digest=weights_digest(params)), info

    codec, encoder_params, encoder_digest = _latent_codec(layout, fam, encode, quantize_on_decode)
    info["codec"] = codec
    if codec.latent_channels != channels:
        raise ValueError(f"{source}: the denoiser takes {channels} channels but the autoencoder in "
                         f"{layout.encoder_dir} makes {codec.latent_channels}-channel latents")
    identity = json.dumps({"denoiser": weights_digest(params), "autoencoder": encoder_digest, "encode": codec.mode,
                           "scale": codec.scale, "shift": codec.shift, "quantize_on_decode": bool(quantize_on_decode)},
                          sort_keys=True)
    return Denoiser(
        **common,
        x0_clip=None,  # latents are unbounded
        encoder_params=encoder_params,
        encode_fn=codec.encode_fn,
        decode_fn=codec.decode_fn,
        image_shape=codec.image_shape(spec.sample_shape),
        digest=hashlib.sha256(identity.encode()).hexdigest(),
    ), info


# ==================================================================================================
# Conversion to jaxmia's Flax folders
# ==================================================================================================

CONVERT_FORMATS = ("auto", "pytorch-ddpm", "diffusers")


def require_empty_folder(dst: Path) -> None:
    """Conversions write into a new or empty folder only, so nothing stale is mixed in."""
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst}: the destination exists and is not an empty folder; choose a new one")


def _is_model_folder(folder: Path) -> bool:
    """A diffusers model folder of a registered class (not a transformers or scheduler folder)."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return False
    _ensure_registered()
    return read_json(config_path, what="model config").get("_class_name") in MODEL_BUILDERS


def convert_diffusers_folder(src, dst) -> dict:
    """Converts a diffusers PyTorch folder (safetensors weights) into jaxmia's Flax format.

    ``src`` is a model folder (``config.json`` of a registered class + safetensors), or a pipeline
    folder: each component of a registered class is converted (:func:`load_unet` + :func:`save_unet`:
    every weight checked against the config); other components (``scheduler/``, ``tokenizer/``,
    ``text_encoder/``, ...) and ``model_index.json`` are copied as they are, except pickle files
    (``.bin``, ``.pt``, ...), which are left out and listed. ``dst`` must be new or empty.

    Returns:
      ``{"converted": {component: weights digest}, "copied": [...], "skipped_pickles": [...]}``
      (component "." for a model folder).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: diffusers folder not found")
    require_empty_folder(dst)
    report = {"converted": {}, "copied": [], "skipped_pickles": []}

    def convert_model(folder: Path, out: Path, name: str) -> None:
        spec, params = _load_model(folder)
        save_unet(out, spec.config, params)
        report["converted"][name] = weights_digest(params)
        for extra in sorted(folder.iterdir()):  # a scheduler config beside a model folder
            if extra.name == SCHEDULER_CONFIG_NAME:
                shutil.copy2(extra, out / extra.name)
                report["copied"].append(str(Path(name) / extra.name))

    def copy_tree(folder: Path, out: Path, name: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for item in sorted(folder.iterdir()):
            rel = str(Path(name) / item.name) if name != "." else item.name
            if item.is_dir():
                copy_tree(item, out / item.name, rel)
            elif item.suffix in PICKLE_SUFFIXES:
                report["skipped_pickles"].append(rel)
            else:
                shutil.copy2(item, out / item.name)
                report["copied"].append(rel)

    if _is_model_folder(src):
        convert_model(src, dst, ".")
        return report
    components = [p for p in sorted(src.iterdir()) if p.is_dir()]
    if not any(_is_model_folder(p) for p in components):
        raise FileNotFoundError(f"{src}: neither a diffusers model folder ({CONFIG_NAME} of a supported class: "
                                f"{', '.join(sorted(MODEL_BUILDERS))}) nor a pipeline holding one")
    dst.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.is_dir() and _is_model_folder(item):
            convert_model(item, dst / item.name, item.name)
        elif item.is_dir():
            copy_tree(item, dst / item.name, item.name)
        elif item.suffix in PICKLE_SUFFIXES:
            report["skipped_pickles"].append(item.name)
        else:
            shutil.copy2(item, dst / item.name)
            report["copied"].append(item.name)
    return report


def convert_checkpoint(src, dst, *, format: str = "auto", ema: bool = True, flagfile=None,
                       assume_cifar10_defaults: bool = False, options=None, torch_legacy: bool = False) -> dict:
    """``jaxmia convert``: a pytorch-ddpm ``.pt`` (:mod:`jaxmia.models.pytorch_ddpm`), a diffusers
    PyTorch folder (:func:`convert_diffusers_folder`) or an official checkpoint of a model CDI audits
    (:mod:`jaxmia.models.official`: ``--format dit``, ``uvit``, ``ldm``, ...) into a folder
    :func:`load_denoiser` reads.

    ``format="auto"`` picks ``pytorch-ddpm`` for a file and ``diffusers`` for a folder; the choice is
    returned under ``"format"``. ``ema``, ``flagfile`` and ``assume_cifar10_defaults`` apply to
    pytorch-ddpm only and are refused with ``diffusers``. ``options`` (``--option KEY=VALUE``) go to
    an official format's converter; ``torch_legacy`` lets it read pre-zip torch pickles with
    ``torch.load(weights_only=True)``.
    """
    from jaxmia.models import official, pytorch_ddpm
    from jaxmia.models.torch_checkpoint import legacy_pickles_allowed

    src = Path(src)
    if format in official.FORMATS:
        if not src.exists():
            raise FileNotFoundError(f"{src}: conversion source not found")
        with legacy_pickles_allowed(torch_legacy):
            return official.convert_official(format, src, dst, options)
    if options:
        raise ValueError(f"--option applies to the official formats ({', '.join(sorted(official.FORMATS))}), "
                         f"not to --format {format}")
    if format not in CONVERT_FORMATS:
        known = ", ".join(list(CONVERT_FORMATS) + sorted(official.FORMATS))
        raise ValueError(f"unknown conversion format {format!r} (known: {known})")
    if not src.exists():
        raise FileNotFoundError(f"{src}: conversion source not found")
    if format == "auto":
        format = "diffusers" if src.is_dir() else "pytorch-ddpm"
    if format == "diffusers":
        if not ema or flagfile is not None or assume_cifar10_defaults:
            raise ValueError("--no-ema, --flagfile and --assume-cifar10-defaults apply to --format pytorch-ddpm only")
        return {"format": format, **convert_diffusers_folder(src, dst)}
    if src.is_dir():
        raise ValueError(f"{src}: a folder; --format pytorch-ddpm converts a checkpoint file (.pt)")
    return {**pytorch_ddpm.convert_pytorch_ddpm(src, dst, ema=ema, flagfile=flagfile,
                                                 assume_cifar10_defaults=assume_cifar10_defaults),
            "format": format}
