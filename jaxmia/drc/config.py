"""The typed, frozen configuration of a DRC run and the restoration tasks it defines.

A task τ = (mask kind, hole ratio ρ, mask index) is one degrade-and-restore experiment applied to
every image (docs/methods/mia.md §4.2, "Tasks"). The default set is R = 10 tasks:
{centre square, random patches} × ρ ∈ {0.1, 0.2, 0.3, 0.4, 0.5}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from jaxmia import config as typed

MASK_KINDS = ("center", "rect", "patches", "user")
# Metrics a kernel computes inside the compiled call; "cos" needs a user embed_fn (host side).
JAX_METRICS = ("mse", "mse_full", "psnr", "ssim", "model")
METRICS = JAX_METRICS + ("cos",)
INITS = ("known", "mean", "noise")
RESTORES = ("repaint", "invert", "invert_masked", "invert_renoise")
# One line per restoration, for the CLI and the report: which of them sees the hole.
RESTORE_ABOUT = {
    "repaint": "RePaint-style inpainting from q(degraded image, t_start) with keyed noise (degrade-respecting)",
    "invert": "DDIM inversion of the ORIGINAL image, hole included, then regeneration: the hole's content "
              "enters x_t (a reconstruction-error attack, SecMI-like; not degrade-restore)",
    "invert_masked": "DDIM inversion of the DEGRADED image (hole filled as `init` says), then regeneration "
                     "with the known region re-imposed from that path (degrade-respecting)",
    "invert_renoise": "DDIM inversion of the DEGRADED image, the hole re-drawn from q(fill, t_start) with keyed "
                      "noise, then deterministic regeneration with the known region from that path "
                      "(degrade-respecting)",
}
INVERTS = ("invert", "invert_masked", "invert_renoise")


@dataclass(frozen=True)
class Task:
    """One restoration task; ``name`` is its stable label in column names and PRNG purposes."""

    kind: str
    ratio: Optional[float]  # None for the "user" kind (the hole comes with the image)
    index: int
    name: str


@dataclass(frozen=True)
class DRCConfig:
    """Degrade, Restore, Compare: every knob of the jaxmia DRC-style recipe (docs/methods/mia.md §4.2).

    Attributes:
      kinds: mask families: ``center`` (centre square), ``rect`` (one random rectangle), ``patches``
        (random grid patches), ``user`` (a hole supplied per image; no ratio).
      ratios: hole ratios ρ ∈ (0, 1) for the built-in kinds (the paper's range is 0.1–0.5).
      n_masks: masks per (kind, ratio): index i gives a different random draw (``_m{i}`` suffix
        in task names when > 1). The centre square is deterministic, so it always has one.
      patch_size: side of a patch in pixels; None scales it with the image: 4 px at 32 px.
      per_image_masks: draw each image its own mask (key folded with the image id). Default
        False: all images share a task's mask, so members and non-members face identical tasks.
      strength: s ∈ (0, 1]; the restoration starts at t_start = round(s·T) − 1 (the paper's
        "inverted ratio" analogue).
      steps: K, evenly spaced sampling steps from t_start; one network call each.
      eta: η ∈ [0, 1]; 0 = DDIM (default), 1 = DDPM ancestral.
      init: the hole's fill in the degraded image (:func:`jaxmia.drc.restore.degrade`):
        ``known``: mid-grey 0, x ← q(M⊙x0, t_start, ε); ``mean``: the known region's per-channel
        mean; ``noise``: x ← ε (``repaint`` only).
      jump_length, n_resample: RePaint resampling (Lugmayr et al., CVPR 2022): every
        ``jump_length`` steps re-noise forward by that many steps and redo them, ``n_resample``
        times in all. ``n_resample = 1`` (default) disables it; RePaint uses 10 and 10.
      restore: ``invert_renoise`` (default; chosen on docs/results/drc_ablation.md, the most
        degrade-respecting setting that reaches the loss attack's AUC on most targets, with
        ``score_metric="model"``) or ``repaint``: keyed-noise inpainting from q(·, t_start) as above;
        ``invert``: deterministic DDIM inversion of the WHOLE image to t_start (K calls), then
        DDIM regeneration (K calls) with the known region re-imposed from the inversion path
        (:func:`jaxmia.drc.restore.invert_one`): the hole's true content enters x_t, a
        reconstruction-error attack; ``invert_masked``: the same on the DEGRADED image (hole
        filled per ``init``), so the hole is never seen (it comes back close to the fill);
        ``invert_renoise``: as ``invert_masked`` but the hole of x_{t_start} is re-drawn from
        q(fill, t_start, ε) with keyed ε, then regenerated. All three need η = 0 and no resampling;
        ``invert_masked``/``invert_renoise`` need ``init`` ``known`` or ``mean``, ``invert`` ``known``.
      shared_noise: True: the restoration noise of a task is the same for every image (keyed by
        the task only: common random numbers across members and non-members); False (default):
        keyed by (image id, task).
      model_timestep: t of the ``model`` metric: the squared distance between the denoiser's
        ε̂ on q(x0, t, ε) and on q(x̂, t, ε), one fixed ε per image (:func:`jaxmia.drc.metrics.model_distance`).
      metrics: the per-task metrics written as feature columns (see :mod:`jaxmia.drc.metrics`);
        default mse, psnr, ssim and ``model``.
      score_metric: the metric aggregated across tasks (mean z-score, agree number); default
        ``model`` (the target denoiser's own view: higher AUC than psnr with ``invert_renoise`` on
        every target of the ablation).
      ssim_window, ssim_sigma: Gaussian SSIM window (11, 1.5 as Wang et al. 2004; 7 is an option
        for images of 32 px or less).
      agree_quantile: the calibration non-member quantile θ_τ of the agree number.
    """

    kinds: tuple[str, ...] = ("center", "patches")
    ratios: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
    n_masks: int = 1
    patch_size: Optional[int] = None
    per_image_masks: bool = False
    strength: float = 0.5
    steps: int = 50
    eta: float = 0.0
    init: str = "known"
    jump_length: int = 10
    n_resample: int = 1
    restore: str = "invert_renoise"
    shared_noise: bool = False
    model_timestep: int = 50
    metrics: tuple[str, ...] = ("mse", "psnr", "ssim", "model")
    score_metric: str = "model"
    ssim_window: int = 11
    ssim_sigma: float = 1.5
    agree_quantile: float = 0.9

    def __post_init__(self):
        typed.coerce_fields(self)  # the one parser: types, lists -> tuples, ints widened to floats
        kinds, ratios, metrics = self.kinds, self.ratios, self.metrics
        _check(len(kinds) > 0, "kinds", kinds, "at least one mask kind")
        for k in kinds:
            _check(k in MASK_KINDS, "kinds", k, f"one of {', '.join(MASK_KINDS)}")
        _check(len(set(kinds)) == len(kinds), "kinds", kinds, "no repeated kind")
        if any(k != "user" for k in kinds):
            _check(len(ratios) > 0, "ratios", ratios, "at least one ratio")
        for r in ratios:
            _check(0.0 < r < 1.0 and math.isfinite(r), "ratios", r, "a hole ratio in (0, 1)")
        _check(len(set(ratios)) == len(ratios), "ratios", ratios, "no repeated ratio")
        _check(self.n_masks >= 1, "n_masks", self.n_masks, "an int >= 1")
        _check(self.patch_size is None or self.patch_size >= 1,
               "patch_size", self.patch_size, "None or an int >= 1")
        for name in ("strength", "eta", "ssim_sigma", "agree_quantile"):
            _check(math.isfinite(getattr(self, name)), name, getattr(self, name), "a finite number")
        _check(0.0 < self.strength <= 1.0, "strength", self.strength, "a strength in (0, 1]")
        _check(self.steps >= 1, "steps", self.steps, "an int >= 1")
        _check(0.0 <= self.eta <= 1.0, "eta", self.eta, "η in [0, 1]")
        _check(self.init in INITS, "init", self.init, f"one of {', '.join(INITS)}")
        _check(self.jump_length >= 1, "jump_length", self.jump_length, "an int >= 1")
        _check(self.n_resample >= 1, "n_resample", self.n_resample, "an int >= 1")
        _check(self.restore in RESTORES, "restore", self.restore, f"one of {', '.join(RESTORES)}")
        if self.restore in INVERTS:
            r = f"restore={self.restore!r}"
            _check(self.eta == 0.0, "eta", self.eta, f"0 with {r} (a deterministic path)")
            _check(self.n_resample == 1, "n_resample", self.n_resample, f"1 with {r}")
        if self.restore == "invert":
            _check(self.init == "known", "init", self.init, "'known' with restore='invert' (the start is the inversion)")
        if self.restore in ("invert_masked", "invert_renoise"):
            _check(self.init in ("known", "mean"), "init", self.init,
                   f"'known' or 'mean' with restore={self.restore!r} (the degraded image's hole fill)")
        _check(self.model_timestep >= 0, "model_timestep", self.model_timestep, "an int >= 0")
        _check(len(metrics) > 0, "metrics", metrics, "at least one metric")
        for m in metrics:
            _check(m in METRICS, "metrics", m, f"one of {', '.join(METRICS)}")
        _check(len(set(metrics)) == len(metrics), "metrics", metrics, "no repeated metric")
        _check(self.score_metric in metrics, "score_metric", self.score_metric,
               f"one of the exported metrics ({', '.join(metrics)})")
        _check(self.ssim_window >= 3 and self.ssim_window % 2 == 1,
               "ssim_window", self.ssim_window, "an odd int >= 3")
        _check(self.ssim_sigma > 0, "ssim_sigma", self.ssim_sigma, "a positive float")
        _check(0.0 < self.agree_quantile < 1.0, "agree_quantile", self.agree_quantile, "a quantile in (0, 1)")
        names = [t.name for t in tasks(self)]
        _check(len(set(names)) == len(names), "ratios", ratios, "ratios whose task names differ")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "DRCConfig") -> "DRCConfig":
        """Builds a config from a mapping (:func:`jaxmia.config.from_mapping`); an unknown key is an
        error naming it and its close matches (a locked config)."""
        return typed.from_mapping(cls, values, source=source, what="DRC config")

    def replace(self, **overrides) -> "DRCConfig":
        """A copy with ``overrides`` applied (unknown names refused, as in :meth:`from_dict`)."""
        return DRCConfig.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict:
        """JSON-ready resolved config (tuples as lists)."""
        return typed.to_mapping(self)

    @property
    def jax_metrics(self) -> tuple:
        """The exported metrics computed inside the compiled call (all but ``cos``)."""
        return tuple(m for m in self.metrics if m in JAX_METRICS)


def with_embedding_metric(cfg: DRCConfig) -> DRCConfig:
    """``cfg`` scoring by the embedding cosine as the paper does (docs/methods/mia.md §4.1, "Compare"):
    ``cos`` joins the exported metrics and becomes the ``score_metric`` aggregated across tasks; the
    pixel metrics stay as extra columns. Run it with an ``embed_fn`` (e.g.
    :func:`jaxmia.models.clip_vision.clip_image_embedder`)."""
    metrics = cfg.metrics if "cos" in cfg.metrics else (*cfg.metrics, "cos")
    return cfg.replace(metrics=metrics, score_metric="cos")


def tasks(cfg: DRCConfig) -> list[Task]:
    """The restoration tasks of ``cfg``, kind-major, then ratio, then mask index."""
    out = []
    for kind in cfg.kinds:
        if kind == "user":
            out.append(Task("user", None, 0, "user"))
            continue
        n = 1 if kind == "center" else cfg.n_masks  # the centre square has no randomness
        for ratio in cfg.ratios:
            for index in range(n):
                suffix = f"_m{index}" if cfg.n_masks > 1 and kind != "center" else ""
                out.append(Task(kind, ratio, index, f"{kind}_r{_ratio_label(ratio)}{suffix}"))
    return out


def _ratio_label(ratio: float) -> str:
    """0.1 → "10", 0.05 → "05", 0.125 → "12p5": the hole ratio in percent."""
    pct = round(ratio * 100, 6)
    if pct == int(pct):
        return f"{int(pct):02d}"
    return f"{pct:g}".replace(".", "p")


def _check(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"DRCConfig.{name}: got {value!r}, expected {expected}")
