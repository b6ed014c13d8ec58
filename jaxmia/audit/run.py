"""``run_audit``: one call from a model and two image sets to a verdict with evidence.

Stages (each resumable; rerunning the same command in the same folder continues):

1. load the model and the sets P (published) and U (unpublished); sample ``n`` per side (seeded);
2. extract features of both sides (``features/features-<ids digest>.npz``; an interrupted
   extraction resumes from its ``.partial.npz`` and loses at most the current batch);
3. the CDI test (:func:`jaxmia.cdi.run_cdi`): scoring model, calibrated p-value,
   sample-count curve;
4. shift checks (:mod:`jaxmia.shift`, issue 16): P's and U's files compared (size, format, JPEG
   quality; ``audit.file_mismatch`` warns or refuses right after loading), the blind baseline (the same
   test on model-free features), and processing sensitivity (which mild processing of half of U alone
   makes the model test say "trained", and from what n; its features are cached like the others);
5. null calibration: innocent splits of U, the empirical false-positive rate of the test;
6. single-image attacks for context: how well each per-image score separates P from U;
7. DRC evidence: a few images of each side degraded and restored by the model;
8. the conclusion: "TRAINED ON P" only when the model test rejects *and* the shift checks pass; if P
   and U differ without the model it is "INCONCLUSIVE", naming the features (and the closest known
   processing) that separate them.

The stages' return values fill one typed report (:class:`jaxmia.report.AuditReport`), written once
by :func:`jaxmia.report.write_report`: ``report.json``, ``report.html`` and the plots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from jaxmia import __version__, compile_cache
from jaxmia.audit.config import AuditConfig
from jaxmia.config import write_config_json
from jaxmia.data.duplicates import check_published_unpublished, describe_record
from jaxmia.schedule import schedule_digest
from jaxmia.table import FeatureTable, load_table


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"jaxmia: {msg}", file=sys.stderr, flush=True)


def _ids_digest(ids) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def _load_sets(model, published, unpublished, settings):
    from jaxmia.data import Dataset, load_dataset
    from jaxmia.models import Denoiser, load_denoiser

    if isinstance(model, Denoiser):
        if settings.scheduler is not None or settings.family is not None:
            raise ValueError("audit.scheduler / audit.family apply to a model path; this model is a loaded Denoiser")
        denoiser = model
    else:
        denoiser = load_denoiser(model, scheduler=settings.scheduler, family=settings.family)
    shape = denoiser.input_shape

    def load(spec):
        if isinstance(spec, Dataset):
            return spec
        return load_dataset(spec, image_shape=shape, resize=settings.resize, on_error=settings.on_error)

    p, u = load(published), load(unpublished)
    files = None
    if settings.shift_checks:
        from jaxmia.shift import compare_files

        files = compare_files(p.files, u.files)
        if files["mismatches"] and settings.file_mismatch == "refuse":
            words = "; ".join(m["words"] for m in files["mismatches"])
            raise ValueError(f"P ({p.source}) and U ({u.source}) files differ: {words}; re-save U like P "
                             "(jaxmia.shift.make_like_folder) or set audit.file_mismatch=warn")
    overlap = sorted(set(p.ids) & set(u.ids))
    if overlap and p.source == u.source:
        raise ValueError(f"P and U share {len(overlap)} image id(s) (e.g. {overlap[0]!r}); they must be disjoint sets")
    p, u, checks = check_published_unpublished(p, u, within=settings.duplicates)
    if settings.n is not None:
        for side, ds in (("published", p), ("unpublished", u)):
            if len(ds) < settings.n:
                raise ValueError(f"{side} set {ds.source}: {len(ds)} images, fewer than audit.n = {settings.n}")
        p = p.take(settings.n, seed=settings.seed)
        u = u.take(settings.n, seed=settings.seed + 1)
    return denoiser, p, u, checks, files


def side_features(denoiser, dataset, cfg: AuditConfig, cache_dir: Path, *, quiet: bool = False,
                  conditioning: str | None = None) -> FeatureTable:
    """Features of one side, cached by (ids, features, config, seed, model): reruns reuse or resume them.

    ``conditioning``: a digest of the side's caption embeddings, when they came from captions (a
    changed caption then changes the cache key).
    """
    from jaxmia.features import extract

    key = {"ids": _ids_digest(dataset.ids), "features": cfg.audit.features, "config": cfg.features.to_dict(),
           "seed": cfg.audit.seed, "model": denoiser.digest, "per_device_batch": cfg.audit.per_device_batch,
           "schedule": schedule_digest(denoiser.schedule)}
    if conditioning is not None:
        key["conditioning"] = conditioning
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"features-{name}.npz"
    if path.exists():
        table = load_table(path)
        if sorted(table.ids.tolist()) == sorted(dataset.ids):
            _say(f"reusing features of {len(dataset)} images from {path}", quiet)
            return table
    return extract(denoiser, dataset, cfg.audit.features, out=path, seed=cfg.audit.seed,
                   batch_size=cfg.audit.batch_size, per_device_batch=cfg.audit.per_device_batch,
                   config=cfg.features, progress=not quiet)


def _mia_context(p_table: FeatureTable, u_table: FeatureTable, attacks) -> dict:
    """How well each single-image score separates P from U (P labelled 1). Context, not a verdict."""
    from jaxmia.mia import evaluate_mia
    from jaxmia.table import FeatureTable as T

    if attacks is None:  # the registry's single-image attacks, as the tables record them
        attacks = p_table.meta.get("groups", {}).get("mia", [])
    cols = [a for a in attacks if a in p_table.names and a in u_table.names]
    if not cols:
        return {}
    directions = {}
    for key in ("lower_is_member", "higher_is_member"):
        p_dir, u_dir = set(p_table.meta.get(key, [])), set(u_table.meta.get(key, []))
        if p_dir & set(cols) != u_dir & set(cols):
            raise ValueError(f"P's and U's feature tables disagree on {key} for {sorted((p_dir ^ u_dir) & set(cols))}")
        directions[key] = sorted(p_dir & set(cols))
    ids = np.concatenate([p_table.ids, u_table.ids])
    values = np.concatenate([p_table.select(cols).values, u_table.select(cols).values])
    labels = {i: 1 for i in p_table.ids.tolist()} | {i: 0 for i in u_table.ids.tolist()}
    # each column's direction comes from its signal's registration, via the tables' metadata
    return evaluate_mia(T(ids, tuple(cols), values, directions), labels)


def run_audit(model, published, unpublished, out_dir, config: AuditConfig | None = None, *,
              quiet: bool = False, features_dir=None) -> dict:
    """Audits ``model`` for the use of ``published`` (P) against ``unpublished`` (U); writes a report.

    Args:
      model: a model path (see :func:`jaxmia.models.load_denoiser`), ``"demo"``, or a Denoiser.
      published, unpublished: data specs (folder, ``.npz``, ``demo:members`` ...) or Datasets.
      out_dir: output folder; holds ``config.json``, ``features/``, ``report.json``,
        ``report.html`` and the plots. Rerunning with the same config continues where it stopped;
        a different config in the same folder is refused, naming the first difference.
      features_dir: where feature tables are cached (default ``out_dir/features``); audits sharing
        a set (the demo's U) share its features.

    Returns:
      The report dictionary (also written as ``report.json``).
    """
    from jaxmia.cdi import run_cdi
    from jaxmia.inference import null_calibration
    from jaxmia.report import sections as S
    from jaxmia.report import write_report

    cfg = config or AuditConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = cfg.to_dict()
    cfg_path = out / "config.json"
    if cfg_path.exists():
        before = json.loads(cfg_path.read_text())
        if before != json.loads(json.dumps(resolved)):
            diff = _first_difference(before, json.loads(json.dumps(resolved)))
            raise ValueError(f"{out} holds an audit with another config ({diff}); use a new --out folder")
    write_config_json(resolved, cfg_path)  # the one JSON form (jaxmia.config)
    compile_cache.ensure_default()  # compile once (jaxmia.compile_cache); compile time reported apart
    compiled_before = compile_cache.snapshot()
    timings: dict = {}
    t = time.perf_counter()

    denoiser, p_set, u_set, data_checks, file_check = _load_sets(model, published, unpublished, cfg.audit)
    for line in describe_record(data_checks):
        _say(line, quiet)
    for m in (file_check or {}).get("mismatches", []):
        _say(f"warning: {m['words']} (the verdict cannot rest on a model test; re-save U like P)", quiet)
    _say(f"P = {p_set.source} ({len(p_set)} images), U = {u_set.source} ({len(u_set)} images)", quiet)
    p_set, u_set, captions = _caption_sets(model, denoiser, p_set, u_set, cfg.audit, out, quiet)
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    cache = Path(features_dir) if features_dir is not None else out / "features"
    digests = {side: info["embeddings_digest"] for side, info in (captions or {}).items()}
    p_table = side_features(denoiser, p_set, cfg, cache, quiet=quiet, conditioning=digests.get("published"))
    u_table = side_features(denoiser, u_set, cfg, cache, quiet=quiet, conditioning=digests.get("unpublished"))
    timings["features"] = time.perf_counter() - t

    t = time.perf_counter()
    cdi = run_cdi(p_table, u_table, cfg.cdi)
    timings["cdi"] = time.perf_counter() - t

    t = time.perf_counter()
    shift = None
    if cfg.audit.shift_checks:
        shift = _shift_checks(denoiser, p_set, u_set, u_table, cfg, cache, file_check, quiet)
    timings["shift_checks"] = time.perf_counter() - t

    t = time.perf_counter()
    null = None
    n_pair = cdi["verdict"]["n_p"]
    half = len(u_table.ids) // 2
    if cfg.audit.null_splits and half >= 10:
        pool = u_table.select(cdi["features"]).values
        null = null_calibration(pool, n=min(n_pair, half), trials=cfg.audit.null_splits, test=cfg.audit.null_test,
                                seed=cfg.audit.seed, alpha=cfg.cdi.alpha)
        null.pop("pvalues", None)
        if min(n_pair, half) < n_pair:
            null["note"] = f"splits of U hold {half} images per side (U is too small for {n_pair})"
    timings["null_calibration"] = time.perf_counter() - t

    t = time.perf_counter()
    mia = _mia_context(p_table, u_table, cfg.audit.mia_attacks)
    timings["mia"] = time.perf_counter() - t

    t = time.perf_counter()
    drc = None
    if cfg.audit.drc_images:
        drc = _drc_evidence(denoiser, p_set, u_set, cfg, out / "drc", quiet)
    timings["drc"] = time.perf_counter() - t

    conclusion = _conclusion(cdi["verdict"], shift, p_set.source, cfg.cdi.alpha)
    run = S.RunInfo(
        model=S.ModelInfo(source=str(model) if not hasattr(model, "digest") else "in-memory Denoiser",
                          digest=denoiser.digest, sample_shape=tuple(denoiser.sample_shape)),
        published=S.DataSide(p_set.source, len(p_set)), unpublished=S.DataSide(u_set.source, len(u_set)),
        config=resolved, seed=cfg.audit.seed, duplicates=data_checks, captions=captions)
    report = S.AuditReport(
        run=run, features=S.FeatureSection(tuple(cdi["features"]), cdi["pairing"]),
        cdi=S.CdiSection(cdi, null), mia=S.MiaSection(mia), shift=shift, drc=drc, conclusion=conclusion,
        timings=S.Timings(timings, compile_cache.since(compiled_before)), versions=_versions())
    return write_report(report, out)


def _caption_sets(model, denoiser, p_set, u_set, settings, out: Path, quiet: bool):
    """P and U with their captions' embeddings, for a text-conditional model (else unchanged).

    Returns (P, U, {side: info} for the sides captioned here, or None).
    """
    from jaxmia.models import Denoiser
    from jaxmia.models.text_conditioning import maybe_attach_captions

    if denoiser.cond_kind != "text" and settings.captions is None:
        return p_set, u_set, None
    if isinstance(model, Denoiser):
        if settings.captions is not None:
            raise ValueError("audit.captions needs a model path (its pipeline holds the text encoder); this model "
                             "is a loaded Denoiser: pass data sets that carry text embeddings")
        return p_set, u_set, None
    if settings.captions is not None:
        shared = sorted(set(p_set.ids) & set(u_set.ids))
        if shared:
            raise ValueError(f"{settings.captions}: one captions file for P and U, but both hold an image "
                             f"{shared[0]!r}; caption each folder with its own metadata.jsonl instead")
    infos = {}
    sides = []
    for side, ds in (("published", p_set), ("unpublished", u_set)):
        ds, info = maybe_attach_captions(model, denoiser, ds, captions=settings.captions,
                                         cache_dir=out / "text_embeddings", family=settings.family, quiet=quiet)
        sides.append(ds)
        if info is not None:
            infos[side] = info
    return sides[0], sides[1], (infos or None)


def _drc_evidence(denoiser, p_set, u_set, cfg: AuditConfig, out: Path, quiet: bool):
    """A few images of each side degraded and restored (:func:`jaxmia.drc.run_drc`): a DrcEvidence."""
    from jaxmia.drc import run_drc, with_embedding_metric
    from jaxmia.report.sections import DrcEvidence, drc_side

    drc_cfg, embed_fn = cfg.drc, None
    if cfg.audit.drc_embedder is not None:
        from jaxmia.models.clip_vision import clip_image_embedder

        drc_cfg, embed_fn = with_embedding_metric(cfg.drc), clip_image_embedder(cfg.audit.drc_embedder)
    cfg = dataclasses.replace(cfg, drc=drc_cfg)
    k = cfg.audit.drc_images
    p_few = p_set.take(min(k, len(p_set)), seed=cfg.audit.seed + 2)
    u_few = u_set.take(min(k, len(u_set)), seed=cfg.audit.seed + 3)
    sides = {}
    for side, ds in (("published", p_few), ("unpublished", u_few)):
        r = run_drc(denoiser, ds, cfg.drc, out / side, per_device_batch=max(1, min(k, 8)), seed=cfg.audit.seed,
                    progress=not quiet, evidence=len(ds), embed_fn=embed_fn)
        sides[side] = drc_side(r, cfg.drc.score_metric)
    from jaxmia.drc.config import RESTORE_ABOUT

    return DrcEvidence(metric=cfg.drc.score_metric, published=sides["published"], unpublished=sides["unpublished"],
                       embedder=None if embed_fn is None else embed_fn.info,
                       restoration=f"{cfg.drc.restore}: {RESTORE_ABOUT[cfg.drc.restore]}")


def _shift_checks(denoiser, p_set, u_set, u_table, cfg: AuditConfig, cache: Path, file_check, quiet: bool) -> dict:
    """Blind baseline, file comparison and processing sensitivity (jaxmia.shift)."""
    from jaxmia.inference.stat_tests import format_p
    from jaxmia.shift import blind_table, blind_test, closest_processing, mean_change, processing_sensitivity

    use_files = p_set.files is not None and u_set.files is not None
    bp = blind_table(p_set.ids, p_set.images, p_set.files if use_files else None)
    bu = blind_table(u_set.ids, u_set.images, u_set.files if use_files else None)
    blind = blind_test(bp, bu, cfg.cdi)
    bv = blind["verdict"]
    blind["p_text"] = format_p(bv["p_value"], bv.get("log10_p"))
    blind["uses_file_facts"] = use_files
    _say(f"blind baseline (no model): p = {blind['p_text']}"
         + (" -- P and U differ without the model" if bv["reject"] else ""), quiet)
    sens = None
    if cfg.audit.sensitivity:
        _say(f"processing sensitivity: {', '.join(cfg.audit.sensitivity)} on half of U", quiet)
        sens = processing_sensitivity(
            u_set, u_table, lambda ds: side_features(denoiser, ds, cfg, cache / "sensitivity", quiet=quiet), cfg.cdi,
            specs=cfg.audit.sensitivity, max_images=cfg.audit.sensitivity_images, seed=cfg.audit.seed)
    closest = None
    if bv["reject"] and sens and sens.get("signatures"):
        pixel = sens["signature_features"]
        delta = mean_change(bu.select(pixel), bp.select(pixel))
        ranked = closest_processing(delta, sens["signatures"], bu.select(pixel).values.std(0))
        closest = ranked if ranked and ranked[0]["similarity"] > 0 else None
    return {"blind": blind, "files": file_check, "sensitivity": sens, "closest_processing": closest,
            "passed": bool(not bv["reject"] and not (file_check or {}).get("mismatches"))}


def _conclusion(verdict: dict, shift, source: str, alpha: float):
    """The audit's conclusion: trained / no evidence / inconclusive, with the reasons in plain words."""
    from jaxmia.inference.stat_tests import format_p
    from jaxmia.report.sections import Conclusion
    from jaxmia.shift import describe_processing

    p = format_p(verdict["p_value"], verdict.get("log10_p"))
    reasons = []
    if shift is not None:
        b = shift["blind"]
        if b["verdict"]["reject"]:
            feats = [r["description"] for r in b["separating"] if r["separates"]] or \
                    [r["description"] for r in b["separating"][:3]]
            reasons.append(f"P and U differ without the model (blind test p = {b['p_text']} <= {alpha:g}): "
                           f"they differ in {', '.join(feats[:4])}")
            close = shift.get("closest_processing")
            if close:
                reasons.append(f"the difference looks most like {describe_processing(close[0]['processing'])} "
                               f"({close[0]['processing']}; next: {close[1]['processing'] if len(close) > 1 else 'none'})")
        for m in (shift.get("files") or {}).get("mismatches", []):
            reasons.append(f"the files differ: {m['words']}")
    if reasons:
        status, headline = "inconclusive", "INCONCLUSIVE: P and U differ without the model"
        summary = (f"Inconclusive. The model test gives p = {p}, but " + "; ".join(reasons) + ". A model would "
                   "tell such sets apart whether or not it was trained on P, so this audit cannot say which. "
                   "Bring U through the same processing as P (same size, format and JPEG quality; "
                   "jaxmia.shift.make_like_folder) and audit again.")
    elif verdict.get("reject"):
        status, headline = "trained", "TRAINED ON P"
        summary = (f"The model treats the published images ({source}) as training data: p = {p} <= {alpha:g}. "
                   "If the model had never seen them, a difference this large would occur by chance less often than "
                   f"{alpha:.0%} of the time."
                   + (" P and U cannot be told apart without the model (blind test p = " + shift["blind"]["p_text"]
                      + "), so the difference comes from the model." if shift is not None else
                      " (Shift checks were off: P and U were not compared without the model.)"))
    else:
        status, headline = "no_evidence", "NO EVIDENCE of training on P"
        summary = (f"No evidence that the published images ({source}) were used in training: p = {p} "
                   f"(not below {alpha:g}). This does not prove they were not used; it means the model does not "
                   "treat them measurably differently from the unpublished images.")
    sens = (shift or {}).get("sensitivity") or {}
    caveats = []
    if sens.get("blind_misses"):
        caveats.append("processing that would fool the model test but that the blind test did not notice on half "
                       f"of U: {', '.join(sens['blind_misses'])}; if P was processed that way this verdict could be wrong")
    if sens.get("fooled_by") and not sens.get("blind_misses"):
        caveats.append("mild processing alone (" + ", ".join(sens["fooled_by"]) + ") makes this model test say "
                       "'trained'; the blind test notices each of them")
    return Conclusion(status=status, headline=headline, summary=summary, reasons=reasons, caveats=caveats,
                      p_value=verdict["p_value"], p_text=p, model_test_rejects=bool(verdict.get("reject")),
                      shift_checks_passed=None if shift is None else shift["passed"])


def _first_difference(a, b, path="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
    return f"{path}: {a!r} before, {b!r} now"


def _versions() -> dict:
    import flax
    import jax
    import scipy
    import sklearn

    return {"jaxmia": __version__, "jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-learn": sklearn.__version__, "python": platform.python_version()}

