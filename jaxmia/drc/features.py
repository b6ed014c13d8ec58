"""DRC as a feature producer: the per-example kernel and its column names.

``drc_features`` is the kernel the feature registry (``jaxmia.features``, name ``drc``) vmaps over
examples: one image in, one scalar per (metric, task) out, e.g. ``drc_mse_center_r10``. Values are
RAW (MSE lower = member); :data:`jaxmia.drc.metrics.ORIENTATION` says which way each points.

Randomness (docs/methods/design.md §5): the restoration noise of image i and task τ comes from
``key_for(root, id_hash_i, "drc:" + τ.name)`` (``fold_in(root, "drc:" + τ.name)`` for every image under
``shared_noise``); a task's mask from ``"drc-mask:" + τ.name`` (shared
by all images, or folded with the id under ``per_image_masks``). Task names, not positions, key the
draws, so adding or removing a ratio leaves the other tasks' scores unchanged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxmia import schedule as sched
from jaxmia.drc.config import DRCConfig, tasks
from jaxmia.drc.masks import hole_fraction, purpose_keys, task_masks
from jaxmia.drc.metrics import compare, model_distance
from jaxmia.drc.restore import ENCODE_FOLD, inpaint_one, plan_for


def COLUMNS(cfg: DRCConfig) -> list[str]:  # noqa: N802 (the registry's protocol name)
    """Feature names of :func:`drc_features`: ``drc_{metric}_{task}``, metric-major."""
    return [f"drc_{m}_{t.name}" for m in cfg.jax_metrics for t in tasks(cfg)]


def drc_one(denoiser, image, cond, id_hash, root, user_mask=None, *, cfg: DRCConfig) -> dict:
    """Degrade, restore and compare ONE image for every task of ``cfg`` (jittable, vmappable).

    Args:
      denoiser: the target :class:`~jaxmia.models.Denoiser`.
      image: (H, W, C) pixel image in [−1, 1].
      cond: this image's conditioning (None for unconditional models).
      id_hash: (2,) uint32 hash of the image id (:func:`jaxmia.rng.id_hashes`).
      root: the run's root key (:func:`jaxmia.rng.root_key`).
      user_mask: (H, W) known-region mask for the ``user`` kind, else None.

    Returns:
      dict with ``masks`` (R, H, W), ``restored`` (R, H, W, C), ``hole_fraction`` (R,) and
      ``scores``: {metric: (R,)} for the pixel metrics of ``cfg`` (raw orientation).
    """
    height, width, _ = image.shape
    task_list = tasks(cfg)
    masks = task_masks(cfg, height, width, root, id_hash, user_mask)
    keys = purpose_keys(root, [f"drc:{t.name}" for t in task_list], None if cfg.shared_noise else id_hash)
    restore = functools.partial(inpaint_one, denoiser, plan=plan_for(denoiser, cfg), eta=cfg.eta, init=cfg.init,
                                restore=cfg.restore)
    restored = jax.vmap(lambda m, k: restore(image, m, k, cond))(masks, keys)
    score = functools.partial(compare, metrics=cfg.jax_metrics, window=cfg.ssim_window, sigma=cfg.ssim_sigma)
    scores = jax.vmap(lambda m, y: score(image, y, m))(masks, restored)
    if "model" in cfg.metrics:
        scores["model"] = _model_scores(denoiser, image, restored, cond, id_hash, root, cfg)
    return {
        "masks": masks,
        "restored": restored,
        "hole_fraction": jax.vmap(hole_fraction)(masks),
        "scores": scores,
    }


def _model_scores(denoiser, image, restored, cond, id_hash, root, cfg: DRCConfig):
    """(R,) :func:`~jaxmia.drc.metrics.model_distance` of every task's restoration; one ε per image
    (purpose ``"drc-model"``, shared by all images under ``shared_noise``), shared by its tasks.

    Latent models compare in the denoiser's input space: the original and every (pixel)
    restoration are encoded with ONE encoder key (the same purpose key folded with
    :data:`~jaxmia.drc.restore.ENCODE_FOLD`), so only the restoration differs."""
    t = cfg.model_timestep
    if t >= denoiser.schedule.num_train_timesteps:
        raise ValueError(f"DRCConfig.model_timestep: got {t}, expected < T = {denoiser.schedule.num_train_timesteps}")
    key = purpose_keys(root, ["drc-model"], None if cfg.shared_noise else id_hash)[0]
    if denoiser.is_latent:
        k_encode = jax.random.fold_in(key, ENCODE_FOLD)
        batch = jnp.concatenate([image[None], restored.astype(image.dtype)])
        z = denoiser.encode_fn(denoiser.encoder_params, batch, jnp.stack([k_encode] * batch.shape[0]))
        image, restored = z[0], z[1:]
    noise = jax.random.normal(key, image.shape, image.dtype)
    eps_x = denoiser.eps(sched.q_sample(denoiser.schedule, image, t, noise), jnp.asarray(t, jnp.int32), cond)
    return jax.vmap(lambda y: model_distance(eps_x, denoiser, y, t, noise, cond))(restored)


def drc_features(denoiser, x0, cond, id_hash, root, cfg: DRCConfig) -> dict:
    """Per-example DRC feature kernel: {column: scalar} with the columns of :func:`COLUMNS`.

    "Model Will Tell" (Fu et al., arXiv 2403.08487), as jaxmia's DRC-style recipe
    (docs/methods/mia.md §4.2). The ``user`` mask kind needs per-image holes and the ``cos`` metric a
    host-side ``embed_fn``; both are available through :func:`jaxmia.drc.run_drc` only.
    """
    if "user" in cfg.kinds:
        raise ValueError("DRC kernel: mask kind 'user' needs per-image holes; use jaxmia.drc.run_drc(holes=...)")
    if not cfg.jax_metrics:
        raise ValueError(f"DRC kernel: none of the metrics {cfg.metrics} is a pixel metric (mse, mse_full, psnr, ssim)")
    out = drc_one(denoiser, x0, cond, id_hash, root, cfg=cfg)
    names = [t.name for t in tasks(cfg)]
    return {f"drc_{m}_{name}": out["scores"][m][i] for m in cfg.jax_metrics for i, name in enumerate(names)}
