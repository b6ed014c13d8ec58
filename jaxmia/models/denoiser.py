"""The one interface every attack sees: a :class:`Denoiser` value.

Nothing above ``jaxmia.models`` knows which architecture it probes (docs/methods/design.md). A denoiser bundles
the network's pure apply function, its parameters, the noise schedule and, for latent models, the
encoder. Attacks call :meth:`Denoiser.eps` on ONE example and vmap it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from jaxmia import schedule as sched

# The conditioning kinds an attack can supply (one list: families and conditioning specs use it too).
COND_KINDS = ("none", "class", "text")


@struct.dataclass
class Denoiser:
    """A noise predictor ε_θ(x_t, t, c) with its schedule.

    Attributes:
      params: the network's parameter tree (a pytree; passed through ``jit`` as an argument).
      schedule: the model's own :class:`~jaxmia.schedule.Schedule`.
      apply_fn: ``(params, x[B,H,W,C], t[B] int32, cond[B,...] | None) -> output[B,H,W,C']``.
      sample_shape: (H, W, C) of the network's input x0 (the latent shape for latent models).
      cond_kind: ``none``, ``class`` (int label) or ``text`` (an (L, D) embedding per image).
      learned_sigma: the output holds [ε, variance] on the channel axis; ε is the first half.
      x0_clip: bound of x̂0 for samplers (1.0 for pixel models in [-1, 1]; None for latents).
      encoder_params / encode_fn: latent models only; ``encode_fn(encoder_params, images[B,H,W,C],
        keys[B]) -> latents[B,h,w,c]``, already multiplied by the latent scale.
      decode_fn: latent models only; ``decode_fn(encoder_params, latents) -> images``.
      digest: SHA-256 of the weights, recorded in every output.
    """

    params: Any
    schedule: sched.Schedule
    apply_fn: Callable = struct.field(pytree_node=False)
    sample_shape: tuple = struct.field(pytree_node=False)
    cond_kind: str = struct.field(pytree_node=False, default="none")
    learned_sigma: bool = struct.field(pytree_node=False, default=False)
    x0_clip: Optional[float] = struct.field(pytree_node=False, default=1.0)
    encoder_params: Any = None
    encode_fn: Optional[Callable] = struct.field(pytree_node=False, default=None)
    decode_fn: Optional[Callable] = struct.field(pytree_node=False, default=None)
    image_shape: Optional[tuple] = struct.field(pytree_node=False, default=None)
    digest: str = struct.field(pytree_node=False, default="")

    def eps_batch(self, x, t, cond=None):
        """ε̂ for a batch: x (B, H, W, C), t (B,) int."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x.shape[:1])
        out = self.apply_fn(self.params, x, t, cond)
        if self.learned_sigma:
            out = out[..., : x.shape[-1]]
        return sched.eps_from_prediction(self.schedule, x, t, out)

    def eps(self, x, t, cond=None):
        """ε̂_θ(x, t, c) for ONE example: x (H, W, C), t a scalar int, cond per example or None."""
        batch_cond = None if cond is None else jnp.asarray(cond)[None]
        return self.eps_batch(x[None], jnp.reshape(jnp.asarray(t, jnp.int32), (1,)), batch_cond)[0]

    @property
    def is_latent(self) -> bool:
        return self.encode_fn is not None

    @property
    def input_shape(self) -> tuple:
        """(H, W, C) of the images the user supplies (pixel space)."""
        return tuple(self.image_shape or self.sample_shape)


def analytic_denoiser(x_star, schedule: sched.Schedule, *, cond_kind: str = "none") -> Denoiser:
    """The exact denoiser of a one-point training set {x*} (docs/methods/cdi.md §11, item 6).

    ε(x, t) = (x − √ā_t·x*) / √(1 − ā_t). It is the closed-form fixture of the tests: DL, ML and PIA
    have known values, and SecMI's error is 0 for every input. ``x_star`` may also be a stack
    (K, H, W, C) of training points, giving the exact denoiser of that set (a softmax over the
    points' Gaussian likelihoods), for DRC's "member restored to itself" check.
    """
    x_star = jnp.asarray(x_star, jnp.float32)
    points = x_star if x_star.ndim == 4 else x_star[None]

    def apply_fn(params, x, t, cond):
        ab = sched.alpha_bar(schedule, t)[:, None, None, None]
        mu = jnp.sqrt(ab)[:, None] * params["points"][None]  # (B, K, H, W, C)
        d2 = jnp.sum((x[:, None] - mu) ** 2, axis=(2, 3, 4)) / (2 * (1 - ab[:, :, 0, 0]))
        w = jax.nn.softmax(-d2, axis=1)  # posterior over training points
        x0_hat = jnp.einsum("bk,khwc->bhwc", w, params["points"])
        return (x - jnp.sqrt(ab) * x0_hat) / jnp.sqrt(1 - ab)

    return Denoiser(
        params={"points": points},
        schedule=schedule,
        apply_fn=apply_fn,
        sample_shape=tuple(points.shape[1:]),
        cond_kind=cond_kind,
        x0_clip=None,
        digest="analytic",
    )



