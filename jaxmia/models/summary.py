"""``jaxmia inspect``: what jaxmia found in a model folder and will use, before a long run.

:func:`describe_model` loads the model exactly as every command does (:func:`load_denoiser` with the
same ``scheduler`` / ``family``) and reports the class, parameter count and dtype, sample and image
shapes, the noise schedule with the file it came from, the prediction type, the conditioning, the
latent codec and its scale, and the weights digest.
"""

from __future__ import annotations

from collections import Counter

import jax
import numpy as np

from jaxmia.fileio import read_json
from jaxmia.models.layout import CONFIG_NAME


def _count(params) -> tuple[int, dict]:
    leaves = jax.tree_util.tree_leaves(params)
    dtypes = Counter()
    for leaf in leaves:
        dtypes[str(np.dtype(leaf.dtype))] += int(np.prod(leaf.shape))
    return sum(dtypes.values()), dict(dtypes)


def describe_model(path, *, scheduler=None, family=None) -> dict:
    """A JSON-able description of the model at ``path`` as jaxmia will run it.

    Args:
      path, scheduler, family: as for :func:`jaxmia.models.load_denoiser` (``--scheduler``, ``--family``).

    Returns:
      ``{"path", "layout", "denoiser", "schedule", "conditioning", "latent", "digest"}``; every
      path is a string, every number a plain int or float.
    """
    from jaxmia.models.conditioning import condition_spec
    from jaxmia.models.loading import _load_denoiser

    denoiser, info = _load_denoiser(path, scheduler=scheduler, family=family)
    layout, fam, codec = info["layout"], info["family"], info["codec"]
    n_params, dtypes = _count(denoiser.params)
    model_config = read_json(layout.model_dir / CONFIG_NAME, what="model config")
    sch = denoiser.schedule
    betas, abar = np.asarray(sch.betas, np.float64), np.asarray(sch.alphas_cumprod, np.float64)
    cond = condition_spec(denoiser, family=fam)
    out = {
        "path": str(layout.root),
        "layout": {"kind": layout.kind, "model_dir": str(layout.model_dir),
                   "autoencoder_dir": None if layout.encoder_dir is None else str(layout.encoder_dir),
                   "family": None if fam is None else fam.name},
        "denoiser": {"class": model_config.get("_class_name"), "parameters": n_params, "dtypes": dtypes,
                     "sample_shape": list(denoiser.sample_shape), "image_shape": list(denoiser.input_shape),
                     "learned_sigma": bool(denoiser.learned_sigma)},
        "schedule": {"source": info["schedule_source"], "num_train_timesteps": int(sch.num_train_timesteps),
                     "prediction_type": sch.prediction_type, "beta_first": float(betas[0]),
                     "beta_last": float(betas[-1]), "alpha_bar_first": float(abar[0]),
                     "alpha_bar_last": float(abar[-1]), "first_index_clean": bool(abar[0] == 1.0),
                     "clip_sample": bool(sch.clip_sample)},
        "conditioning": {"kind": cond.kind, "num_labels": cond.num_labels, "null_label": cond.null_label,
                         "context_dim": cond.context_dim, "context_length": cond.context_length},
        "latent": None,
        "digest": denoiser.digest,
    }
    if codec is not None:
        enc_config = read_json(layout.encoder_dir / CONFIG_NAME, what="model config")
        enc_params, enc_dtypes = _count(denoiser.encoder_params)
        out["latent"] = {"class": enc_config.get("_class_name"), "parameters": enc_params, "dtypes": enc_dtypes,
                         "encode": codec.mode, "scale": float(codec.scale), "shift": float(codec.shift),
                         "latent_channels": int(codec.latent_channels),
                         "downsample_factor": int(codec.downsample_factor)}
    return out


def format_description(d: dict) -> list[str]:
    """The lines ``jaxmia inspect`` prints."""
    den, sch, cond, lay = d["denoiser"], d["schedule"], d["conditioning"], d["layout"]
    dtypes = ", ".join(f"{k} {v:,}" for k, v in den["dtypes"].items())
    lines = [
        f"model        {d['path']} ({lay['kind']}; denoiser {lay['model_dir']})",
        f"family       {lay['family'] or 'none (nothing assumed beyond the folder)'}",
        f"class        {den['class']}: {den['parameters']:,} parameters ({dtypes})",
        f"shapes       sample {tuple(den['sample_shape'])} (H, W, C); images {tuple(den['image_shape'])}"
        + ("; output carries a learned variance" if den["learned_sigma"] else ""),
        f"schedule     T = {sch['num_train_timesteps']}, beta {sch['beta_first']:.6g} .. {sch['beta_last']:.6g}, "
        f"alpha_bar {sch['alpha_bar_first']:.6g} .. {sch['alpha_bar_last']:.6g}"
        + (" (t = 0 is clean)" if sch["first_index_clean"] else ""),
        f"             from {sch['source']}",
        f"prediction   {sch['prediction_type']}",
    ]
    if cond["kind"] == "class":
        extra = f"labels 0..{cond['num_labels'] - 1}" if cond["num_labels"] else "labels (count unknown)"
        extra += "" if cond["null_label"] is None else f", null class {cond['null_label']}"
        lines.append(f"conditioning class ({extra}); the data must carry labels")
    elif cond["kind"] == "text":
        shape = f"({cond['context_length'] or 'L'}, {cond['context_dim'] or 'D'})"
        lines.append(f"conditioning text: a {shape} embedding per image (text_embeddings in the data, or captions: "
                     f"metadata.jsonl / metadata.csv beside the images, or --captions FILE)")
    else:
        lines.append("conditioning none")
    lat = d["latent"]
    if lat is None:
        lines.append("latent       none (pixel space)")
    else:
        lines.append(f"latent       {lat['class']} ({lat['parameters']:,} parameters): encode {lat['encode']!r}, "
                     f"scale {lat['scale']:g}, shift {lat['shift']:g}, {lat['latent_channels']} channels, "
                     f"x{lat['downsample_factor']} downsampling")
    lines.append(f"digest       {d['digest']}")
    return lines

