"""The shift table (issue 16): how often mild processing alone makes the model test say "trained", and
how often the blind baseline notices, per processing and n, on the bundled demo target.

    python scripts/shift_table.py                       # 300 + 300 non-members, n = 25, 50, 100, 100 reps
    python scripts/shift_table.py --pool 120 --ns 25,50 --reps 20   # quick

Innocent pairs only: a seeded half of the non-member pool is processed (``jaxmia.shift.processing``)
and plays P, the other half is U. Resample (n, rep) takes ``default_rng([seed, n, rep]).permutation``'s
first n rows of each half. Both tests are the audit's default (hybrid, ``--permutations``) on the
26-d ``cdi`` features (model) and on the blind pixel features (no model). Feature tables are cached in
``--work`` (resumable), so a rerun only recomputes the tests. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxmia.inference import curves
from jaxmia.shift import apply_processing, blind_table
from jaxmia.shift.processing import DEFAULT_SENSITIVITY


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=int, default=600, help="non-members used (half processed, half U)")
    ap.add_argument("--processings", default=",".join(DEFAULT_SENSITIVITY))
    ap.add_argument("--ns", default="25,50,100")
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/shift_table")
    args = ap.parse_args()
    from jaxmia.data import Dataset, load_dataset
    from jaxmia.features import extract
    from jaxmia.models import load_denoiser

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    denoiser = load_denoiser("demo")
    pool = load_dataset("demo:nonmembers").take(args.pool, seed=args.seed)
    half = args.pool // 2
    u_set, s_set = pool.subset(pool.ids[:half]), pool.subset(pool.ids[half:2 * half])

    def model_features(ds, name):
        return extract(denoiser, ds, "cdi", out=work / f"{name}.npz", batch_size=128, progress=False).rows(ds.ids)

    xu = model_features(u_set, f"u-{args.pool}-{args.seed}").values
    bu = blind_table(u_set.ids, u_set.images).values
    ns = [int(n) for n in args.ns.split(",") if int(n) <= half]
    rows = []
    for spec in ["none", *[s for s in args.processings.split(",") if s]]:
        if spec == "none":
            ds = s_set
        else:
            ds = Dataset([f"{spec}|{i}" for i in s_set.ids], apply_processing(spec, s_set.images), None, spec)
        xs = model_features(ds, f"s-{args.pool}-{args.seed}-{spec.replace(':', '_')}").values
        bs = blind_table(ds.ids, ds.images).values
        row = {"processing": spec}
        for n in ns:
            take = np.stack([np.random.default_rng([args.seed, n, r]).permutation(half)[:n] for r in range(args.reps)])
            seeds = [(args.seed, n, r) for r in range(args.reps)]
            for key, a, b in (("model", xs, xu), ("blind", bs, bu)):
                p = curves.batched_pvalues(a[take], b[take], "hybrid", seeds, permutations=args.permutations)
                row[f"{key}_n{n}"] = float((p <= args.alpha).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    (work / "shift_table.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    head = "| processing (of P only) | " + " | ".join(f"model test, n = {n}" for n in ns) + " | " + \
        " | ".join(f"blind baseline, n = {n}" for n in ns) + " |"
    print(head + "\n|" + "---|" * (1 + 2 * len(ns)))
    for r in rows:
        print(f"| {r['processing']} | " + " | ".join(f"{r[f'model_n{n}']:.0%}" for n in ns) + " | "
              + " | ".join(f"{r[f'blind_n{n}']:.0%}" for n in ns) + " |")


if __name__ == "__main__":
    main()
