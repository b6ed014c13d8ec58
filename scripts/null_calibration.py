"""False-positive rates of jaxmia's CDI tests on null data (P and U from one distribution).

Prints, for each test and n per side, the empirical FPR at alpha, its 99% acceptance interval for a
calibrated test, the KS statistic/p-value against Uniform(0, 1) and the mean p. These are the
numbers quoted in docs/inference.md and in ``stat_tests.REFERENCE_FPR_NOTE``.

Usage (defaults reproduce docs/inference.md; about 10 CPU-minutes on one core):

    python scripts/null_calibration.py --trials 1000 --permutations 99 --ns 30,100,300 \
        --dists gaussian,student_t3 --tests permutation,split,cdi_reference

Trial t of distribution D at n draws P and U, each (n, 26), from ``np.random.default_rng([seed, n,
t, code(D)])``; the permutation test's swaps come from ``[seed, n, t]``. B = 99 resolves p = 0.01 exactly
(P(p <= 0.01) = 1% for a valid test); any B gives a valid permutation p-value.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxmia.inference import curves

DISTS = {"gaussian": 0, "student_t3": 1}


def null_features(dist: str, n: int, trials: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(trials, n, d) P and U features, i.i.d. from one distribution."""
    xp = np.empty((trials, n, d))
    xu = np.empty((trials, n, d))
    for t in range(trials):
        rng = np.random.default_rng([seed, n, t, DISTS[dist]])
        draw = rng.standard_normal if dist == "gaussian" else (lambda size: rng.standard_t(3, size=size))
        xp[t], xu[t] = draw(size=(n, d)), draw(size=(n, d))
    return xp, xu


def run(tests, ns, dists, trials, permutations, d, seed, alpha, chunk=50):
    rows = []
    for dist in dists:
        for n in ns:
            xp, xu = null_features(dist, n, trials, d, seed)
            for test in tests:
                start = time.process_time()
                p = np.concatenate([
                    curves.batched_pvalues(
                        xp[lo : lo + chunk], xu[lo : lo + chunk], test,
                        [(seed, n, t) for t in range(lo, min(trials, lo + chunk))], permutations=permutations,
                    )
                    for lo in range(0, trials, chunk)
                ])
                row = curves.summarise_null(p, alpha)
                row.update(test=test, dist=dist, n=n, d=d, cpu_s=round(time.process_time() - start, 1),
                           permutations=permutations if test == "permutation" else None)
                if test == "cdi_reference":
                    row["fpr_alpha_0.05"] = float((p <= 0.05).mean())
                rows.append(row)
                print(f"{dist:>10} n={n:<4} {test:<13} FPR@{alpha:g} = {row['fpr']:.4f} "
                      f"(calibrated range {row['fpr_interval_99'][0]:.4f}-{row['fpr_interval_99'][1]:.4f})  "
                      f"KS = {row['ks_statistic']:.3f} (p = {row['ks_pvalue']:.2g})  mean p = {row['mean_p']:.3f}  "
                      f"[{row['cpu_s']} CPU s]", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--permutations", type=int, default=99)
    parser.add_argument("--ns", default="30,100,300")
    parser.add_argument("--dists", default="gaussian,student_t3")
    parser.add_argument("--tests", default="permutation,split,cdi_reference")
    parser.add_argument("--dim", type=int, default=26)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    dists = [s for s in args.dists.split(",") if s]
    unknown = [s for s in dists if s not in DISTS]
    if unknown:
        parser.error(f"unknown distribution(s) {unknown}; known: {', '.join(DISTS)}")
    rows = run(
        [s for s in args.tests.split(",") if s], [int(s) for s in args.ns.split(",")], dists, args.trials,
        args.permutations, args.dim, args.seed, args.alpha,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
