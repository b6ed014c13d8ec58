"""Noise Optimisation (NO; CDI, arXiv 2411.12858; cdi-spec.md §4.6).

x_t = q(x0, t, ε) with one draw ε (purpose "no"), t = 100. An additive perturbation δ on x_t, from
zero, minimises J(δ) = ‖ε_θ(x_t + δ, t, c) − ε‖₂ for ``no_max_iter`` L-BFGS iterations. Features:
``no_loss`` and ``no_delta_norm`` = ‖δ*‖₂.

jaxmia's default (``no_mode="per_example"``, quirk Q3) optimises each example's own objective with
``optax.lbfgs`` (memory 10, zoom line search with at most ``no_max_linesearch_steps`` evaluations,
like SciPy's m = 10, maxls = 20) under vmap, so a sample's features never depend on which samples
share its batch. Safeguard: the best iterate seen is returned (SciPy's L-BFGS-B also falls back to
its last good point when a line search fails), so J(δ*) ≤ J(0). ``no_loss`` is J(δ*), evaluated at
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
import optax
import scipy.optimize

from jaxmia import rng
from jaxmia import schedule as sched
from jaxmia.features.norms import l2, safe_l2
from jaxmia.features.registry import Cost, register_feature

NO_COLUMNS = ("no_loss", "no_delta_norm")


def lbfgs_minimise(fn, x_init, *, max_iter: int, memory_size: int = 10, max_linesearch_steps: int = 20):
    """Minimises ``fn`` from ``x_init`` with ``max_iter`` optax L-BFGS iterations (one example).

    Returns (x_best, fn(x_best), fn(x_init)), x_best being the best iterate seen. Jittable and
    vmappable: the iteration count is fixed, the line search bounded.
    """
    opt = optax.lbfgs(
        memory_size=memory_size,
        linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=max_linesearch_steps, initial_guess_strategy="one"),
    )
    if int(max_iter) == 0:
        value = fn(x_init)
        return x_init, value, value
    value, grad = jax.value_and_grad(fn)(x_init)

    def step(carry, _):
        x, state, value, grad, best_x, best_value = carry
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fn)
        x = optax.apply_updates(x, updates)
        # The line search stores fn and its gradient at the accepted point: no re-evaluation.
        value, grad = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
        better = value < best_value
        return (x, state, value, grad, jnp.where(better, x, best_x), jnp.where(better, value, best_value)), None

    init = (x_init, opt.init(x_init), value, grad, x_init, value)
    (_, _, _, _, best_x, best_value), _ = jax.lax.scan(step, init, None, length=int(max_iter))
    return best_x, best_value, value


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


@register_feature(
    "noise_opt",
    columns=lambda cfg: NO_COLUMNS,
    work=_no_work,
    host_columns=_host_columns,
    host_fn=reference_noise_opt,
)
def noise_opt_kernel(denoiser, x0, cond, key, cfg, shared):
    """Noise Optimisation (cdi-spec.md §4.6): L-BFGS on a perturbation of x_t; columns no_loss, no_delta_norm."""
    if cfg.no_mode == "reference":
        return {}  # batch-coupled: produced by the host stage (reference_noise_opt)
    eps = key.normal("no", 0, x0.shape, x0.dtype)
    no_loss, delta_norm = noise_opt_example(denoiser, x0, cond, eps, cfg)
    return {"no_loss": no_loss, "no_delta_norm": delta_norm}
