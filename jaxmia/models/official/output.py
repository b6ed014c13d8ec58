"""What the DiT and U-ViT converters share: option parsing, the key check, the pipeline folder.

Options arrive as strings (``--option KEY=VALUE``); each parser names the option and the value it
refused. :func:`check_keys` reports every missing and unexpected key by its official name (the
official loaders of LDM pass ``strict=False``; jaxmia never does). :func:`write_pipeline` writes
the folder :func:`jaxmia.models.load_denoiser` reads: ``transformer/``, ``vae/`` (latent models),
``scheduler/scheduler_config.json``, ``model_index.json`` and ``jaxmia_conversion.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from flax import traverse_util

from jaxmia.fileio import file_sha256

CONVERSION_RECORD_NAME = "jaxmia_conversion.json"


def int_option(options: Mapping[str, str], key: str, fmt: str) -> Optional[int]:
    if options.get(key) is None:
        return None
    text = str(options[key]).strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--format {fmt}: option {key}={text!r} must be an integer") from None
    return value


def float_option(options: Mapping[str, str], key: str, fmt: str) -> Optional[float]:
    if options.get(key) is None:
        return None
    text = str(options[key]).strip()
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--format {fmt}: option {key}={text!r} must be a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"--format {fmt}: option {key}={text!r} must be a positive number")
    return value


def choice_option(options: Mapping[str, str], key: str, choices: Sequence[str], fmt: str) -> str:
    """The option's value, one of ``choices``; the first choice when absent."""
    if options.get(key) is None:
        return choices[0]
    text = str(options[key]).strip()
    if text not in choices:
        raise ValueError(f"--format {fmt}: option {key}={text!r} is not one of {', '.join(choices)}")
    return text


def path_option(options: Mapping[str, str], key: str, fmt: str, *, folder: bool) -> Optional[Path]:
    if options.get(key) is None:
        return None
    path = Path(str(options[key]).strip())
    if folder and not path.is_dir():
        raise FileNotFoundError(f"--format {fmt}: option {key}={path}: folder not found")
    if not folder and not path.is_file():
        raise FileNotFoundError(f"--format {fmt}: option {key}={path}: file not found")
    return path


def num_heads(options: Mapping[str, str], width: int, official: Mapping[int, int], fmt: str, what: str) -> int:
    """``num_heads`` from the option, else the official model of that width; not in the file's shapes."""
    heads = int_option(options, "num_heads", fmt)
    if heads is None:
        if width not in official:
            known = ", ".join(f"{w}: {h}" for w, h in sorted(official.items()))
            raise ValueError(f"--format {fmt}: {what} {width} is not an official size ({known}); the head count is "
                             f"not in the checkpoint, pass --option num_heads=N")
        heads = official[width]
    if heads < 1 or width % heads:
        raise ValueError(f"--format {fmt}: num_heads={heads} must be positive and divide {what} {width}")
    return heads


def require(state: Mapping[str, np.ndarray], key: str, source: str, ndim: int) -> tuple:
    """The shape of ``state[key]``, which the architecture is read from; absent or mis-ranked: refused."""
    if key not in state:
        raise ValueError(f"{source}: missing key {key!r}, needed to read the architecture")
    shape = tuple(np.shape(state[key]))
    if len(shape) != ndim:
        raise ValueError(f"{source}: {key!r} has shape {shape}, expected a {ndim}-D tensor")
    return shape


def count_indexed(state: Mapping[str, Any], prefix: str, suffix: str, source: str) -> int:
    """How many ``<prefix><i><suffix>`` keys exist, i = 0, 1, ... (a gap is refused)."""
    found = set()
    for key in state:
        if key.startswith(prefix) and key.endswith(suffix):
            middle = key[len(prefix): len(key) - len(suffix)]
            if middle.isdigit():
                found.add(int(middle))
    n = len(found)
    if found and found != set(range(n)):
        gaps = sorted(set(range(max(found) + 1)) - found)
        raise ValueError(f"{source}: {prefix}<i>{suffix} is missing for i = {', '.join(map(str, gaps))}")
    return n


def check_keys(found, expected, source: str, *, what: str = "checkpoint", prefix: str = "",
               quote: bool = False) -> None:
    """Refuses any missing or unexpected key, naming every one of them (``prefix`` + key: the full
    checkpoint name; official loaders with ``strict=False`` would skip them silently)."""
    found, expected = set(found), set(expected)
    missing = sorted(prefix + k for k in expected - found)
    unexpected = sorted(prefix + k for k in found - expected)
    if missing or unexpected:
        name = repr if quote else str
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(map(name, missing))}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(map(name, unexpected))}")
        raise ValueError(f"{source}: the {what} does not match the architecture read from its shapes and config; "
                         + "; ".join(parts))


def n_params(params) -> int:
    return int(sum(np.size(v) for v in traverse_util.flatten_dict(params).values()))


def write_pipeline(dst: Path, *, pipeline_class: str, denoiser_config, denoiser_params, scheduler_config: dict,
                   vae=None, record: dict) -> dict:
    """Writes the pipeline folder and returns the conversion record (also ``jaxmia_conversion.json``).

    ``vae``: ``(AutoencoderKLConfig, params)`` or None (pixel-space model). Each model is checked
    against its config before anything is written (:func:`jaxmia.models.loading.save_unet`).
    """
    from jaxmia.models.formats import require_empty_folder, weights_digest
    from jaxmia.models.loading import save_unet

    dst = Path(dst)
    require_empty_folder(dst)
    save_unet(dst / "transformer", denoiser_config, denoiser_params)
    index = {"_class_name": pipeline_class, "_diffusers_version": "0.39.0",
             "transformer": ["jaxmia", denoiser_config.to_diffusers()["_class_name"]],
             "scheduler": ["diffusers", scheduler_config.get("_class_name", "DDPMScheduler")]}
    digests = {"transformer": weights_digest(denoiser_params)}
    if vae is not None:
        save_unet(dst / "vae", vae[0], vae[1])
        index["vae"] = ["diffusers", "AutoencoderKL"]
        digests["vae"] = weights_digest(vae[1])
    (dst / "scheduler").mkdir(parents=True, exist_ok=True)
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2, sort_keys=True)
                                                              + "\n")
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    full = {**record, "weights_digest": digests, "n_params": {"transformer": n_params(denoiser_params),
                                                              **({"vae": n_params(vae[1])} if vae else {})}}
    (dst / CONVERSION_RECORD_NAME).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")
    return full


def source_record(path: Path) -> dict:
    return {"file": str(path), "sha256": file_sha256(path)}
