"""DRC as a registered signal: degrade, restore and compare ONE image per task, inside ``extract()``.

"Model Will Tell" (Fu et al., arXiv 2403.08487) as jaxmia's DRC-style recipe (docs/methods/mia.md §4.2).
The kernel is :func:`jaxmia.drc.features.drc_features` (the same per-example function the ``jaxmia drc``
driver vmaps), with the same keys (run root, image id hash), so its columns equal that driver's table for
the same seed. Its config is the signal's own section, a :class:`jaxmia.drc.DRCConfig`
(``cfg.section("drc")``; ``--set drc.steps=10``).

Columns: ``drc_{metric}_{task}`` for the pixel metrics, RAW (MSE lower = member, PSNR/SSIM higher;
:data:`jaxmia.drc.metrics.ORIENTATION`). No aggregated ``drc_score`` column: the paper's mean z-score needs
a non-member calibration split, and a label-free standardisation within one table would differ between
the P and U tables of one audit; in ``jaxmia cdi`` the scoring model standardises the per-task columns on
its training rows instead. The ``user`` mask kind (per-image holes) and the ``cos`` metric (a host-side
embedder) need ``jaxmia drc``; latent models too (``extract()`` hands kernels latents, DRC restores pixels).
"""

from __future__ import annotations

from jaxmia.drc.config import DRCConfig, tasks
from jaxmia.drc.features import COLUMNS, drc_features
from jaxmia.drc.metrics import ORIENTATION
from jaxmia.drc.restore import network_calls_per_image
from jaxmia.features.registry import Cost, register_feature


def drc_section(cfg) -> DRCConfig:
    """The run's DRC config, refused when it needs what a per-example kernel cannot have."""
    section = cfg.section("drc")
    if "user" in section.kinds:
        raise ValueError("feature 'drc': mask kind 'user' needs per-image holes; use `jaxmia drc` (holes=...)")
    if "cos" in section.metrics:
        raise ValueError("feature 'drc': metric 'cos' needs a host-side embedder; use `jaxmia drc --embedder`")
    return section


def drc_columns(cfg) -> tuple:
    return tuple(COLUMNS(drc_section(cfg)))


def drc_directions(cfg) -> dict:
    """MSE columns lower-is-member, PSNR and SSIM higher (:data:`jaxmia.drc.metrics.ORIENTATION`)."""
    section = drc_section(cfg)
    return {f"drc_{m}_{t.name}": "lower" if ORIENTATION[m] < 0 else "higher"
            for m in section.jax_metrics for t in tasks(section)}


@register_feature(
    "drc",
    columns=drc_columns,
    direction=drc_directions,
    # R tasks x one network call per restoration move, counted for a 1000-step schedule (nominal otherwise)
    work=lambda cfg, requested: {"drc": Cost(forward=network_calls_per_image(drc_section(cfg)), exact=False)},
    section=DRCConfig,
    groups=("drc",),
)
def drc_kernel(denoiser, x0, cond, key, cfg, shared):
    """DRC-style (Fu et al. 2024): restore masked copies of the image, compare to it; columns drc_{metric}_{task}."""
    if denoiser.is_latent:
        raise ValueError("feature 'drc': latent models restore in pixel space; use `jaxmia drc`")
    return drc_features(denoiser, x0, cond, key.id_hash, key.root, drc_section(cfg))
