"""Timings of the inference layer's heavy paths (quoted in docs/inference.md).

    python scripts/bench_inference.py            # all three
    python scripts/bench_inference.py --only permutation

1. ``permutation``: the default test, B = 1000 whole-pipeline refits, n = 1000 per side, 26 features;
2. ``curve``: the sample-count curve, 1000 resamples per n over the default grid on 2000 pairs
   (25 values of n, 5..2000), with the split test and with the reference protocol;
3. ``newton``: the batched solver against a loop of sklearn liblinear fits (same problems).

Reports wall and CPU seconds; the inference layer is NumPy, so CPU time on one core is the cost.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxmia.inference import curves, scoring, stat_tests


def _timed(label, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    print(f"{label}: {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU", flush=True)
    return out


def bench_permutation(seed=0):
    rng = np.random.default_rng(seed)
    xp = rng.normal(size=(1000, 26))
    xp[:, :2] += 0.1
    xu = rng.normal(size=(1000, 26))
    res = _timed("permutation test, B=1000, n=1000 per side, d=26",
                 lambda: stat_tests.permutation_test(xp, xu, permutations=1000, seed=seed))
    print(f"  p = {res.result.p_value:.4g}, statistic = {res.result.statistic:.4g}")


def bench_curve(seed=0, reps=1000):
    rng = np.random.default_rng(seed)
    xp = rng.normal(size=(2000, 26))
    xp[:, :3] += 0.1
    xu = rng.normal(size=(2000, 26))
    for test in ("split", "cdi_reference"):
        grid = curves.default_grid(2000, test)
        c = _timed(f"sample-count curve, {test}, {reps} resamples x {len(grid)} values of n on 2000 pairs",
                   lambda: curves.sample_count_curve(xp, xu, reps=reps, seed=seed, test=test))
        print(f"  samples needed (mean p <= 0.01): {c.samples_needed}, band {c.samples_needed_band}")


def bench_newton(seed=0, problems=200):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(problems, 400, 26))
    y = np.tile((np.arange(400) < 200).astype(float), (problems, 1))
    x[:, :200, 0] += 0.3
    _timed(f"Newton, {problems} problems of 400 x 26 at once", lambda: scoring.fit_logistic_batched(x, y))
    _timed(f"sklearn liblinear, the same {problems} problems in a loop",
           lambda: [LogisticRegression(solver="liblinear", tol=1e-10).fit(xi, y[0]) for xi in x])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("permutation", "curve", "newton"))
    parser.add_argument("--reps", type=int, default=1000)
    args = parser.parse_args()
    if args.only in (None, "permutation"):
        bench_permutation()
    if args.only in (None, "curve"):
        bench_curve(reps=args.reps)
    if args.only in (None, "newton"):
        bench_newton()


if __name__ == "__main__":
    main()
