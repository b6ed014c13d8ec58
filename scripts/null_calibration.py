"""False-positive rates of jaxmia's CDI tests on null data (P and U from one distribution).

Prints, for each test and n per side, the empirical FPR at alpha, its 99% acceptance interval for a
calibrated test, the KS statistic/p-value against Uniform(0, 1) and the mean p. These are the
numbers quoted in docs/inference.md and in ``stat_tests.REFERENCE_FPR_NOTE``.

Usage (defaults reproduce docs/inference.md; about 10 CPU-minutes on one core):

    python scripts/null_calibration.py --trials 1000 --permutations 99 --ns 30,100,300 \
        --dists gaussian,student_t3 --tests permutation,split,cdi_reference

On a target's own feature tables (innocent splits of its non-members, and guilty splits: P = members):

    python scripts/null_calibration.py --members runs/trust/demo_cdi_members.npz \
        --nonmembers runs/trust/demo_cdi_nonmembers.npz --tests hybrid --permutations 999 \
        --ns 50,100 --trials 500 --guilty-trials 200

Innocent trial t at n: ``curves.null_calibration`` (pool rows permuted by ``default_rng([seed, t])``; the
first n are pseudo-P, the next n pseudo-U). Guilty trial t: n members drawn by ``default_rng([seed, n, t,
7])`` against n non-members from the same generator. For each test it prints the FPR on innocent splits
and, on guilty splits, the power at alpha and the smallest and median p (log10 where a float underflows).

Trial t of distribution D at n draws P and U, each (n, 26), from ``np.random.default_rng([seed, n,
t, code(D)])``; the permutation test's swaps come from ``[seed, n, t]``. B = 99 resolves p = 0.01 exactly
(P(p <= 0.01) = 1% for a valid test); any B gives a valid permutation p-value.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jaxmia.inference import curves, stat_tests
from jaxmia.table import load_table

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


def _pvalues_log10(xp, xu, test, seeds, permutations):
    """p-values and their log10 (exact for the hybrid, whose p can underflow a float)."""
    if test == "hybrid":
        return stat_tests.hybrid_pvalues(xp, xu, seeds, permutations=permutations)
    p = curves.batched_pvalues(xp, xu, test, seeds, permutations=permutations)
    return p, np.log10(p)


def run_tables(members_path, nonmembers_path, tests, ns, trials, guilty_trials, permutations, seed, alpha, chunk=25):
    """Innocent splits of the non-member table and guilty splits (members vs non-members)."""
    members, nonmembers = load_table(members_path), load_table(nonmembers_path)
    cols = [c for c in nonmembers.names if c in members.names]
    pool_m, pool_n = members.select(cols).values, nonmembers.select(cols).values
    rows = []
    for n in ns:
        for test in tests:
            start = time.process_time()
            null = curves.null_calibration(pool_n, n=n, trials=trials, test=test, permutations=permutations,
                                           seed=seed, alpha=alpha)
            null.pop("pvalues")
            lp = []
            for lo in range(0, guilty_trials, chunk):
                ids = range(lo, min(guilty_trials, lo + chunk))
                gens = [np.random.default_rng([seed, n, t, 7]) for t in ids]
                take = [(g.permutation(len(pool_m))[:n], g.permutation(len(pool_n))[:n]) for g in gens]
                xp = np.stack([pool_m[a] for a, _ in take])
                xu = np.stack([pool_n[b] for _, b in take])
                lp.append(_pvalues_log10(xp, xu, test, [(seed, n, t, 7) for t in ids], permutations)[1])
            lp = np.concatenate(lp) if lp else np.empty(0)
            row = {"test": test, "n": n, "d": len(cols), "permutations": permutations, "innocent": null,
                   "guilty": {"trials": int(lp.size), "power": float((lp <= np.log10(alpha)).mean()) if lp.size else None,
                              "min_log10_p": float(lp.min()) if lp.size else None,
                              "median_log10_p": float(np.median(lp)) if lp.size else None},
                   "cpu_s": round(time.process_time() - start, 1)}
            rows.append(row)
            g = row["guilty"]
            print(f"tables n={n:<4} {test:<13} innocent FPR@{alpha:g} = {null['fpr']:.4f} over {null['trials']} splits "
                  f"(calibrated range {null['fpr_interval_99'][0]:.4f}-{null['fpr_interval_99'][1]:.4f}), "
                  f"KS p = {null['ks_pvalue']:.2g}, mean p = {null['mean_p']:.3f} | guilty ({g['trials']} splits): "
                  f"power {g['power']}, smallest p = 1e{g['min_log10_p']:.2f}, median p = 1e{g['median_log10_p']:.2f} "
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
    parser.add_argument("--members", default=None, help="feature table of a target's members (guilty splits)")
    parser.add_argument("--nonmembers", default=None, help="feature table of its non-members (innocent splits)")
    parser.add_argument("--guilty-trials", type=int, default=200)
    args = parser.parse_args()
    if (args.members is None) != (args.nonmembers is None):
        parser.error("--members and --nonmembers go together")
    if args.members:
        rows = run_tables(args.members, args.nonmembers, [s for s in args.tests.split(",") if s],
                          [int(s) for s in args.ns.split(",")], args.trials, args.guilty_trials, args.permutations,
                          args.seed, args.alpha)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
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
