"""The DRC driver: score a dataset, write the feature table and the evidence images.

One compiled program (``drc_batch``: every image × every task, the whole sampling scan inside,
run by each data-axis device on ``per_device_batch`` rows), data-parallel over the local devices
on the same ``("data", "model")`` mesh as feature extraction, through the same batch loop
(:func:`jaxmia.runtime.map_examples`; a model axis > 1 splits large parameter leaves).
Results do not depend on the batch size or the device count: all randomness is keyed by (seed,
image id, task name).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

import jaxmia
from jaxmia import runtime
from jaxmia import schedule as sched
from jaxmia.data import Dataset
from jaxmia.drc.aggregate import drc_score
from jaxmia.drc.config import RESTORE_ABOUT, DRCConfig, tasks
from jaxmia.drc.evidence import evidence_grid, safe_filename, summary_grid
from jaxmia.drc.features import drc_one
from jaxmia.drc.masks import user_masks
from jaxmia.drc.metrics import ORIENTATION, cosine_similarity, orient
from jaxmia.drc.restore import network_calls_per_image, plan_for
from jaxmia.table import FeatureTable, save_table

METHOD_LABEL = "DRC-style (jaxmia recipe)"
# Each image carries R tasks through the whole sampling scan, so the network already sees 8 × R
# inputs per call at this size.
DEFAULT_PER_DEVICE_BATCH = 8
TABLE_NAME = "drc_scores.npz"
SCORE_COLUMN = "drc_score"  # label-free per-image score, higher = member (jaxmia.drc.aggregate.drc_score)


def drc_batch(denoiser, images, cond, id_hash, user_mask, root, *, cfg: DRCConfig, with_images: bool):
    """:func:`~jaxmia.drc.features.drc_one` vmapped over a batch; restorations only if asked."""
    per_example = functools.partial(drc_one, cfg=cfg)
    out = jax.vmap(per_example, in_axes=(None, 0, 0, 0, None, 0))(denoiser, images, cond, id_hash, root, user_mask)
    if not with_images:
        out = {k: v for k, v in out.items() if k not in ("restored", "masks")}
    return out


# One device, no mesh. Static: cfg (hashable frozen dataclass) and with_images (whether restorations
# leave the device).
jit_drc_batch = jax.jit(drc_batch, static_argnames=("cfg", "with_images"))


def _check_inputs(denoiser, dataset: Dataset, cfg: DRCConfig, holes, embed_fn) -> None:
    if tuple(dataset.image_shape) != tuple(denoiser.input_shape):
        raise ValueError(f"{dataset.source or 'dataset'}: images are {dataset.image_shape} (H, W, C) but the model "
                         f"takes {tuple(denoiser.input_shape)}")
    if denoiser.cond_kind != "none" and dataset.cond is None:
        raise ValueError(f"{dataset.source or 'dataset'}: the model is {denoiser.cond_kind}-conditional but the "
                         "data carry no conditioning")
    if "user" in cfg.kinds and holes is None:
        raise ValueError("mask kind 'user' needs holes=... (hole arrays or boxes per image)")
    if "user" not in cfg.kinds and holes is not None:
        raise ValueError("holes=... given but 'user' is not among the mask kinds")
    if "cos" in cfg.metrics and embed_fn is None:
        raise ValueError("metric 'cos' needs embed_fn=... (a local embedding network)")
    if embed_fn is not None and "cos" not in cfg.metrics:
        raise ValueError("embed_fn=... given but 'cos' is not among the metrics")
    if len(dataset) == 0:
        raise ValueError(f"{dataset.source or 'dataset'}: no images")


@functools.lru_cache(maxsize=16)
def _drc_kernel(cfg: DRCConfig, with_images: bool):
    """ONE example's :func:`~jaxmia.drc.features.drc_one` as a runtime kernel ``(denoiser, image, cond, key,
    user_mask)``; restorations only if asked (cached: one program per config)."""

    def per_example(denoiser, image, cond, key, user_mask=None):
        out = drc_one(denoiser, image, cond, key.id_hash, key.root, user_mask, cfg=cfg)
        return out if with_images else {k: v for k, v in out.items() if k not in ("restored", "masks")}

    return per_example


def _per_device_drc(mesh, cfg: DRCConfig, with_images: bool, with_cond: bool, with_user_mask: bool):
    """The program ``run_drc`` runs: ``(denoiser, images, cond, root, id_hash[, user_mask])``, every data-axis
    device on its own rows (:func:`jaxmia.runtime.jit_examples`)."""
    return runtime.jit_examples(_drc_kernel(cfg, with_images), mesh, with_cond, int(with_user_mask))


def _run(placed, dataset, cfg, masks_by_row, ids=None, *, with_images: bool, collect=None, progress: bool = False):
    """drc_one over the rows ``ids`` of ``dataset`` (default: all), through the runtime's batch loop."""
    return runtime.map_examples(
        _drc_kernel(cfg, with_images), dataset, placement=placed, with_cond=runtime.uses_cond(placed.denoiser, dataset),
        ids=ids, extra=() if masks_by_row is None else (masks_by_row,), encode_latents=False,  # drc_one encodes
        collect=collect, progress=progress, label="drc")


def run_drc(
    denoiser,
    dataset: Dataset,
    cfg: DRCConfig,
    out_dir,
    *,
    batch_size: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
    evidence: int = 4,
    holes=None,
    embed_fn: Optional[Callable] = None,
    devices=None,
    per_device_batch: Optional[int] = None,
    mesh_shape: Optional[tuple] = None,
    shard_min_size: Optional[int] = None,
) -> dict:
    """Degrade-restore-compare every image of ``dataset``; write the table and evidence PNGs.

    "Model Will Tell" (Fu et al., arXiv 2403.08487) as jaxmia's DRC-style recipe
    (docs/methods/mia.md §4.2). Writes ``out_dir/drc_scores.npz`` (a :class:`~jaxmia.table.FeatureTable`
    with one column per (metric, task), raw orientation, then ``drc_score`` (label-free, higher =
    member: :func:`jaxmia.drc.aggregate.drc_score` of the ``score_metric``), plus its JSON sidecar with the resolved
    config, seed, model digest, achieved hole fractions and timings) and, for ``evidence`` > 0,
    ``out_dir/evidence/<id>.png`` per selected image and ``out_dir/evidence/summary.png``.

    The evidence images are the ``ceil(evidence/2)`` most member-like and ``floor(evidence/2)`` most
    non-member-like images by the mean over tasks of the within-run percentile rank of the oriented
    ``cfg.score_metric``: a presentation order only, fitted on nothing and deciding nothing
    (decisions use :func:`jaxmia.drc.aggregate_table` with a named calibration split).

    Args:
      holes: for the ``user`` mask kind: (N, H, W) 0/1 arrays (1 = hole) or (N, 4) boxes
        (top, left, height, width), in dataset order, or one shared (H, W) / (4,).
      embed_fn: for the ``cos`` metric: ``embed_fn(images (n, H, W, C) in [−1, 1]) -> (n, D)``,
        called on the host with NumPy arrays (any framework); scored by cosine similarity. Its
        ``info`` attribute (a JSON-ready dict, e.g. the CLIP folder and weights digest of
        :func:`jaxmia.models.clip_vision.clip_image_embedder`), if any, is recorded in the metadata.
      batch_size: images per step, the unit of progress (default: one chunk, ``per_device_batch``
        x data-axis devices); it does not change the values.
      devices: devices to shard the batch over (default: all local devices).
      per_device_batch: images each data-axis device restores per call (default
        :data:`DEFAULT_PER_DEVICE_BATCH`); the network sees per_device_batch × R inputs per call
        (all tasks of all images run together). The compiled shape: results are bit-identical for
        any batch size and device count at a fixed per_device_batch.
      mesh_shape: (data, model), as in :func:`jaxmia.features.extract`; default (n_devices, 1).
      shard_min_size: with a model axis > 1, parameter leaves of at least this many elements are
        split over it (default :data:`jaxmia.runtime.DEFAULT_SHARD_MIN_SIZE`).

    Returns:
      dict with ``table`` (path), ``columns``, ``n_images``, ``evidence`` (paths), ``summary``
      (path or None), ``member_like`` / ``nonmember_like`` ids, ``network_calls_per_image``,
      ``seconds`` and ``scores`` (the table written, a :class:`~jaxmia.table.FeatureTable`).
    """
    _check_inputs(denoiser, dataset, cfg, holes, embed_fn)
    if evidence < 0:
        raise ValueError(f"evidence must be >= 0, got {evidence}")
    from jaxmia import compile_cache

    compile_cache.ensure_default()  # compile once: the persistent cache
    start = time.perf_counter()
    out_dir = Path(out_dir)
    task_list = tasks(cfg)
    task_names = [t.name for t in task_list]
    plan = plan_for(denoiser, cfg)  # validates strength/steps against the model's T
    height, width, _ = dataset.image_shape
    masks_by_row = None if holes is None else user_masks(holes, dataset.ids, height, width)
    devices = list(jax.local_devices() if devices is None else devices)
    min_size = runtime.DEFAULT_SHARD_MIN_SIZE if shard_min_size is None else shard_min_size
    placed = runtime.place(denoiser, seed, batch_size, devices, shard_min_size=min_size, mesh_shape=mesh_shape,
                           per_device_batch=DEFAULT_PER_DEVICE_BATCH if per_device_batch is None else per_device_batch)

    def collect(step: runtime.Step) -> dict:
        out = {k: v for k, v in step.outputs.items() if k not in ("restored", "masks")}
        if embed_fn is not None:  # one call per step on the host: the embedding's own batching
            out["cos"] = _cosine(embed_fn, step.images, step.outputs["restored"])
        return {sid: jax.tree_util.tree_map(lambda v, i=i: v[i], out) for i, sid in enumerate(step.ids)}

    mapped = _run(placed, dataset, cfg, masks_by_row, with_images=embed_fn is not None, collect=collect,
                  progress=progress)
    ids = list(dataset.ids)
    rows = mapped.columns(ids)
    values = {m: np.asarray(rows["scores"][m]) for m in cfg.jax_metrics}  # each (N, R)
    if embed_fn is not None:
        values["cos"] = np.asarray(rows["cos"])
    values = {m: values[m] for m in cfg.metrics}
    fractions = np.asarray(rows["hole_fraction"])
    bar = mapped.progress
    timing = bar.summary()
    names = [f"drc_{m}_{t}" for m in cfg.metrics for t in task_names]
    score, score_note = _drc_score(values[cfg.score_metric], cfg.score_metric)
    table = FeatureTable(
        ids=np.asarray(ids),
        names=tuple(names) + (SCORE_COLUMN,),
        values=np.concatenate([values[m] for m in cfg.metrics] + [score[:, None]], axis=1),
        meta=_meta(denoiser, dataset, cfg, seed, placed, devices, plan, task_list, fractions, timing),
    )
    table.meta["higher_is_member"].append(SCORE_COLUMN)
    table.meta["drc"]["drc_score"] = score_note
    if embed_fn is not None:
        table.meta["drc"]["embedder"] = getattr(embed_fn, "info", {"kind": type(embed_fn).__name__})
    table_path = save_table(table, out_dir / TABLE_NAME)

    member_like, nonmember_like, paths, summary = [], [], [], None
    if evidence > 0:
        member_like, nonmember_like = _evidence_order(values[cfg.score_metric], cfg.score_metric, ids, evidence)
        paths, summary = _write_evidence(placed, dataset, cfg, masks_by_row, values, ids, member_like, nonmember_like,
                                         out_dir / "evidence")
    return {
        "table": str(table_path),
        "scores": table,
        "columns": names,
        "n_images": len(ids),
        "evidence": [str(p) for p in paths],
        "summary": None if summary is None else str(summary),
        "member_like": member_like,
        "nonmember_like": nonmember_like,
        "network_calls_per_image": network_calls_per_image(cfg, denoiser.schedule.num_train_timesteps),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _drc_score(raw, metric: str) -> tuple[np.ndarray, str]:
    """The ``drc_score`` column (mean over tasks of the across-data z of the oriented ``metric``)
    and its sidecar note; NaN with the reason when undefined (fewer than 2 images, a constant task)."""
    try:
        return drc_score(orient(raw, metric)), f"mean over tasks of the across-data z-score of oriented {metric}"
    except ValueError as err:
        return np.full(raw.shape[0], np.nan), f"undefined (NaN): {err}"


def _cosine(embed_fn, images, restored) -> np.ndarray:
    """(B, R) cosine similarity of embed_fn(original) and embed_fn(restored)."""
    b, r = restored.shape[:2]
    e_orig = np.asarray(embed_fn(np.asarray(images)))
    e_rest = np.asarray(embed_fn(restored.reshape((b * r,) + restored.shape[2:])))
    if len(e_orig) != b or len(e_rest) != b * r:
        raise ValueError(f"embed_fn returned {len(e_orig)} and {len(e_rest)} rows for {b} and {b * r} images")
    return cosine_similarity(np.repeat(e_orig, r, axis=0), e_rest).reshape(b, r)


def _meta(denoiser, dataset, cfg, seed, placed, devices, plan, task_list, fractions, timing) -> dict:
    task_meta = []
    for i, t in enumerate(task_list):
        f = fractions[:, i]
        task_meta.append({
            "name": t.name, "kind": t.kind, "ratio": t.ratio, "index": t.index,
            "hole_fraction": {"mean": float(f.mean()), "min": float(f.min()), "max": float(f.max())},
        })
    by_metric = {m: [f"drc_{m}_{t.name}" for t in task_list] for m in cfg.metrics}
    return {
        "method": METHOD_LABEL,
        "feature": "drc",
        "lower_is_member": [c for m, cols in by_metric.items() if ORIENTATION[m] < 0 for c in cols],
        "higher_is_member": [c for m, cols in by_metric.items() if ORIENTATION[m] > 0 for c in cols],
        "seed": int(seed),
        "model_digest": denoiser.digest,
        "schedule_digest": sched.schedule_digest(denoiser.schedule),
        "data_source": dataset.source,
        "n_images": int(fractions.shape[0]),
        "batch_size": placed.batch_size,
        "per_device_batch": placed.per_device_batch,
        "n_devices": len(devices),
        "mesh_shape": list(placed.mesh_shape),
        "versions": {"jaxmia": jaxmia.__version__, "jax": jax.__version__},
        "timing": timing,
        "drc": {
            "config": cfg.to_dict(),
            "task_names": [t.name for t in task_list],
            "tasks": task_meta,
            "orientation": {m: ("higher = member" if ORIENTATION[m] > 0 else "lower = member") for m in cfg.metrics},
            "t_start": plan.t_start,
            "timesteps": list(plan.timesteps),
            "network_calls_per_image": network_calls_per_image(cfg, denoiser.schedule.num_train_timesteps),
            "restoration": RESTORE_ABOUT[cfg.restore],
        },
    }


def _evidence_order(raw, metric, ids, n) -> tuple[list, list]:
    """Most member-like and most non-member-like ids by mean within-run percentile rank."""
    scores = orient(raw, metric)
    ranks = np.argsort(np.argsort(scores, axis=0, kind="stable"), axis=0, kind="stable") / max(len(ids) - 1, 1)
    order = np.lexsort((np.arange(len(ids)), -ranks.mean(axis=1)))  # descending, ties by position
    n = min(n, len(ids))
    n_member = math.ceil(n / 2)
    member_like = [ids[i] for i in order[:n_member]]
    rest = [i for i in order[::-1] if ids[i] not in member_like]
    nonmember_like = [ids[i] for i in rest[: n - n_member]]
    return member_like, nonmember_like


def _write_evidence(placed, dataset, cfg, masks_by_row, values, ids, member_like, nonmember_like, folder: Path):
    """Re-runs the selected images with restorations returned (same keys, so the same results)."""
    task_names = [t.name for t in tasks(cfg)]
    metric = cfg.score_metric
    row = {i: k for k, i in enumerate(ids)}
    summary_task = _summary_task(cfg)
    chosen = member_like + nonmember_like
    out = _run(placed, dataset, cfg, masks_by_row, chosen, with_images=True).rows
    images = {sample_id: dataset.images[row[sample_id]] for sample_id in chosen}
    masks = {sample_id: out[sample_id]["masks"] for sample_id in chosen}
    restored = {sample_id: out[sample_id]["restored"] for sample_id in chosen}
    paths = []
    for sample_id in chosen:
        labels = [f"{t}  {metric} {values[metric][row[sample_id], i]:.4g}" for i, t in enumerate(task_names)]
        paths.append(evidence_grid(images[sample_id], masks[sample_id], restored[sample_id],
                                   folder / f"{safe_filename(sample_id)}.png", row_labels=labels))
    captions = [
        f"{'member-like' if sample_id in member_like else 'non-member-like'}: {sample_id[:32]}  "
        f"{metric} {values[metric][row[sample_id], summary_task]:.4g}"
        for sample_id in chosen
    ]
    summary = summary_grid(
        np.stack([images[i] for i in chosen]),
        np.stack([masks[i][summary_task] for i in chosen]),
        np.stack([restored[i][summary_task] for i in chosen]),
        captions, folder / "summary.png",
    )
    return paths, summary


def _summary_task(cfg: DRCConfig) -> int:
    """The task shown in the summary grid: the first kind at its largest ratio (the hardest one)."""
    task_list = tasks(cfg)
    first = [i for i, t in enumerate(task_list) if t.kind == task_list[0].kind and t.index == 0]
    return max(first, key=lambda i: task_list[i].ratio or 0.0)

