"""The CDI scoring model: standardise, then L2 logistic regression, cross-fitted (docs/methods/cdi.md §5).

References:
  Dubiński, Kowalczuk et al., "CDI: Copyrighted Data Identification in Diffusion Models",
  arXiv 2411.12858 (CVPR 2025), §3 and the reference code ``experiments/cdi_perf.py``
  (docs/methods/cdi.md §5.1: 5-fold cross-fitting with shared fold indices; §5.2: the fixed-split variant).

What is implemented:

* the standardiser: column mean and *population* std fitted on training rows only; a constant column
  (sklearn's ``_is_constant_feature`` rule) gets scale 1;
* logistic regression with L2 penalty and liblinear semantics: the objective
  ``0.5·‖w̃‖² + C·Σᵢ log(1 + exp(−yᵢ·w̃ᵀx̃ᵢ))`` with ``x̃ = [x, 1]``, so the intercept is penalised
  like any weight (docs/methods/cdi.md §5.1, Q9). ``penalize_intercept=False`` drops the intercept from the
  penalty (sklearn's lbfgs semantics);
* cross-fitting: folds from ``KFold(5, shuffle=True, random_state=0)`` over 0..n−1, applied to P and
  to U, so P row i and U row i always share a fold; every row gets exactly one out-of-fold score, the
  predicted probability of "member" from a model that never saw it;
* the fixed-split variant: fit once on given training rows, score the rest.

Two solvers give the same fit:

* ``solver="newton"`` (default): :func:`fit_logistic_batched`, a vectorised NumPy Newton solver
  that fits many problems at once (permutations, resamples, trials), to a gradient tolerance;
* ``solver="sklearn"``: scikit-learn's ``LogisticRegression`` exactly as the reference calls it
  (``solver="liblinear"``, ``max_iter=1000``, ``random_state=0``, default ``tol=1e-4``), or lbfgs
  when the intercept is not penalised. Parity with the Newton solver is tested at a tight tolerance
  (``tests/test_inference_scoring.py``); the two differ only by liblinear's own stopping tolerance.

jaxmia differences from the reference (each with the option restoring it):

* rows are paired by sorted id by default, not by file position (``row_order="table"`` in
  :mod:`jaxmia.cdi` keeps the file order that the reference's KFold saw);
* the Newton solver stops at a gradient tolerance far below liblinear's default (tol = 1e-4), so
  scores differ from the reference's by up to ~1e-3 (``solver="sklearn"`` reproduces them exactly).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.special import expit

# ---- feature names and groups (docs/methods/cdi.md §4.9) -------------------------------------------------


def table_groups(table) -> dict[str, tuple[str, ...]]:
    """The column groups a feature table records (``meta["groups"]``, written by ``jaxmia features`` from
    each signal's registration: ``mia``, ``gm``, ``ml``, ``no``, ``new``, ``all``, each signal's name);
    ``{"all": every column}`` for a table without them (a table written by another tool)."""
    recorded = table.meta.get("groups")
    if recorded is None:
        return {"all": tuple(table.names)}
    return {str(g): tuple(cols) for g, cols in recorded.items()}


def resolve_features(spec, available: Sequence[str], groups=None) -> tuple[str, ...]:
    """Column names selected by ``spec`` (docs/methods/cdi.md §8, feature ablation).

    Args:
      spec: ``None`` (every column of the table, in table order); a group name of ``groups``
        (``"mia"``, ``"gm"``, ``"ml"``, ``"no"``, ``"new"``, ``"all"``, ...); a column name; a ``","``- or
        ``"+"``-joined combination of these (``"mia+gm"``); or a sequence of them.
      available: the columns the feature table holds.
      groups: ``{group: columns}``, the table's :func:`table_groups` (default: ``all`` only).

    Returns:
      The selected names, de-duplicated, in the order given (groups expand in table order).

    Raises:
      ValueError: naming an unknown group/column, or the selected columns the table lacks.
    """
    available = tuple(available)
    groups = {"all": available} if groups is None else dict(groups)
    if spec is None:
        return available
    tokens = spec.replace("+", ",").split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for token in (str(t).strip() for t in tokens):
        if not token:
            continue
        if token in groups:
            names += groups[token]
        elif token in available:
            names.append(token)
        else:
            raise ValueError(
                f"unknown feature or group {token!r}; groups: {', '.join(groups)}; "
                f"table columns: {', '.join(available)}"
            )
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError(f"feature selection {spec!r} selects no column")
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"feature table lacks selected column(s): {', '.join(missing)}")
    return tuple(names)


# ---- standardiser ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Standardiser:
    """Column mean and scale fitted on training rows; batched over any leading axes."""

    mean: np.ndarray  # (..., d)
    scale: np.ndarray  # (..., d)

    def apply(self, x: np.ndarray, augment: bool = False) -> np.ndarray:
        """Standardises ``x`` of shape (..., r, d) with the statistics of shape (..., d).

        With ``augment=True`` the result carries a last column of ones, the intercept feature of
        :func:`fit_logistic_batched` (``augmented=True``), written in the same pass.
        """
        if not augment:
            return (x - self.mean[..., None, :]) / self.scale[..., None, :]
        d = x.shape[-1]
        out = np.empty(x.shape[:-1] + (d + 1,))
        np.subtract(x, self.mean[..., None, :], out=out[..., :d])
        out[..., :d] /= self.scale[..., None, :]
        out[..., d] = 1.0
        return out


def fit_standardiser(x: np.ndarray, mask: np.ndarray | None = None) -> Standardiser:
    """Mean and population std of ``x`` (..., m, d) over rows where ``mask`` (..., m) is true.

    A column whose variance is within float64 round-off of zero gets scale 1, the rule of
    sklearn's ``StandardScaler`` (``_is_constant_feature``), so constant columns standardise to 0.
    """
    x = np.asarray(x, np.float64)
    if mask is None:
        count = np.full(x.shape[:-2] + (1,), float(x.shape[-2]))
        mean = x.mean(axis=-2)
        var = ((x - mean[..., None, :]) ** 2).mean(axis=-2)
    else:
        w = np.asarray(mask, np.float64)[..., None]
        count = w.sum(axis=-2)
        mean = (w * x).sum(axis=-2) / count
        var = (w * (x - mean[..., None, :]) ** 2).sum(axis=-2) / count
    eps = np.finfo(np.float64).eps
    constant = var <= count * eps * var + (count * mean * eps) ** 2
    scale = np.where(constant, 1.0, np.sqrt(var))
    return Standardiser(mean, scale)


# ---- batched Newton solver for the liblinear objective ---------------------------------------------


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController  # a dependency of scikit-learn

    return ThreadpoolController()


def one_blas_thread(fn):
    """Runs ``fn`` with one BLAS thread.

    The solver issues many small matrix products; BLAS threads only add synchronisation to them
    (measured on a shared 2-core machine: a permutation test plus a curve took 34 s wall with 2
    OpenBLAS threads, 5.5 s with one).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _blas_controller().limit(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def _augment(x: np.ndarray) -> np.ndarray:
    """Appends the intercept feature (liblinear's bias with ``intercept_scaling=1``)."""
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,), x.dtype)], axis=-1)


@one_blas_thread
def fit_logistic_batched(
    x: np.ndarray,
    y: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-10,
    max_iter: int = 200,
    augmented: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Fits many L2 logistic regressions at once by damped Newton iterations (NumPy).

    Minimises, for every group g and label vector b independently,
    ``0.5·Σⱼ rⱼw̃ⱼ² + C·Σᵢ maskᵢ·[log(1 + exp(fᵢ)) − yᵢfᵢ]`` with ``f = x̃w̃`` and ``x̃ = [x, 1]``:
    liblinear's L2R_LR primal objective (Fan et al., "LIBLINEAR", JMLR 2008, eq. 1, with labels
    ±1 written as 0/1) with the intercept as an extra feature; ``r = 1`` everywhere, or 0 for the
    intercept if ``penalize_intercept=False``.

    The B label vectors of a group share its design matrix, which is what makes permutation refits
    cheap: the Hessians ``R + C·Σᵢ sᵢx̃ᵢx̃ᵢᵀ`` of all B problems come from one matrix product with the
    precomputed outer products ``x̃ᵢx̃ᵢᵀ``. The iteration:

    1. from w = 0, a step with Böhning's bound ``R + (C/4)·x̃ᵀx̃`` (Böhning & Lindsay 1988), which is
       the exact Hessian at w = 0 for every labelling, so one inverse serves the whole group;
    2. Newton steps with a lazily refreshed Hessian (Shamanskii's method): a problem's Hessian is
       recomputed only where a step cut the gradient by less than 4× or had to be damped, so
       well-conditioned problems (the usual case from n ≈ 100 per side) run on the bound alone, and
       nearly separable ones (small n, many features) get exact Newton steps;
    3. globalisation by backtracking on the merit ½‖∇‖² (Nocedal & Wright §11.2): a Newton direction
       decreases it at rate ‖∇‖²; a rejected step taken with a stale Hessian is retried with the
       exact one, and halved only then.

    The Hessian only sets the convergence rate, never the fixed point ∇ = 0, so the shared outer
    products (used when B ≥ 32) are float32; the gradients are float64 and the result is the
    minimiser to ``tol``.

    Args:
      x: (G, m, d) features (already standardised), or (m, d) for one group.
      y: (G, B, m) labels in {0, 1} (1 = member), or (B, m) / (m,) for one group.
      mask: optional (G, m) (or (m,)) 0/1 row weights; rows with weight 0 are ignored (padding).
      C: inverse regularisation strength, as in sklearn.
      penalize_intercept: liblinear semantics (True) or an unpenalised intercept (False).
      tol: stop when ‖∇‖∞ ≤ tol·max(1, ‖∇ at w=0‖∞) for every problem.
      max_iter: iterations before giving up.
      augmented: ``x`` already ends with the intercept column of ones (``Standardiser.apply(x,
        augment=True)``), which saves a copy of the design.

    Returns:
      ``(coef, intercept)`` of shapes (G, B, d) and (G, B) (leading axes dropped as in the input).

    Raises:
      ValueError: on mismatched shapes or non-finite inputs.
      RuntimeError: if a problem has not converged after ``max_iter`` iterations.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    single_group = x.ndim == 2
    single_label = y.ndim == 1
    if single_group:
        x = x[None]
        y = y[None] if y.ndim == 2 else y[None, None]
        mask = None if mask is None else np.asarray(mask)[None]
    elif y.ndim == 2:
        y = y[:, None]
    if x.ndim != 3 or y.ndim != 3 or y.shape[0] != x.shape[0] or y.shape[2] != x.shape[1]:
        raise ValueError(f"fit_logistic_batched: x of shape {x.shape} and y of shape {y.shape} do not match")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("fit_logistic_batched: non-finite features or labels")
    xa = x if augmented else _augment(x)
    G, m, k = xa.shape
    d = k - 1
    B = y.shape[1]
    xm = xa  # rows weighted by the mask, for the gradient and the Hessians
    if mask is not None:
        mask = np.asarray(mask, np.float64)
        if mask.shape != (G, m):
            raise ValueError(f"fit_logistic_batched: mask of shape {mask.shape}, expected {(G, m)}")
        xm = xa * mask[..., None]
    xa_t = np.swapaxes(xa, -1, -2)  # a view: BLAS reads it transposed
    reg = np.ones(k)
    if not penalize_intercept:
        reg[-1] = 0.0
    diag = np.arange(k)
    # Outer products x̃ᵢx̃ᵢᵀ (mask-weighted), shared by the B problems of a group: worth their cost
    # (m·k² per group) when many labellings share the group, as in a permutation test.
    outer = None
    if B >= 32:
        outer = (xm[:, :, :, None] * xa[:, :, None, :]).reshape(G, m, k * k).astype(np.float32)

    bound = 0.25 * C * np.matmul(np.swapaxes(xm, -1, -2), xa)
    bound[:, diag, diag] += reg
    w_out = np.zeros((G, B, k))
    # State of the groups still running, compacted as groups finish (index into the inputs: ``ids``).
    ids = np.arange(G)
    hess_inv = np.repeat(np.linalg.inv(bound)[:, None], B, axis=1)
    fresh = np.ones((G, B), bool)  # hess_inv is exact at the accepted point
    w = np.zeros((G, B, k))  # the accepted point, its σ(f), gradient and ‖gradient‖²
    p = np.full((G, B, m), 0.5)
    grad = C * np.matmul(p - y, xm)
    gn2 = (grad * grad).sum(-1)
    threshold = tol * np.maximum(1.0, np.abs(grad).max(-1))
    converged = np.abs(grad).max(-1) <= threshold
    step = np.einsum("gbij,gbj->gbi", hess_inv, grad)
    t = np.ones((G, B))
    for it in range(max_iter + 1):
        finished = converged.all(-1)
        if finished.sum() * 4 >= ids.size or it == max_iter:  # compact (one copy) when enough are done
            w_out[ids[finished]] = w[finished]
            keep = ~finished
            if not keep.any() or it == max_iter:
                break
            ids, xa, xa_t, xm, y, threshold = ids[keep], xa[keep], xa_t[keep], xm[keep], y[keep], threshold[keep]
            outer = None if outer is None else outer[keep]
            hess_inv, fresh, w, p, grad, gn2 = hess_inv[keep], fresh[keep], w[keep], p[keep], grad[keep], gn2[keep]
            converged, step, t = converged[keep], step[keep], t[keep]
        cand = w - t[..., None] * step
        pc = expit(np.matmul(cand, xa_t))
        gc = reg * cand + C * np.matmul(pc - y, xm)
        gc2 = (gc * gc).sum(-1)
        small = np.abs(gc).max(-1) <= threshold
        accept = ~converged & ((gc2 <= (1.0 - 2e-4 * t) * gn2) | small)
        reject = ~converged & ~accept
        # Refresh after the first (Böhning) step, after slow progress (< 4x) or a damped step; and
        # where a step taken with a stale Hessian was rejected.
        slow = accept & ((gc2 > gn2 / 16.0) | (t < 1.0))
        stale = reject & ~fresh
        w = np.where(accept[..., None], cand, w)
        p = np.where(accept[..., None], pc, p)
        grad = np.where(accept[..., None], gc, grad)
        gn2 = np.where(accept, gc2, gn2)
        converged = converged | (accept & small)
        refresh = (slow | stale) & ~converged
        if refresh.any():
            _refresh_inverse_hessians(hess_inv, refresh, p, xm, xa, outer, reg, C)
        fresh = refresh | (fresh & ~accept)
        new_step = (accept & ~converged) | stale
        if new_step.any():
            step = np.where(new_step[..., None], np.einsum("gbij,gbj->gbi", hess_inv, grad), step)
        t = np.where(new_step, 1.0, np.where(reject, 0.5 * t, t))
        if (t < 1e-12).any():
            break
    if not converged.all():
        raise RuntimeError(
            f"logistic regression did not converge in {max_iter} iterations for "
            f"{int((~converged).sum())} problem(s)"
        )
    w = w_out
    coef, intercept = w[..., :d], w[..., d]
    if single_group:
        coef, intercept = coef[0], intercept[0]
        if single_label:
            coef, intercept = coef[0], intercept[0]
    return coef, intercept


def _refresh_inverse_hessians(hess_inv, refresh, p, xm, xa, outer, reg, C):
    """Writes the exact inverse Hessian into ``hess_inv[g, b]`` wherever ``refresh[g, b]``."""
    k = xa.shape[-1]
    diag = np.arange(k)
    curv = p * (1.0 - p)
    if outer is None:  # few labellings per group: one batched product over the selected problems
        rows, cols = np.nonzero(refresh)
        xs = xm[rows] * curv[rows, cols, :, None]
        hess = C * np.matmul(np.swapaxes(xs, -1, -2), xa[rows])
        hess[:, diag, diag] += reg
        hess_inv[rows, cols] = np.linalg.inv(hess)
        return
    rows, cols = np.nonzero(refresh)
    curv32 = curv.astype(np.float32)
    groups = np.unique(rows)
    # Σᵢ sᵢ·x̃ᵢx̃ᵢᵀ of every selected labelling: one batched product when most labellings of the
    # groups need it (small n, many groups), else one product per group over its selected labellings.
    if rows.size * 2 >= groups.size * refresh.shape[1]:
        if groups.size == refresh.shape[0]:
            packed = np.matmul(curv32, outer)[rows, cols]
        else:
            packed = np.matmul(curv32[groups], outer[groups])[np.searchsorted(groups, rows), cols]
    else:
        packed = np.concatenate([curv32[g, refresh[g]] @ outer[g] for g in groups])
    hess = C * packed.astype(np.float64).reshape(-1, k, k)
    hess[:, diag, diag] += reg
    hess_inv[rows, cols] = np.linalg.inv(hess)


def _sklearn_fit(x: np.ndarray, y: np.ndarray, *, C: float, penalize_intercept: bool):
    """The reference's scikit-learn fit (docs/methods/cdi.md §5.1); lbfgs when the intercept is free."""
    from sklearn.linear_model import LogisticRegression

    if penalize_intercept:
        clf = LogisticRegression(C=C, solver="liblinear", max_iter=1000, random_state=0)
    else:
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=1000, tol=1e-10, random_state=0)
    clf.fit(x, y)
    return clf.coef_[0], clf.intercept_[0]


_SOLVERS = ("newton", "sklearn")


def _check_solver(solver: str):
    if solver not in _SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known: {', '.join(_SOLVERS)}")


# ---- cross-fitting -------------------------------------------------------------------------------


def kfold_assignment(n: int, n_splits: int = 5, random_state: int = 0) -> np.ndarray:
    """Fold index (n,) of each row: ``KFold(n_splits, shuffle=True, random_state)`` over 0..n−1.

    The same assignment serves P and U, so P row i and U row i share a fold (docs/methods/cdi.md §5.1).

    Raises:
      ValueError: if n < n_splits (KFold needs one row per fold and side).
    """
    from sklearn.model_selection import KFold

    if n < n_splits:
        raise ValueError(
            f"too few samples for {n_splits}-fold cross-fitting: {n} per side (need at least {n_splits})"
        )
    fold = np.empty(n, np.int64)
    for k, (_, test) in enumerate(KFold(n_splits, shuffle=True, random_state=random_state).split(np.arange(n))):
        fold[test] = k
    return fold


def _check_pair(xp: np.ndarray, xu: np.ndarray, where: str):
    if xp.shape != xu.shape:
        raise ValueError(f"{where}: P features {xp.shape} and U features {xu.shape} must have the same shape")
    if not (np.isfinite(xp).all() and np.isfinite(xu).all()):
        raise ValueError(f"{where}: features hold NaN or inf")


@one_blas_thread
def crossfit_scores_batched(
    xp: np.ndarray,
    xu: np.ndarray,
    swaps: np.ndarray | None = None,
    *,
    n_splits: int = 5,
    random_state: int = 0,
    C: float = 1.0,
    penalize_intercept: bool = True,
    tol: float = 1e-10,
    chunk_elements: int = 4_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted scores of many paired problems and label swaps at once (Newton solver).

    For every trial t and swap pattern b: P row i gets label 1 and U row i label 0, except where
    ``swaps[t, b, i]`` is true, where the two labels are exchanged. For each fold, the standardiser and
    the logistic regression are fitted on the other folds' rows (the same row set for every b: a swap
    only moves a label within a pair, which is why permutation refits share one design matrix), and
    both rows of every held-out pair are scored.

    Args:
      xp, xu: (T, n, d) paired features of P and U.
      swaps: (T, B, n) bool, or None for the plain labelling (B = 1).
      n_splits, random_state: the KFold of :func:`kfold_assignment`.
      C, penalize_intercept, tol: as in :func:`fit_logistic_batched`.
      chunk_elements: bound on the (trials × B × rows) working arrays; trials are processed in chunks.

    Returns:
      ``(sp, su)`` of shape (T, B, n): the out-of-fold probability of "member" of P row i and of
      U row i under swap pattern b (whatever label the row carried).
    """
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    _check_pair(xp, xu, "crossfit")
    if xp.ndim != 3:
        raise ValueError(f"crossfit_scores_batched: expected (T, n, d) features, got {xp.shape}")
    T, n, d = xp.shape
    if swaps is None:
        swaps = np.zeros((T, 1, n), bool)
    swaps = np.asarray(swaps, bool)
    if swaps.shape[0] != T or swaps.shape[2] != n:
        raise ValueError(f"crossfit_scores_batched: swaps of shape {swaps.shape} do not match {xp.shape}")
    B = swaps.shape[1]
    fold = kfold_assignment(n, n_splits, random_state)
    sp = np.empty((T, B, n))
    su = np.empty((T, B, n))
    per_trial = 2 * n * (4 * B + (d + 1) + ((d + 1) ** 2 if B >= 32 else 0))  # working elements per trial
    step = max(1, chunk_elements // per_trial)
    for k in range(n_splits):
        train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        for lo in range(0, T, step):
            sl = slice(lo, min(T, lo + step))
            x_train = np.concatenate([xp[sl, train], xu[sl, train]], axis=1)  # (t, 2m, d)
            sw = swaps[sl][:, :, train]
            y = np.concatenate([~sw, sw], axis=2).astype(np.float64)  # P rows first
            scaler = fit_standardiser(x_train)
            coef, intercept = fit_logistic_batched(
                scaler.apply(x_train, augment=True), y, C=C, penalize_intercept=penalize_intercept, tol=tol,
                augmented=True,
            )
            for side, out in ((xp, sp), (xu, su)):
                z = scaler.apply(side[sl][:, test])  # (t, r, d)
                logits = np.matmul(coef, np.swapaxes(z, -1, -2)) + intercept[..., None]
                out[sl, :, test] = expit(logits)
    return sp, su


def crossfit_scores(
    xp: np.ndarray,
    xu: np.ndarray,
    *,
    n_splits: int = 5,
    random_state: int = 0,
    C: float = 1.0,
    penalize_intercept: bool = True,
    solver: str = "newton",
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold membership scores of n paired P and U rows (docs/methods/cdi.md §5.1).

    Args:
      xp, xu: (n, d) features of P (label 1) and U (label 0); row i of each forms pair i.
      solver: ``"newton"`` (vectorised NumPy, tight tolerance) or ``"sklearn"`` (the reference's
        liblinear call, exactly).

    Returns:
      ``(sp, su)``, each (n,): the probability of "member" from the fold model that did not see the row.
    """
    _check_solver(solver)
    xp = np.asarray(xp, np.float64)
    xu = np.asarray(xu, np.float64)
    _check_pair(xp, xu, "crossfit")
    if xp.ndim != 2:
        raise ValueError(f"crossfit_scores: expected (n, d) features, got {xp.shape}")
    if solver == "newton":
        sp, su = crossfit_scores_batched(
            xp[None], xu[None], n_splits=n_splits, random_state=random_state, C=C,
            penalize_intercept=penalize_intercept,
        )
        return sp[0, 0], su[0, 0]
    n = xp.shape[0]
    fold = kfold_assignment(n, n_splits, random_state)
    sp, su = np.empty(n), np.empty(n)
    for k in range(n_splits):
        train, test = fold != k, fold == k
        x_train = np.concatenate([xp[train], xu[train]])
        y = np.r_[np.ones(train.sum()), np.zeros(train.sum())]
        scaler = fit_standardiser(x_train)
        coef, intercept = _sklearn_fit(scaler.apply(x_train), y, C=C, penalize_intercept=penalize_intercept)
        sp[test] = expit(scaler.apply(xp[test]) @ coef + intercept)
        su[test] = expit(scaler.apply(xu[test]) @ coef + intercept)
    return sp, su


def fixed_split_scores(
    train_p: np.ndarray,
    train_u: np.ndarray,
    eval_p: np.ndarray,
    eval_u: np.ndarray,
    *,
    C: float = 1.0,
    penalize_intercept: bool = True,
    solver: str = "newton",
) -> tuple[np.ndarray, np.ndarray]:
    """The fixed-split variant (docs/methods/cdi.md §5.2): fit once on training rows, score evaluation rows.

    The evaluation rows never reach the fit, so their scores are independent given the model and a
    two-sample test on them is valid. The training sides may differ in size.

    Returns:
      ``(sp, su)``: probabilities of "member" of the evaluation rows of P and of U.
    """
    _check_solver(solver)
    arrays = [np.asarray(a, np.float64) for a in (train_p, train_u, eval_p, eval_u)]
    names = ("training P", "training U", "evaluation P", "evaluation U")
    d = arrays[0].shape[-1]
    for a, name in zip(arrays, names):
        if a.ndim != 2 or a.shape[1] != d:
            raise ValueError(f"fixed split: {name} features of shape {a.shape}, expected (rows, {d})")
        if not np.isfinite(a).all():
            raise ValueError(f"fixed split: {name} features hold NaN or inf")
        if a.shape[0] == 0:
            raise ValueError(f"fixed split: no {name} rows")
    train_p, train_u, eval_p, eval_u = arrays
    x_train = np.concatenate([train_p, train_u])
    y = np.r_[np.ones(len(train_p)), np.zeros(len(train_u))]
    scaler = fit_standardiser(x_train)
    if solver == "newton":
        coef, intercept = fit_logistic_batched(scaler.apply(x_train), y, C=C, penalize_intercept=penalize_intercept)
    else:
        coef, intercept = _sklearn_fit(scaler.apply(x_train), y, C=C, penalize_intercept=penalize_intercept)
    return expit(scaler.apply(eval_p) @ coef + intercept), expit(scaler.apply(eval_u) @ coef + intercept)
