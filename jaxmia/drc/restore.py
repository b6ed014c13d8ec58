"""Restore: RePaint-style diffusion inpainting with the target's own denoiser and schedule.

Written for ONE image, ONE mask and ONE key; the caller vmaps over tasks and images and jits once
per batch. The sampling loop is a ``lax.scan`` over a static plan of moves, one network call each.

Procedure (docs/methods/mia.md §4.2 "Restore", jaxmia's design where "Model Will Tell", Fu et al.,
arXiv 2403.08487, is silent):

1. x ← q(M⊙x0, t_start, ε) with t_start = round(s·T) − 1 (``init="noise"``: x ← ε).
2. For k = K..2: ε̂ = ε_θ(x, t_k, c); the unknown part moves to t_{k−1} with the η-step
   (Song et al. 2021, Eq. 12; η = 0 DDIM, η = 1 DDPM); the known part is q(x0, t_{k−1}, ε_k) with
   fresh keyed noise; x ← M⊙known + (1−M)⊙unknown (Lugmayr et al., "RePaint", CVPR 2022, Eq. 8).
3. From t_1 the move lands on the clean image: x̂ = M⊙x0 + (1−M)⊙x̂0, so the known region is
   EXACTLY the original (a select, not an arithmetic blend, so no round-off can leak in).

RePaint resampling (``n_resample > 1``): after arriving at step indices 1, 1+j, 1+2j, … the whole
image is re-noised forward j steps with q(x_{t'} | x_t) and those steps are redone, n_resample − 1
times; this is RePaint's ``get_schedule_jump`` on the K sampling steps. Consecutive single-step
jumps are merged into one forward jump (same distribution), so every scan step is exactly one
network call.

Randomness: move i draws its three noises (jump or initialisation, η-step, known part) from
``fold_in(key, i)``; the initial ε of step 1 is move 0's first draw.

Latent models: the image is encoded, the mask is min-pooled to the latent grid (a latent cell is
known only if all its pixels are), the latent is restored, decoded, and the known PIXELS are
pasted back, so the known region is again exactly the original.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxmia import schedule as sched
from jaxmia.drc.config import DRCConfig, tasks


# The restoration key is folded with the move index for each move's noise, and with this word
# (never a move index) for the latent encoder's noise.
ENCODE_FOLD = 0xFFFFFFFF


@dataclass(frozen=True)
class RestorePlan:
    """The static move list of one restoration (hashable; built on the host).

    Attributes:
      t_start: the timestep the restoration starts from.
      timesteps: (t_1, …, t_K), ascending.
      t_prev: per move, the timestep x is at before it (below ``t_from`` only after a RePaint jump).
      t_from: per move, the timestep the network is evaluated at.
      t_to: per move, the target timestep (``CLEAN`` = -1 for the last move).
    """

    t_start: int
    timesteps: tuple
    t_prev: tuple
    t_from: tuple
    t_to: tuple

    @property
    def network_calls(self) -> int:
        return len(self.t_from)


def sampling_timesteps(num_train_timesteps: int, strength: float, steps: int) -> tuple:
    """t_k = round(k·(t_start+1)/K) − 1 for k = 1..K: K evenly spaced steps ending at t_start.

    t_start = round(s·T) − 1. The spacing is DDIM's "trailing" one, so the last move goes from
    t_1 ≈ t_start/K to the clean image rather than wasting a call at t = 0.
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength!r}")
    t_start = int(math.floor(strength * num_train_timesteps + 0.5)) - 1
    if t_start < 0:
        raise ValueError(f"strength {strength} gives t_start = {t_start} < 0 for T = {num_train_timesteps}")
    if steps < 1 or steps > t_start + 1:
        raise ValueError(f"steps must lie in [1, t_start + 1 = {t_start + 1}] for strength {strength}, got {steps}")
    return tuple(int(math.floor(k * (t_start + 1) / steps + 0.5)) - 1 for k in range(1, steps + 1))


def jump_schedule(steps: int, jump_length: int, n_resample: int) -> list[int]:
    """The visited step indices K, …, 0 (0 = clean) with RePaint's resampling jumps.

    A transcription of RePaint's ``get_schedule_jump(t_T=K, jump_length, jump_n_sample)``
    (Lugmayr et al. 2022, ``guided_diffusion/scheduler.py``), whose states K−1..0, −1 are this
    function's K..1, 0.
    """
    jumps = {j: n_resample - 1 for j in range(0, steps - jump_length, jump_length)}
    t, ts = steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return [t + 1 for t in ts]


@functools.lru_cache(maxsize=64)
def restore_plan(num_train_timesteps: int, strength: float, steps: int, jump_length: int = 10,
                 n_resample: int = 1) -> RestorePlan:
    """The move list for (T, s, K, RePaint jumps); see the module docstring."""
    timesteps = sampling_timesteps(num_train_timesteps, strength, steps)
    time_of = {0: sched.CLEAN, **{k: timesteps[k - 1] for k in range(1, steps + 1)}}
    visited = jump_schedule(steps, jump_length, n_resample)
    # Each downward pair (a, b) is one move; a run of upward pairs before it is folded into the
    # move as one forward jump from where x really is (the last downward target) up to a.
    moves, position = [], visited[0]
    for a, b in zip(visited, visited[1:]):
        if b > a:
            continue
        moves.append((position, a, b))
        position = b
    return RestorePlan(
        t_start=timesteps[-1],
        timesteps=timesteps,
        t_prev=tuple(time_of[p] for p, _, _ in moves),
        t_from=tuple(time_of[a] for _, a, _ in moves),
        t_to=tuple(time_of[b] for _, _, b in moves),
    )


def plan_for(denoiser, cfg: DRCConfig) -> RestorePlan:
    return restore_plan(denoiser.schedule.num_train_timesteps, cfg.strength, cfg.steps, cfg.jump_length,
                        cfg.n_resample)


def network_calls_per_image(cfg: DRCConfig, num_train_timesteps: int = 1000) -> int:
    """Denoiser evaluations one image costs under ``cfg``: R tasks × moves per restoration."""
    plan = restore_plan(num_train_timesteps, cfg.strength, cfg.steps, cfg.jump_length, cfg.n_resample)
    return len(tasks(cfg)) * plan.network_calls


def restore_one(denoiser, x0, mask, key, cond=None, *, plan: RestorePlan, eta: float = 0.0,
                init: str = "known"):
    """Inpaints the hole of ONE example in the denoiser's own space (pixels or latents).

    Args:
      denoiser: a :class:`~jaxmia.models.Denoiser`; ``x0_clip`` bounds x̂0 when not None.
      x0: (h, w, c) clean input in the denoiser's space.
      mask: (h, w) known-region mask M (1 known, 0 hole), exactly 0/1.
      key: this example's and task's key (noise at every step is folded from it).
      plan: the static :class:`RestorePlan`.

    Returns:
      (h, w, c) x̂, equal to x0 exactly where M = 1.
    """
    schedule = denoiser.schedule
    known = (jnp.asarray(mask) > 0.5)[..., None]
    if init not in ("known", "noise"):
        raise ValueError(f"unknown init {init!r}; known: known, noise")

    def move(x, step):
        i, t_prev, t_from, t_to = step
        # Three fresh draws per move, keyed by the move index: the jump (or, at move 0, the
        # initialisation), the η-step and the known part. One draw site keeps compilation cheap.
        noise_up, noise_eta, noise_known = jax.random.normal(jax.random.fold_in(key, i), (3,) + x.shape, x.dtype)
        if init == "known":  # x ← q(M⊙x0, t_start, ε): the hole starts at 0, mid-grey
            start = sched.q_sample(schedule, jnp.where(known, x0, 0.0), t_from, noise_up)
        else:  # x ← ε
            start = noise_up
        # RePaint jump: re-noise the whole image forward from t_prev to t_from (identity if equal).
        ratio = sched.alpha_bar(schedule, t_from) / sched.alpha_bar(schedule, t_prev)
        jumped = jnp.where(t_from > t_prev, jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * noise_up, x)
        x = jnp.where(i == 0, start, jumped)
        eps = denoiser.eps(x, t_from, cond)
        unknown = sched.eta_step(schedule, x, eps, t_from, t_to, eta, noise_eta, clip=denoiser.x0_clip)
        known_part = sched.q_sample(schedule, x0, t_to, noise_known)
        return jnp.where(known, known_part, unknown), None

    steps = (
        jnp.arange(plan.network_calls, dtype=jnp.int32),
        jnp.asarray(plan.t_prev, jnp.int32),
        jnp.asarray(plan.t_from, jnp.int32),
        jnp.asarray(plan.t_to, jnp.int32),
    )
    x, _ = jax.lax.scan(move, jnp.zeros_like(x0), steps)
    # The last move lands on x̂0 (ā = 1); paste the original back exactly.
    return jnp.where(known, x0, x)


def latent_mask(mask, latent_hw: tuple) -> jnp.ndarray:
    """Min-pools a pixel mask (H, W) to the latent grid (h, w): a cell is known iff all its pixels are."""
    height, width = mask.shape
    h, w = latent_hw
    if height % h or width % w:
        raise ValueError(f"image {height}x{width} is not a whole multiple of the latent grid {h}x{w}")
    return jnp.min(mask.reshape(h, height // h, w, width // w), axis=(1, 3))


def inpaint_one(denoiser, image, mask, key, cond=None, *, plan: RestorePlan, eta: float = 0.0,
                init: str = "known"):
    """Inpaints ONE pixel-space image (H, W, C) with mask M (H, W); latent models go through the VAE.

    Returns the (H, W, C) restoration, equal to ``image`` exactly where M = 1.
    """
    if not denoiser.is_latent:
        return restore_one(denoiser, image, mask, key, cond, plan=plan, eta=eta, init=init)
    if denoiser.decode_fn is None:
        raise ValueError("latent denoiser has an encoder but no decoder; DRC needs decode_fn")
    k_encode = jax.random.fold_in(key, ENCODE_FOLD)
    z0 = denoiser.encode_fn(denoiser.encoder_params, image[None], k_encode[None])[0]
    z_mask = latent_mask(mask, z0.shape[:2])
    z_hat = restore_one(denoiser, z0, z_mask, key, cond, plan=plan, eta=eta, init=init)
    decoded = denoiser.decode_fn(denoiser.encoder_params, z_hat[None])[0]
    return jnp.where((mask > 0.5)[..., None], image, decoded.astype(image.dtype))
