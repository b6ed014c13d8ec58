"""The benchmarks' PyTorch baseline: plain eager loops over diffusers' ``UNet2DModel``.

CDI signals (:func:`run`): the reference implementation's straightforward algorithm
(docs/methods/cdi.md §4), one extractor after the other, each over the whole batch, with the UNet counted
per image:

* DL: 5 independent draws at t = 100 (5 calls);
* SecMI: its own ε_θ(x0, 0), 10 inversion steps to t_cmp, one up and one down (12 calls);
* PIA extractor: ε_θ(x0, 0) once, then PIA and PIAN (3 calls for both);
* ML: one draw, 10 timesteps (10 calls);
* GM: per t a forward + backward (``torch.autograd.grad`` of the batch mean), the top-k mask, one
  more forward (10 + 10 backward + 10);
* NO: SciPy L-BFGS-B (float64, maxiter 5, m = 10, maxls = 20) over the whole batch's δ as one flat
  vector, J = batch mean of the per-sample errors, gradients by autograd; then one final forward.

DRC (:func:`drc`): RePaint-style inpainting on jaxmia's static move plan
(``jaxmia.drc.restore_plan``), every (image, task) pair of a batch in one UNet batch, one call per
move; then the hole's MSE and PSNR.

Hyperparameters come from jaxmia's ``FeatureConfig`` / ``DRCConfig``, so both sides compute the
same statistics. Noise is ``torch.randn`` unless the caller passes draws (the agreement checks pass
jaxmia's keyed draws so that the noisy signals can be compared too). Tensors are NCHW.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import torch

PIAN_SCALE_VALUES = {"gaussian_mean_abs": math.sqrt(2.0 / math.pi), "cdi_reference": math.sqrt(math.pi / 2.0)}


class TorchDenoiser:
    """ε_θ(x, t) of a diffusers UNet (ε-prediction) with the schedule's ā table; counts evaluations."""

    def __init__(self, unet, alphas_cumprod, device: str):
        self.unet, self.device = unet, device
        self.ab = torch.as_tensor(np.array(alphas_cumprod, np.float32), device=device)
        self.forward = 0
        self.backward = 0

    def __call__(self, x, t: int):
        self.forward += x.shape[0]
        return self.unet(x, torch.full((x.shape[0],), int(t), dtype=torch.long, device=self.device)).sample

    def alpha_bar(self, t: int):
        return torch.ones((), device=self.device) if t < 0 else self.ab[int(t)]

    def q_sample(self, x0, t: int, eps):
        ab = self.alpha_bar(t)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def ddim_step(self, x, eps, t_from: int, t_to: int):
        ab_from, ab_to = self.alpha_bar(t_from), self.alpha_bar(t_to)
        x0_hat = (x - (1 - ab_from).sqrt() * eps) / ab_from.sqrt()
        return ab_to.sqrt() * x0_hat + (1 - ab_to).sqrt() * eps

    def eta_step(self, x, eps, t_from: int, t_to: int, eta: float, noise, clip=None):
        """The generalised DDIM move (Song et al. 2021, Eq. 12): η = 0 DDIM, η = 1 DDPM; ``clip``
        bounds x̂0 and ε is re-derived from the clipped x̂0 (as jaxmia.schedule.eta_step)."""
        ab_from, ab_to = self.alpha_bar(t_from), self.alpha_bar(t_to)
        x0_hat = (x - (1 - ab_from).sqrt() * eps) / ab_from.sqrt()
        if clip is not None:
            x0_hat = x0_hat.clamp(-clip, clip)
            eps = (x - ab_from.sqrt() * x0_hat) / (1 - ab_from).sqrt()
        sigma = eta * (((1 - ab_to) / (1 - ab_from)).clamp(min=0) * (1 - ab_from / ab_to).clamp(min=0)).sqrt()
        return ab_to.sqrt() * x0_hat + (1 - ab_to - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise

    def reset_counts(self):
        self.forward = self.backward = 0


def to_nchw(x_nhwc, device: str):
    return torch.as_tensor(np.array(np.transpose(np.asarray(x_nhwc), (0, 3, 1, 2)), order="C"), device=device)


def l2(d):
    return d.flatten(1).square().sum(1).sqrt()


def sample_norm(d, norm: str):
    return l2(d) if norm == "l2" else d.flatten(1).square().sum(1)


def lp(d, p: float, root: bool):
    total = d.flatten(1).abs().pow(p).sum(1)
    return total.pow(1.0 / p) if root else total


def _draw(noise, key, x0):
    return torch.randn_like(x0) if noise is None else noise[key]


@torch.no_grad()
def loss(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """DL: mean over draws of ‖ε_θ(q(x0, t, ε_r), t) − ε_r‖ (noise key ("dl", r))."""
    errs = []
    for r in range(cfg.dl_n_draws):
        eps = _draw(noise, ("dl", r), x0)
        errs.append(sample_norm(m(m.q_sample(x0, cfg.dl_timestep, eps), cfg.dl_timestep) - eps, cfg.dl_norm))
    return {"dl": torch.stack(errs).mean(0)}


@torch.no_grad()
def secmi(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """SecMI_stat: DDIM inversion 0 → t_cmp with stride k, one step up and back; ‖z_det − z_step‖."""
    k = cfg.secmi_stride
    z = m.ddim_step(x0, m(x0, 0), 0, k)
    for t in range(k, cfg.secmi_t_cmp, k):
        z = m.ddim_step(z, m(z, t), t, t + k)
    t_cmp, t_up = cfg.secmi_t_cmp, cfg.secmi_t_cmp + k
    z_up = m.ddim_step(z, m(z, t_cmp), t_cmp, t_up)
    z_step = m.ddim_step(z_up, m(z_up, t_up), t_up, t_cmp)
    return {"secmi": sample_norm(z - z_step, cfg.secmi_norm)}


@torch.no_grad()
def pia_pian(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """PIA and PIAN from one ε_θ(x0, 0) (the PIA extractor: 3 calls for both)."""
    t, p = cfg.pia_timestep, cfg.pia_p
    e0 = m(x0, 0)
    pia = lp(e0 - m(m.q_sample(x0, t, e0), t), p, cfg.pia_root)
    scale = PIAN_SCALE_VALUES[cfg.pian_scale]
    e0n = e0 * (scale / e0.flatten(1).abs().mean(1))[:, None, None, None]
    pian = lp(e0n - m(m.q_sample(x0, t, e0n), t), p, cfg.pia_root)
    return {"pia": pia, "pian": pian}


@torch.no_grad()
def multi_loss(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """ML_t for every t with one draw (noise key ("ml", 0))."""
    eps = _draw(noise, ("ml", 0), x0)
    out = {}
    for t in cfg.ml_timesteps:
        out[f"ml_t{t:03d}"] = sample_norm(m(m.q_sample(x0, t, eps), t) - eps, cfg.ml_norm)
    return out


def grad_mask(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """GM_t: gradient of the batch-mean error w.r.t. x_t, top-k |g| mask, masked-input error."""
    eps = _draw(noise, ("ml", 0) if cfg.share_draws else ("gm", 0), x0)
    b = x0.shape[0]
    d = x0[0].numel()
    k = int(cfg.gm_ratio * d)
    out = {}
    for t in cfg.gm_timesteps:
        x_t = m.q_sample(x0, t, eps).requires_grad_(True)
        with torch.enable_grad():
            err = l2(m(x_t, t) - eps)
            (g,) = torch.autograd.grad(err.mean(), x_t)
        m.backward += b
        idx = g.abs().flatten(1).topk(k, dim=1).indices
        mask = torch.zeros((b, d), dtype=torch.bool, device=x0.device).scatter_(1, idx, True).view_as(x0)
        with torch.no_grad():
            e_hat = m(torch.where(mask, eps, x0), t)
            out[f"gm_t{t:03d}"] = l2(torch.where(mask, (eps - x0) - e_hat, torch.zeros_like(x0)))
    return out


def noise_opt(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """NO as the reference runs it: SciPy L-BFGS-B over the batch's flat δ, then one final forward."""
    t = cfg.no_timestep
    eps = _draw(noise, ("no", 0), x0)
    x_t = m.q_sample(x0, t, eps)
    shape, b = x0.shape, x0.shape[0]

    def value_and_grad(flat):
        delta = torch.as_tensor(flat.reshape(shape), dtype=torch.float32, device=x0.device).requires_grad_(True)
        with torch.enable_grad():
            j = l2(m(x_t + delta, t) - eps).mean()
            (g,) = torch.autograd.grad(j, delta)
        m.backward += b
        return float(j.detach()), g.detach().cpu().numpy().astype(np.float64).ravel()

    delta = np.zeros(int(np.prod(shape)), np.float64)
    if cfg.no_max_iter > 0:
        delta = scipy.optimize.minimize(
            value_and_grad, delta, jac=True, method="L-BFGS-B",
            options={"maxiter": int(cfg.no_max_iter), "maxcor": int(cfg.no_memory_size),
                     "maxls": int(cfg.no_max_linesearch_steps)},
        ).x
    delta = torch.as_tensor(delta.reshape(shape), dtype=torch.float32, device=x0.device)
    with torch.no_grad():
        x = x_t + delta
        if cfg.no_double_noise:
            x = m.q_sample(x, t, eps)
        no_loss = l2(m(x, t) - eps)
    return {"no_loss": no_loss, "no_delta_norm": l2(delta)}


# The signals of the benchmark, in CDI order; "pia" computes PIA and PIAN together.
SIGNALS = {
    "loss": loss,
    "secmi": secmi,
    "pia": pia_pian,
    "grad_mask": grad_mask,
    "multi_loss": multi_loss,
    "noise_opt": noise_opt,
}


def cdi(m: TorchDenoiser, x0, cfg, noise=None) -> dict:
    """The 26-d vector: the six extractors one after the other, nothing shared between them."""
    out = {}
    for fn in SIGNALS.values():
        out.update(fn(m, x0, cfg, noise))
    return out


def run(m: TorchDenoiser, name: str, x0, cfg, noise=None) -> dict:
    """One signal ("cdi" for all) on a batch; results as float64 NumPy arrays."""
    fn = cdi if name == "cdi" else SIGNALS[name]
    out = fn(m, x0, cfg, noise)
    if x0.device.type == "cuda":
        torch.cuda.synchronize()
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in out.items()}


# ---- the bare UNet (forward, input gradient) and DRC --------------------------------------------------------------


@torch.no_grad()
def forward(m: TorchDenoiser, x, t: int):
    """ε_θ(x, t) of a batch, as a float64 NumPy array (NCHW)."""
    out = m(x, t)
    return out.detach().cpu().numpy().astype(np.float64)


def input_gradient(m: TorchDenoiser, x, t: int):
    """∂(½‖ε_θ(x, t)‖²)/∂x of a batch (one forward and one backward pass), float64 NumPy (NCHW)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = m(x, t)
        (g,) = torch.autograd.grad(0.5 * out.square().sum(), x)
    m.backward += x.shape[0]
    return g.detach().cpu().numpy().astype(np.float64)


DATA_RANGE, PSNR_CAP_DB = 2.0, 100.0  # as jaxmia.drc.metrics: images in [-1, 1], PSNR capped at 100 dB


@torch.no_grad()
def drc_restore(m: TorchDenoiser, x0, masks, plan, *, eta: float, init: str, clip=None, noise=None):
    """RePaint-style inpainting of every (image, task) pair of a batch (jaxmia.drc.restore_one's moves).

    Args:
      x0: (B, C, H, W) images. masks: (B, R, H, W), 1 on the known region.
      plan: a ``jaxmia.drc.RestorePlan`` (t_prev, t_from, t_to per move; one UNet call each).
      noise: None (``torch.randn``) or (moves, 3, B·R, C, H, W): per move the jump/initial, η-step
        and known-part draws, image-major like the UNet batch.

    Returns:
      (B, R, C, H, W) restorations, equal to x0 on the known region.
    """
    b, r = masks.shape[:2]
    x0r = x0[:, None].expand(b, r, *x0.shape[1:]).reshape(b * r, *x0.shape[1:])
    known = (masks > 0.5).reshape(b * r, 1, *masks.shape[2:])
    x = torch.zeros_like(x0r)
    for i, (t_prev, t_from, t_to) in enumerate(zip(plan.t_prev, plan.t_from, plan.t_to)):
        up, eta_noise, known_noise = torch.randn((3,) + tuple(x.shape), device=x.device) if noise is None else noise[i]
        if i == 0:
            x = m.q_sample(torch.where(known, x0r, torch.zeros_like(x0r)), t_from, up) if init == "known" else up
        elif t_from > t_prev:  # RePaint jump: re-noise forward from t_prev to t_from
            ratio = m.alpha_bar(t_from) / m.alpha_bar(t_prev)
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * up
        unknown = m.eta_step(x, m(x, t_from), t_from, t_to, eta, eta_noise, clip)
        x = torch.where(known, m.q_sample(x0r, t_to, known_noise), unknown)
    return torch.where(known, x0r, x).reshape(b, r, *x0.shape[1:])


def drc_scores(x0, restored, masks) -> dict:
    """Hole MSE and PSNR per (image, task): {name: (B, R) float64 NumPy}."""
    hole = (masks <= 0.5).to(restored.dtype)[:, :, None]  # (B, R, 1, H, W)
    diff = (restored - x0[:, None]) ** 2
    mse = (hole * diff).flatten(2).sum(2) / (x0.shape[1] * hole.flatten(2).sum(2)).clamp(min=1)
    floor = DATA_RANGE**2 * 10.0 ** (-PSNR_CAP_DB / 10.0)
    psnr = 10.0 * torch.log10(DATA_RANGE**2 / mse.clamp(min=floor))
    return {"mse": mse.cpu().numpy().astype(np.float64), "psnr": psnr.cpu().numpy().astype(np.float64)}


def drc(m: TorchDenoiser, x0, masks, plan, *, eta: float, init: str, clip=None, noise=None) -> dict:
    """Restore and score one batch (the baseline of bench_drc.py)."""
    restored = drc_restore(m, x0, masks, plan, eta=eta, init=init, clip=clip, noise=noise)
    out = drc_scores(x0, restored, masks)
    if x0.device.type == "cuda":
        torch.cuda.synchronize()
    return out
