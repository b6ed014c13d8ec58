"""Processing sensitivity: would mild processing alone make this model look "trained on P"? (issue 16)

U (known non-members) is split in two seeded halves: a reference half, and a half that is processed
(:mod:`jaxmia.shift.processing`: blur, JPEG, resize round trip, brightness) and plays "P". For each
processing the verdict's test runs on model features of (processed half, reference half): both are
non-members, so a rejection means that processing alone would produce a "trained" verdict. The
sample-count curve of that pair (split test, few resamples) says from what n on. The blind test runs
on the same pair, so the report also says whether the blind baseline would notice that processing:
a processing that fools the model test but not the blind test is one this audit cannot rule out.

Each processing also leaves a *signature*: the mean change of every blind pixel feature it causes
(paired: the same images before and after). When P and U differ without the model, the audit
names the processing whose signature points the same way (:func:`jaxmia.shift.blind.closest_processing`).

Cost: one feature extraction of ``max_images`` processed images per processing (cached like the other
feature tables), plus NumPy tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxmia.shift.blind import blind_table, blind_test, mean_change
from jaxmia.shift.processing import apply_processing, describe_processing, parse_processing


def split_halves(ids, max_images: int, seed: int) -> tuple[list, list]:
    """(reference ids, to-process ids), disjoint, each min(len(ids) // 2, max_images), seeded."""
    half = min(len(ids) // 2, max_images)
    order = np.random.default_rng([seed, 0x5E5]).permutation(len(ids))
    return [ids[i] for i in order[:half]], [ids[i] for i in order[half:2 * half]]


def processing_sensitivity(u_set, u_table, features_of, cdi_config, *, specs, max_images: int = 50, seed: int = 0,
                           curve_reps: int = 100) -> dict:
    """The sensitivity table of one audit.

    Args:
      u_set: U as a :class:`jaxmia.data.Dataset` (images), u_table its model feature table.
      features_of: ``Dataset → FeatureTable``, the audit's (cached) feature extraction.
      cdi_config: the verdict's :class:`jaxmia.inference.CdiConfig` (the same test runs here).
      specs: processing specs (``"blur:0.6"``, ...).
      max_images: images per half.

    Returns:
      ``{"n", "rows": [...], "signatures": {spec: [...]}, "signature_features", "fooled_by",
      "blind_misses"}``; each row: processing, words, model p / reject / samples_needed / power per n,
      blind p / reject. The first row, ``"none"``, is the unprocessed control.
    """
    from jaxmia.data import Dataset
    from jaxmia.cdi import run_cdi
    from jaxmia.inference.stat_tests import format_p

    for spec in specs:
        parse_processing(spec)
    ref_ids, proc_ids = split_halves(list(u_set.ids), max_images, seed)
    if len(ref_ids) < 10:
        return {"skipped": f"U has {len(u_set)} images; the sensitivity check needs at least 20 (two halves of 10)"}
    ref_table = u_table.rows(ref_ids)
    source = u_set.subset(proc_ids)
    blind_ref = blind_table(ref_ids, u_set.subset(ref_ids).images)
    blind_before = blind_table(proc_ids, source.images)
    curve_cfg = dataclasses.replace(cdi_config, curve=True, curve_test="split", curve_grid=None,
                                    curve_reps=min(cdi_config.curve_reps, curve_reps))
    rows, signatures = [], {}
    for spec in ("none", *specs):
        if spec == "none":
            table, images, ids = u_table.rows(proc_ids), source.images, proc_ids
        else:
            images = apply_processing(spec, source.images)
            ids = [f"{spec}|{i}" for i in proc_ids]
            table = features_of(Dataset(ids, images, source.cond, f"{u_set.source} after {describe_processing(spec)}"))
            signatures[spec] = mean_change(blind_before, blind_table(proc_ids, images)).tolist()
        model = run_cdi(table, ref_table, curve_cfg)
        blind = blind_test(blind_table(ids, images), blind_ref, cdi_config)
        v, bv, curve = model["verdict"], blind["verdict"], model.get("curve") or {}
        rows.append({
            "processing": spec, "words": "no processing (control)" if spec == "none" else describe_processing(spec),
            "n": v["n_p"], "p_value": v["p_value"], "log10_p": v.get("log10_p"), "p_text": format_p(v["p_value"], v.get("log10_p")),
            "reject": v["reject"], "samples_needed": curve.get("samples_needed"),
            "curve_ns": curve.get("ns"), "curve_power": curve.get("power"),
            "blind_p_value": bv["p_value"], "blind_reject": bv["reject"],
            "blind_top_feature": (blind["separating"][0]["description"] if blind["separating"] else None),
        })
    fooled = [r["processing"] for r in rows if r["processing"] != "none" and r["reject"]]
    return {
        "n": len(proc_ids), "rows": rows, "signatures": signatures,
        "signature_features": list(blind_before.names),
        "fooled_by": fooled,
        "blind_misses": [r["processing"] for r in rows if r["processing"] in fooled and not r["blind_reject"]],
        "control_rejects": bool(rows[0]["reject"]),
    }
