"""Per-sample norms of the CDI/MIA signals (docs/methods/cdi.md §1: every norm is per sample, over all D entries)."""

from __future__ import annotations

import jax.numpy as jnp

NORMS = ("l2", "squared_l2")


def check_norm(norm: str, *, field: str = "norm") -> str:
    if norm not in NORMS:
        raise ValueError(f"{field}: unknown norm {norm!r}; known: {', '.join(NORMS)}")
    return norm


def sum_squares(d):
    return jnp.sum(jnp.square(d))


def l2(d):
    """‖d‖₂ over all entries of one sample."""
    return jnp.sqrt(sum_squares(d))


def safe_l2(d):
    """‖d‖₂ with a zero (not NaN) gradient at d = 0, for objectives that are differentiated."""
    s = sum_squares(d)
    positive = s > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, s, 1.0)), 0.0)


def sample_norm(d, norm: str):
    """``l2`` = ‖d‖₂ (CDI), ``squared_l2`` = ‖d‖₂² (the naive-loss and SecMI papers)."""
    return l2(d) if norm == "l2" else sum_squares(d)


def lp(d, p, *, root: bool = True):
    """(Σ|d|^p)^(1/p), or Σ|d|^p without the root (the PIA code's convention; same ranking)."""
    total = jnp.sum(jnp.abs(d) ** p)
    return total ** (1.0 / p) if root else total
