"""Conversion into jaxmia's Flax model folders (``jaxmia convert``, docs/methods/models.md §4).

* a diffusers PyTorch folder (safetensors): :func:`convert_diffusers_folder`;
* a pytorch-ddpm ``.pt`` checkpoint: :mod:`jaxmia.models.pytorch_ddpm`;
* an official checkpoint of a model CDI audits (DiT, U-ViT, LDM, ...): :mod:`jaxmia.models.official`.

:func:`convert_checkpoint` dispatches on the format. Every converted folder is written by
:func:`jaxmia.models.loading.save_unet`, so every weight is checked against its config first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jaxmia.fileio import read_json
from jaxmia.models import official, pytorch_ddpm
from jaxmia.models.formats import CONFIG_NAME, PICKLE_SUFFIXES, SCHEDULER_CONFIG_NAME, require_empty_folder, weights_digest
from jaxmia.models.loading import load_model, save_unet
from jaxmia.models.registry import MODEL_REGISTRY, registered_classes
from jaxmia.models.torch_checkpoint import legacy_pickles_allowed

CONVERT_FORMATS = ("auto", "pytorch-ddpm", "diffusers")


def _is_model_folder(folder: Path) -> bool:
    """A diffusers model folder of a registered class (not a transformers or scheduler folder)."""
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        return False
    return read_json(config_path, what="model config").get("_class_name") in MODEL_REGISTRY


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
        spec, params = load_model(folder)
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
                                f"{', '.join(registered_classes())}) nor a pipeline holding one")
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
