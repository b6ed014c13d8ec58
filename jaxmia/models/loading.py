"""From a folder to a :class:`~jaxmia.models.denoiser.Denoiser`: :func:`load_denoiser`, the one entry
point, plus :func:`load_unet` / :func:`save_unet` for a single model folder.

A model folder's ``config.json`` names its class (``_class_name``), built by the registry
(:mod:`jaxmia.models.registry`); its weights are read by :mod:`jaxmia.models.formats` and checked
against the class's parameter tree (:mod:`jaxmia.models.convert`). Where a pipeline's parts live is
:mod:`jaxmia.models.layout`'s job. This module also reconciles a folder with a model *family*
(:mod:`jaxmia.models.families`: schedule, latent scale, conditioning) and wires a latent pipeline's
autoencoder in as the denoiser's encoder (:mod:`jaxmia.models.vae`). docs/methods/models.md §3, §6.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import schedule as sched
from jaxmia.fileio import read_json
from jaxmia.models import convert, families, vae
from jaxmia.models.denoiser import COND_KINDS, Denoiser
from jaxmia.models.formats import (CONFIG_NAME, DIFFUSERS_FORMAT_VERSION, FLAX_WEIGHTS_NAME, SAFETENSORS_INDEX_NAME,
                                   SAFETENSORS_NAME, read_msgpack, read_safetensors, read_sharded_safetensors,
                                   refuse_pickles, weights_digest, write_json, write_msgpack)
from jaxmia.models.layout import SCHEDULER_HINT, ModelLayout, resolve_layout
from jaxmia.models.registry import ModelSpec, build_model, model_entry, model_roles


def read_params(folder: Path, spec: ModelSpec) -> dict:
    """The parameter tree of a model folder (float32 NumPy), checked against ``spec``."""
    folder = Path(folder)
    flax_file, st_file, index_file = folder / FLAX_WEIGHTS_NAME, folder / SAFETENSORS_NAME, folder / SAFETENSORS_INDEX_NAME
    if flax_file.is_file():
        return convert.check_params(read_msgpack(flax_file), spec.abstract_params, source=str(flax_file))
    if st_file.is_file():
        return convert.torch_to_flax(read_safetensors(st_file), spec.abstract_params, source=str(st_file))
    if index_file.is_file():
        return convert.torch_to_flax(read_sharded_safetensors(index_file), spec.abstract_params,
                                     source=str(index_file))
    refuse_pickles(folder)


def load_model(folder) -> tuple[ModelSpec, dict]:
    """The registered class of a model folder and its parameters (float32 JAX arrays)."""
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
    (:mod:`jaxmia.models.registry`). Params are float32 JAX arrays named as in diffusers (§4).

    Raises:
      FileNotFoundError / ValueError with one line naming the file (and the key): missing config,
      unknown class or config key, a pickle-only folder, a corrupt file, a weight that does not fit.
    """
    spec, params = load_model(folder)
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
    write_json(folder / CONFIG_NAME, resolved)
    write_msgpack(folder / FLAX_WEIGHTS_NAME, params)
    return folder



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
        raise FileNotFoundError(f"{layout.model_dir}: no scheduler config (looked for "
                                f"{', '.join(map(str, layout.scheduler_searched))}); {SCHEDULER_HINT}; known "
                                f"families: {', '.join(families.list_families())}")
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
    enc_spec, enc_params = load_model(layout.encoder_dir)
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
    layout = resolve(path, scheduler=scheduler)
    fam = None if family is None else families.load_family(family)
    if encode is not None and layout.encoder_dir is None:
        raise ValueError(f"{layout.model_dir}: encode={encode!r} applies to latent pipelines only")
    spec, params = load_model(layout.model_dir)
    source = layout.model_dir / CONFIG_NAME
    class_name = read_json(source, what="model config")["_class_name"]
    if model_entry(class_name, source=str(source)).role == "autoencoder":
        raise ValueError(f"{source}: a {class_name} is an autoencoder, not a denoiser; load the "
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
