"""Noise Optimisation (NO; CDI, arXiv 2411.12858; docs/methods/cdi.md §4.6).

x_t = q(x0, t, ε) with one draw ε (purpose "no"), t = 100. An additive perturbation δ on x_t, from
zero, minimises J(δ) = ‖ε_θ(x_t + δ, t, c) − ε‖₂ for ``no_max_iter`` L-BFGS iterations. Features:
``no_loss`` and ``no_delta_norm`` = ‖δ*‖₂.

jaxmia's default (``no_mode="per_example"``, quirk Q3) optimises each example's own objective with
jaxmia's compact L-BFGS (:func:`lbfgs_minimise`: memory ``no_memory_size`` = 10, backtracking
Armijo line search with at most ``no_max_linesearch_steps`` = 20 evaluations, like SciPy's m = 10,
maxls = 20) under vmap, so a sample's features never depend on which samples share its batch. Only
sufficient decreases are accepted, so J(δ*) ≤ J(0). ``no_loss`` is J(δ*), evaluated at
x_t + δ*; ``no_double_noise=True`` re-noises first, as the reference does (Q4):
``‖ε_θ(√ā_t·(x_t+δ*) + √(1−ā_t)·ε, t, c) − ε‖₂``.

The reference (``no_mode="reference"``) is batch-coupled by construction: SciPy L-BFGS-B (float64,
maxiter = ``no_max_iter``, m = 10, maxls = 20, other options at SciPy's defaults) over the whole
batch's δ as one flat vector, with J = the batch mean of the per-sample errors. It runs on the host
over the real rows of each batch (no padding: the last batch is simply smaller), so results depend
on the batch size and on which images share a batch. Bit-level agreement with PyTorch is not expected.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from jaxmia import rng
from jaxmia import schedule as sched
from jaxmia.features.norms import l2, safe_l2
from jaxmia.features.registry import Cost, LaneStage, register_feature

NO_COLUMNS = ("no_loss", "no_delta_norm")


ARMIJO_C1 = 1e-4  # sufficient-decrease constant (Nocedal & Wright's usual choice)
CURVATURE_EPS = 1e-10  # a pair with yᵀs at or below this is not stored (it would break H's positivity)


def _apply_inverse_hessian(grad, s_hist, y_hist, rho, filled, gamma):
    """H·g by the L-BFGS two-loop recursion (Nocedal & Wright, Numerical Optimization, Alg. 7.4).

    The history is a fixed buffer of m slots, oldest first; slots with ``filled`` False are masked out
    (they contribute nothing), so the shapes never depend on how many pairs exist. H₀ = γ·I.
    """

    def newest_to_oldest(q, pair):
        s, y, r, ok = pair
        alpha = jnp.where(ok, r * jnp.vdot(s, q), 0.0)
        return q - alpha * y, alpha

    q, alphas = jax.lax.scan(newest_to_oldest, grad, (s_hist, y_hist, rho, filled), reverse=True)

    def oldest_to_newest(r, pair):
        s, y, rho_i, ok, alpha = pair
        beta = rho_i * jnp.vdot(y, r)
        return r + jnp.where(ok, alpha - beta, 0.0) * s, None

    r, _ = jax.lax.scan(oldest_to_newest, gamma * q, (s_hist, y_hist, rho, filled, alphas))
    return r


def lbfgs_init(x_init, value_dtype, memory_size: int = 10) -> dict:
    """The L-BFGS state before its first evaluation (:func:`lbfgs_minimise`'s state machine).

    The next point to evaluate is always ``state["x_trial"]`` (here ``x_init`` itself); the state also
    counts the evaluations made (``n_evals``), which no decision reads.
    """
    m = int(memory_size)
    zero = jnp.zeros((), value_dtype)
    return dict(
        x=x_init, value=zero, grad=jnp.zeros_like(x_init), x_trial=x_init, step=zero,
        direction=jnp.zeros_like(x_init), slope=zero, steepest=jnp.array(True), evals=jnp.int32(0),
        stopped=jnp.array(False), iteration=jnp.int32(0), started=jnp.array(False), initial_value=zero,
        s_hist=jnp.zeros((m, *x_init.shape), x_init.dtype), y_hist=jnp.zeros((m, *x_init.shape), x_init.dtype),
        rho=jnp.zeros((m,), value_dtype), filled=jnp.zeros((m,), bool), gamma=jnp.ones((), value_dtype),
        n_evals=jnp.int32(0),
    )


def lbfgs_running(c: dict, max_iter: int):
    """Whether the state machine wants another evaluation (not stopped, fewer than ``max_iter`` iterations)."""
    return ~c["stopped"] & (c["iteration"] < int(max_iter))


def lbfgs_update(c: dict, value, grad, *, max_linesearch_steps: int = 20) -> dict:
    """One step of the state machine: ``value``, ``grad`` = fn and its gradient at ``c["x_trial"]``.

    Accepts or rejects the trial point (Armijo), stores the curvature pair of an accepted step,
    and sets the next trial point: a halved step, or the first step of a new line search. See
    :func:`lbfgs_minimise` for the algorithm; the evaluation itself is the caller's, so one driver
    can run it in a ``while_loop`` and another one evaluation per compiled call
    (:mod:`jaxmia.features.lanes`), with the same iterates.
    """
    value_dtype = c["value"].dtype
    max_linesearch_steps = int(max_linesearch_steps)

    def search_start(x, grad, history):
        """The direction, its slope gᵀd and the first trial step of a new line search."""
        s_hist, y_hist, rho, filled, gamma = history
        direction = -_apply_inverse_hessian(grad, s_hist, y_hist, rho, filled, gamma)
        slope = jnp.vdot(grad, direction)
        # Empty history, or a non-descent direction from rounding: steepest descent, unit-length move.
        steepest = ~jnp.any(filled) | ~(slope < 0)
        direction = jnp.where(steepest, -grad, direction)
        slope = jnp.where(steepest, -jnp.vdot(grad, grad), slope)
        grad_norm = jnp.sqrt(jnp.vdot(grad, grad))
        step = jnp.where(steepest, 1.0 / jnp.maximum(grad_norm, jnp.finfo(value_dtype).tiny), 1.0).astype(value_dtype)
        return direction, slope, step, steepest

    started = c["started"]
    armijo = value <= c["value"] + ARMIJO_C1 * c["step"] * c["slope"]
    sufficient = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)) & armijo
    accept = sufficient | ~started  # the first evaluation is the starting point itself
    # Curvature pair of an accepted step; skipped when yᵀs ≤ 1e-10 (it would break H's positivity).
    s, y = c["x_trial"] - c["x"], grad - c["grad"]
    sy, yy = jnp.vdot(s, y), jnp.vdot(y, y)
    push = accept & started & (sy > CURVATURE_EPS)
    roll = lambda buf, new: jnp.where(push, jnp.concatenate([buf[1:], new[None]]), buf)  # noqa: E731
    s_hist, y_hist = roll(c["s_hist"], s), roll(c["y_hist"], y)
    rho = roll(c["rho"], 1.0 / jnp.where(push, sy, 1.0))
    filled = roll(c["filled"], jnp.array(True))
    gamma = jnp.where(push, sy / jnp.where(push, yy, 1.0), c["gamma"])

    x, current, current_grad = (jnp.where(accept, new, old) for new, old in
                                ((c["x_trial"], c["x"]), (value, c["value"]), (grad, c["grad"])))
    evals = jnp.where(accept, 0, c["evals"] + 1)
    failed = evals >= max_linesearch_steps
    filled = filled & ~failed  # a failed search clears the memory and restarts from steepest descent
    stopped = failed & c["steepest"]  # ... unless it already was steepest descent
    restart = accept | failed
    direction, slope, first_step, steepest = search_start(x, current_grad, (s_hist, y_hist, rho, filled, gamma))
    step = jnp.where(restart, first_step, 0.5 * c["step"])
    direction, slope, steepest = (jnp.where(restart, new, old) for new, old in
                                  ((direction, c["direction"]), (slope, c["slope"]), (steepest, c["steepest"])))
    return dict(
        x=x, value=current, grad=current_grad, x_trial=x + step * direction, step=step, direction=direction,
        slope=slope, steepest=steepest, evals=jnp.where(failed, 0, evals), stopped=stopped,
        iteration=c["iteration"] + (accept & started), started=jnp.array(True),
        initial_value=jnp.where(started, c["initial_value"], value),
        s_hist=s_hist, y_hist=y_hist, rho=rho, filled=filled, gamma=gamma, n_evals=c["n_evals"] + 1,
    )


def lbfgs_minimise(fn, x_init, *, max_iter: int, memory_size: int = 10, max_linesearch_steps: int = 20):
    """Minimises ``fn`` from ``x_init`` by at most ``max_iter`` L-BFGS iterations (ONE example).

    jaxmia's own compact L-BFGS: the two-loop recursion (Nocedal & Wright, Numerical Optimization,
    2nd ed., Alg. 7.4) over a fixed buffer of ``memory_size`` (s, y) pairs, H₀ = γ·I with
    γ = sᵀy / yᵀy from the newest pair, pairs with yᵀs ≤ 1e-10 skipped; and a backtracking Armijo line
    search (N&W Alg. 3.1: c1 = 1e-4, halving, at most ``max_linesearch_steps`` evaluations). The first
    trial step is 1, except when the history is empty (the first iteration, or after a reset): the
    direction is then −g and the first trial step 1/‖g‖₂, a unit-length move, as SciPy's L-BFGS-B
    starts. If the search finds no acceptable step, the history is cleared and the iteration restarts
    from steepest descent; a failure with an empty history stops the optimisation.

    Compile cost is the reason for this design: the whole run is ONE ``lax.while_loop`` over
    evaluations (a small state machine, :func:`lbfgs_update`: initial point, trial step, accept or
    halve) with ONE ``value_and_grad`` call site, so the model is traced and compiled once.
    ``optax.lbfgs``'s zoom line search puts several call sites in nested while loops, which under
    vmap made the demo UNet's NO program compile several times slower.

    Deliberate difference from the reference: SciPy's L-BFGS-B uses a Moré–Thuente line search (which
    can also lengthen the step) and a compact-form Hessian, so trajectories differ.
    ``no_mode="reference"`` runs SciPy itself.

    Armijo acceptance (only finite points with a sufficient decrease) makes the iterates monotone, so
    the last iterate is the best point seen and J(x_best) ≤ J(x_init); its value is the one the line
    search stored, so no extra pass is needed.

    Returns (x_best, fn(x_best), fn(x_init)). Jittable and vmappable: ``max_iter`` and the buffer size
    are static, and at most 1 + 2·``max_iter``·``max_linesearch_steps`` evaluations run.
    """
    max_iter = int(max_iter)
    if max_iter == 0:
        value = fn(x_init)
        return x_init, value, value
    value_and_grad = jax.value_and_grad(fn)
    init = lbfgs_init(x_init, jax.eval_shape(fn, x_init).dtype, memory_size)

    def evaluate(c):
        return lbfgs_update(c, *value_and_grad(c["x_trial"]), max_linesearch_steps=max_linesearch_steps)

    final = jax.lax.while_loop(lambda c: lbfgs_running(c, max_iter), evaluate, init)
    return final["x"], final["value"], final["initial_value"]


def noise_opt_example(denoiser, x0, cond, eps, cfg):
    """(no_loss, no_delta_norm) of ONE example, per-example L-BFGS (the default mode)."""
    t = cfg.no_timestep
    x_t = sched.q_sample(denoiser.schedule, x0, t, eps)

    def objective(delta):
        return safe_l2(denoiser.eps(x_t + delta, t, cond) - eps)

    delta, j_best, _ = lbfgs_minimise(
        objective, jnp.zeros_like(x0), max_iter=cfg.no_max_iter, memory_size=cfg.no_memory_size,
        max_linesearch_steps=cfg.no_max_linesearch_steps,
    )
    if cfg.no_double_noise:
        x_final = sched.q_sample(denoiser.schedule, x_t + delta, t, eps)
        no_loss = l2(denoiser.eps(x_final, t, cond) - eps)
    else:
        no_loss = j_best
    return no_loss, l2(delta)


def _no_work(cfg, requested):
    n = cfg.no_max_iter
    # one value-and-grad at δ = 0, then (nominally) one line-search evaluation per iteration
    units = {"no_opt": Cost(forward=1 + n, backward=1 + n, exact=n == 0)}
    if cfg.no_double_noise or cfg.no_mode == "reference":
        units["no_final"] = Cost(forward=1)
    return units


def _host_columns(cfg):
    return NO_COLUMNS if cfg.no_mode == "reference" else ()


# ---- the batch-coupled reference (host-side SciPy) -----------------------------------------------


@functools.partial(jax.jit, static_argnames=("t",))
def _jit_no_setup(denoiser, x0, root, id_hash, *, t):
    eps = jax.vmap(lambda h: jax.random.normal(jax.random.fold_in(rng.key_for(root, h, "no"), 0), x0.shape[1:], x0.dtype))(id_hash)
    return eps, sched.q_sample(denoiser.schedule, x0, jnp.full(x0.shape[:1], t, jnp.int32), eps)


@functools.partial(jax.jit, static_argnames=("t",))
def _jit_batch_objective(denoiser, x_t, cond, eps, delta, *, t):
    """J(δ) = mean over the batch of ‖ε_θ(x_t + δ, t, c) − ε‖₂ and its gradient (the reference's)."""

    def batch_mean(delta):
        err = denoiser.eps_batch(x_t + delta, jnp.full(x_t.shape[:1], t, jnp.int32), cond) - eps
        return jnp.mean(jax.vmap(safe_l2)(err))

    return jax.value_and_grad(batch_mean)(delta)


@functools.partial(jax.jit, static_argnames=("t", "double_noise"))
def _jit_final(denoiser, x_t, cond, eps, delta, *, t, double_noise):
    ts = jnp.full(x_t.shape[:1], t, jnp.int32)
    x = x_t + delta
    if double_noise:
        x = sched.q_sample(denoiser.schedule, x, ts, eps)
    err = denoiser.eps_batch(x, ts, cond) - eps
    return jax.vmap(l2)(err), jax.vmap(l2)(delta)


def reference_noise_opt(denoiser, x0, cond, root, id_hash, cfg) -> dict:
    """NO over ONE whole batch as the reference runs it (host SciPy L-BFGS-B over the flat batch).

    Args:
      x0: (B, H, W, C) the batch's real rows (no padding). cond: (B, ...) or None.
      root, id_hash: the run's root key and the rows' (B, 2) id hashes (the draws are the same as
        in the per-example mode).

    Returns:
      {"no_loss": (B,), "no_delta_norm": (B,)} float64 NumPy arrays.
    """
    t = int(cfg.no_timestep)
    x0 = jnp.asarray(x0)
    eps, x_t = _jit_no_setup(denoiser, x0, root, jnp.asarray(id_hash), t=t)
    shape = x0.shape

    def value_and_grad(flat):
        v, g = _jit_batch_objective(denoiser, x_t, cond, eps, jnp.asarray(flat.reshape(shape), jnp.float32), t=t)
        return float(v), np.asarray(g, np.float64).ravel()

    delta = np.zeros(int(np.prod(shape)), np.float64)
    if cfg.no_max_iter > 0:
        result = scipy.optimize.minimize(
            value_and_grad, delta, jac=True, method="L-BFGS-B",
            options={"maxiter": int(cfg.no_max_iter), "maxcor": int(cfg.no_memory_size),
                     "maxls": int(cfg.no_max_linesearch_steps)},
        )
        delta = result.x
    delta = jnp.asarray(delta.reshape(shape), jnp.float32)
    no_loss, delta_norm = _jit_final(denoiser, x_t, cond, eps, delta, t=t, double_noise=bool(cfg.no_double_noise))
    return {"no_loss": np.asarray(no_loss, np.float64), "no_delta_norm": np.asarray(delta_norm, np.float64)}


# ---- the lane stage: one evaluation per compiled call (jaxmia.features.lanes) -------------------


def _objective(denoiser, point, eps, cond, t):
    """J at the point x_t + δ: ‖ε_θ(x_t + δ, t, c) − ε‖₂ (safe at 0); its gradient in the point is ∂J/∂δ."""
    return safe_l2(denoiser.eps(point, t, cond) - eps)


def no_lane_init(denoiser, x0, cond, key, cfg) -> dict:
    """The NO state of ONE example before its first evaluation: x_t, its draw ε, c, and L-BFGS at δ = 0."""
    t = cfg.no_timestep
    eps = key.normal("no", 0, x0.shape, x0.dtype)
    x_t = sched.q_sample(denoiser.schedule, x0, t, eps)
    value_dtype = jax.eval_shape(lambda p: _objective(denoiser, p, eps, cond, t), x_t).dtype
    return dict(x_t=x_t, eps=eps, cond=cond, lbfgs=lbfgs_init(jnp.zeros_like(x0), value_dtype, cfg.no_memory_size),
                final_value=jnp.zeros((), value_dtype), final_done=jnp.array(False))


def _searching(lb, cfg):
    # ~started: the value at δ = 0 is still owed (the only evaluation when no_max_iter = 0)
    return ~lb["started"] | lbfgs_running(lb, cfg.no_max_iter)


def no_lane_running(state, cfg):
    """Whether the example needs another evaluation: L-BFGS not finished, or the re-noised pass owed."""
    lb = state["lbfgs"]
    return _searching(lb, cfg) | (bool(cfg.no_double_noise) & ~state["final_done"])


def no_lane_step(denoiser, state, cfg) -> dict:
    """ONE evaluation of ONE example: J and ∂J/∂δ at L-BFGS's trial point, then :func:`lbfgs_update`.

    The same iterates as :func:`noise_opt_example`'s while loop (the same update on the same values).
    With ``no_double_noise``, one more evaluation after L-BFGS stops gives the re-noised loss
    ‖ε_θ(√ā_t·(x_t+δ*) + √(1−ā_t)·ε, t, c) − ε‖₂ (its gradient is not used).
    """
    t = cfg.no_timestep
    lb = state["lbfgs"]
    searching = _searching(lb, cfg)
    point = state["x_t"] + lb["x_trial"]
    if cfg.no_double_noise:
        final_point = sched.q_sample(denoiser.schedule, state["x_t"] + lb["x"], t, state["eps"])
        point = jnp.where(searching, point, final_point)
    value, grad = jax.value_and_grad(_objective, argnums=1)(denoiser, point, state["eps"], state["cond"], t)
    updated = lbfgs_update(lb, value, grad, max_linesearch_steps=cfg.no_max_linesearch_steps)
    lb = jax.tree_util.tree_map(lambda new, old: jnp.where(searching, new, old), updated, lb)
    final = ~searching
    return dict(state, lbfgs=lb, final_value=jnp.where(final, value, state["final_value"]),
                final_done=state["final_done"] | final)


def no_lane_outputs(state, cfg) -> dict:
    """(no_loss, no_delta_norm) of a finished example."""
    lb = state["lbfgs"]
    no_loss = state["final_value"] if cfg.no_double_noise else lb["value"]
    return {"no_loss": no_loss, "no_delta_norm": l2(lb["x"])}


def no_lane_evals(state):
    return state["lbfgs"]["n_evals"] + state["final_done"].astype(jnp.int32)


NO_LANE = LaneStage(
    columns=lambda cfg: NO_COLUMNS if cfg.no_mode == "per_example" else (),
    init=no_lane_init, step=no_lane_step, running=no_lane_running, outputs=no_lane_outputs, evals=no_lane_evals,
)


@register_feature(
    "noise_opt",
    columns=lambda cfg: NO_COLUMNS,
    direction=lambda cfg: {"no_loss": "lower", "no_delta_norm": "none"},
    work=_no_work,
    host_columns=_host_columns,
    host_fn=reference_noise_opt,
    lane=NO_LANE,
    reads=("no_timestep", "no_max_iter", "no_mode", "no_double_noise", "no_memory_size", "no_max_linesearch_steps"),
    groups=("no", "new"),
    timesteps=lambda cfg: (cfg.no_timestep,),
)
def noise_opt_kernel(denoiser, x0, cond, key, cfg, shared):
    """Noise Optimisation (docs/methods/cdi.md §4.6): L-BFGS on a perturbation of x_t; columns no_loss, no_delta_norm."""
    if cfg.no_mode == "reference":
        return {}  # batch-coupled: produced by the host stage (reference_noise_opt)
    if "noise_opt" in shared.deferred:
        return {}  # produced by the lane stage (NO_LANE, jaxmia.features.lanes)
    eps = key.normal("no", 0, x0.shape, x0.dtype)
    no_loss, delta_norm = noise_opt_example(denoiser, x0, cond, eps, cfg)
    return {"no_loss": no_loss, "no_delta_norm": delta_norm}
