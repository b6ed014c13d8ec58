"""Power at small n, with the false-positive rate that goes with it, on a target's own feature tables
(issue 16 part 3; docs/inference.md §12).

For every n per side it runs the tests on innocent splits (P and U both drawn from the non-members) and
on guilty splits (P = members, U = non-members) and prints one Markdown table: FPR at α = 0.01 and
0.05 (with the central 99% range of a calibrated test at 0.01) and power at α = 0.01 and 0.05.

    python scripts/power_curve.py --members M.npz --nonmembers N.npz \\
        --ns 10,20,25,35,50 --trials 500 --guilty-trials 200 --permutations 999

Tests (``--tests``):

* ``hybrid``: the whole-pipeline hybrid (``stat_tests.hybrid_pvalues``, B = ``--permutations``). Its
  parts are reported too, as diagnostics of where its power goes: ``hybrid.perm`` (the permutation
  p-value alone, at α), ``hybrid.tail`` (the sign-flip bound on the held-out half alone, at α).
* ``fixed_max``, ``fixed_mean``: the fixed-score test (``stat_tests.fixed_score_pvalues``, pooled ranks,
  ``combine="max"`` / ``"mean"``, B = ``--fixed-permutations``), directions from the tables'
  ``lower_is_member`` / ``higher_is_member`` meta.
* ``oracle`` (diagnostic, guilty splits only): a logistic regression fitted on members and non-members
  *outside* the trial (as many of each as are left), then the sign-flip test on the trial's score
  differences. A valid test, but an audit has no spare members: it shows what a well-fitted model
  would give, i.e. how much of the loss is the fit on few samples.

Innocent trial t: ``default_rng([seed, t]).permutation(N_nonmembers)``, rows [0, n) pseudo-P and
[n, 2n) pseudo-U (as ``curves.null_calibration``); seeds ``(seed, t)``. Guilty trial t at n:
``g = default_rng([seed, n, t, 7])``; n members ``g.permutation(N_members)[:n]`` then n non-members
``g.permutation(N_nonmembers)[:n]`` (as ``scripts/null_calibration.py``); seeds ``(seed, n, t, 7)``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import stats

from jaxmia.inference import scoring, stat_tests
from jaxmia.table import load_table

TESTS = ("hybrid", "fixed_max", "fixed_mean", "oracle")


def _pvalues(test, xp, xu, seeds, direction, args):
    """{column: p (T,)} of one test on T trials."""
    if test == "hybrid":
        r = stat_tests.hybrid_pvalues(xp, xu, seeds, permutations=args.permutations, details=True)
        # The parts, each read at the full α, say where the hybrid's power goes.
        return {"hybrid": r["p"], "hybrid.perm": r["p_permutation"], "hybrid.tail": r["p_tail"]}
    combine = {"fixed_max": "max", "fixed_mean": "mean"}[test]
    p, _ = stat_tests.fixed_score_pvalues(xp, xu, direction, seeds, permutations=args.fixed_permutations,
                                          combine=combine)
    return {test: p}


def _oracle_pvalues(pool_m, pool_n, take, seeds, args):
    """Sign-flip p-values of a model fitted on the rows outside each trial (diagnostic)."""
    out = []
    for (a, b), seed in zip(take, seeds):
        rest_m = np.setdiff1d(np.arange(len(pool_m)), a)
        rest_n = np.setdiff1d(np.arange(len(pool_n)), b)[: len(rest_m)]
        x_train = np.concatenate([pool_m[rest_m], pool_n[rest_n]])[None]
        y = np.concatenate([np.ones(len(rest_m)), np.zeros(len(rest_n))])[None]
        scaler = scoring.fit_standardiser(x_train)
        coef, icpt = scoring.fit_logistic_batched(scaler.apply(x_train, augment=True), y, augmented=True)
        w = coef[0, 0] / scaler.scale[0]
        d = (pool_m[a] - pool_n[b]) @ w  # logit differences (each with the sign of the probability difference)
        p = stat_tests.signflip_permutation_pvalues(d[None], [seed], args.fixed_permutations)[0]
        out.append(p[0])
    return np.array(out)


def run(args):
    members, nonmembers = load_table(args.members), load_table(args.nonmembers)
    cols = [c for c in nonmembers.names if c in members.names]
    meta = {k: list(members.meta.get(k, [])) + list(nonmembers.meta.get(k, []))
            for k in ("lower_is_member", "higher_is_member")}
    direction = stat_tests.directions_vector(cols, meta["lower_is_member"], meta["higher_is_member"])
    pool_m, pool_n = members.select(cols).values, nonmembers.select(cols).values
    tests = [t for t in args.tests.split(",") if t]
    unknown = [t for t in tests if t not in TESTS]
    if unknown:
        raise SystemExit(f"unknown test(s) {unknown}; known: {', '.join(TESTS)}")
    print(f"{len(cols)} columns, {int((direction != 0).sum())} with a member direction; "
          f"{len(pool_m)} members, {len(pool_n)} non-members", flush=True)
    rows = []
    for n in [int(s) for s in args.ns.split(",")]:
        for test in tests:
            start = time.process_time()
            null, guilty = {}, {}
            if test != "oracle":
                for lo in range(0, args.trials, args.chunk):
                    ids = range(lo, min(args.trials, lo + args.chunk))
                    orders = np.stack([np.random.default_rng([args.seed, t]).permutation(len(pool_n))[: 2 * n]
                                       for t in ids])
                    res = _pvalues(test, pool_n[orders[:, :n]], pool_n[orders[:, n:]], [(args.seed, t) for t in ids],
                                   direction, args)
                    for k, v in res.items():
                        null.setdefault(k, []).append(v)
            for lo in range(0, args.guilty_trials, args.chunk):
                ids = range(lo, min(args.guilty_trials, lo + args.chunk))
                gens = [np.random.default_rng([args.seed, n, t, 7]) for t in ids]
                take = [(g.permutation(len(pool_m))[:n], g.permutation(len(pool_n))[:n]) for g in gens]
                seeds = [(args.seed, n, t, 7) for t in ids]
                if test == "oracle":
                    res = {"oracle": _oracle_pvalues(pool_m, pool_n, take, seeds, args)}
                else:
                    res = _pvalues(test, np.stack([pool_m[a] for a, _ in take]), np.stack([pool_n[b] for _, b in take]),
                                   seeds, direction, args)
                for k, v in res.items():
                    guilty.setdefault(k, []).append(v)
            cpu = round(time.process_time() - start, 1)
            for k in guilty:
                g = np.concatenate(guilty[k])
                row = {"test": k, "n": n, "cpu_s": cpu, "guilty_trials": int(g.size),
                       "power_0.01": float((g <= 0.01).mean()), "power_0.05": float((g <= 0.05).mean()),
                       "median_p_guilty": float(np.median(g))}
                if k in null:
                    p0 = np.concatenate(null[k])
                    row.update(innocent_trials=int(p0.size), fpr_0_01=float((p0 <= 0.01).mean()),
                               fpr_0_05=float((p0 <= 0.05).mean()), mean_p_innocent=float(p0.mean()),
                               fpr_range_99_0_01=[float(x) for x in stats.binom.ppf([0.005, 0.995], p0.size, 0.01)
                                                  / p0.size],
                               fpr_range_99_0_05=[float(x) for x in stats.binom.ppf([0.005, 0.995], p0.size, 0.05)
                                                  / p0.size])
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _pct(x):
    return "–" if x is None else f"{100 * x:.1f}%"


def markdown(rows) -> str:
    lines = ["| n per side | test | FPR at 0.01 (99% range) | FPR at 0.05 (99% range) | mean p (innocent) "
             "| power at 0.01 | power at 0.05 | median p (guilty) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "fpr_0_01" in r:
            f1 = f"{_pct(r['fpr_0_01'])} ({_pct(r['fpr_range_99_0_01'][0])}–{_pct(r['fpr_range_99_0_01'][1])})"
            f5 = f"{_pct(r['fpr_0_05'])} ({_pct(r['fpr_range_99_0_05'][0])}–{_pct(r['fpr_range_99_0_05'][1])})"
            mp = f"{r['mean_p_innocent']:.3f}"
        else:
            f1 = f5 = mp = "–"
        lines.append(f"| {r['n']} | {r['test']} | {f1} | {f5} | {mp} | {_pct(r['power_0.01'])} | "
                     f"{_pct(r['power_0.05'])} | {r['median_p_guilty']:.2g} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", required=True, help="feature table of the target's members (guilty P)")
    ap.add_argument("--nonmembers", required=True, help="feature table of its non-members (U, innocent P)")
    ap.add_argument("--ns", default="10,20,25,35,50")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--trials", type=int, default=500, help="innocent splits per n")
    ap.add_argument("--guilty-trials", type=int, default=200)
    ap.add_argument("--permutations", type=int, default=999, help="B of the hybrid's permutation part")
    ap.add_argument("--fixed-permutations", type=int, default=stat_tests.FIXED_PERMUTATIONS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=25, help="trials per batch")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    rows = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    print(markdown(rows))


if __name__ == "__main__":
    main()
