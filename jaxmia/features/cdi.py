"""The 26-d CDI feature vector (CDI, arXiv 2411.12858; docs/methods/cdi.md §4.9) and its assembly by id.

Order (fixed by the reference's ``ATTACKS_FTS_INDICES``): dl, secmi, pia, pian, gm_t000..gm_t900,
ml_t000..ml_t900, no_loss, no_delta_norm.

The ``cdi`` signal runs the seven extractors in one per-example program and shares what the maths
allows (each shared value is computed once per example):

* ε_θ(x0, 0, c): PIA's and PIAN's e0 and the first step of SecMI's inversion (deterministic, so
  sharing changes nothing);
* GM's gradient pass at t: its forward value is ML_t, when ML and GM use one draw (Q11,
  ``share_draws=True``, the default; ``share_draws=False`` draws GM's noise separately and ML
  pays its own 10 forward passes, as the reference's separate runs);
* not shared: DL's 5 draws (purpose "dl") stay independent of ML's draw and of NO's draw (purpose
  "no"), as in the reference, although ML_100 could serve as one DL repetition.

UNet evaluations per image (``plan_cost(["cdi"], cfg)``), default config: 45 forward + 16 backward
(DL 5; e0 1; SecMI 11 more; PIA 1; PIAN 1; GM/ML 20 + 10 backward; NO nominally 6 + 6 backward).
"""

from __future__ import annotations

from typing import Sequence

from jaxmia.features.config import FeatureConfig
from jaxmia.features.registry import Cost, get_feature, plan_columns, register_feature
from jaxmia.table import FeatureTable, join

CDI_PARTS = ("loss", "secmi", "pia", "pian", "grad_mask", "multi_loss", "noise_opt")


def cdi_columns(cfg: FeatureConfig) -> tuple:
    """dl, secmi, pia, pian, gm_t..., ml_t..., no_loss, no_delta_norm: the parts' columns in order (26 by default)."""
    return plan_columns(CDI_PARTS, cfg)


def _cdi_work(cfg, requested) -> dict[str, Cost]:
    units: dict[str, Cost] = {}
    for part in CDI_PARTS:
        units.update(get_feature(part).work(cfg, requested))
    return units


@register_feature(
    "cdi",
    columns=cdi_columns,
    direction=lambda cfg: {c: d for part in CDI_PARTS for c, d in get_feature(part).directions(cfg).items()},
    work=_cdi_work,
    host_columns=lambda cfg: get_feature("noise_opt").host_columns(cfg),
    host_fn=lambda *args: get_feature("noise_opt").host_fn(*args),
    parts=CDI_PARTS,
    lane=get_feature("noise_opt").lane,
)
def cdi_kernel(denoiser, x0, cond, key, cfg, shared):
    """The 26-d CDI vector (docs/methods/cdi.md §4.9), with shared e0 and GM/ML passes."""
    out = {}
    for part in CDI_PARTS:
        out.update(get_feature(part).kernel(denoiser, x0, cond, key, cfg, shared))
    return out


def cdi_vector(tables: FeatureTable | Sequence[FeatureTable], cfg: FeatureConfig | None = None) -> FeatureTable:
    """Assembles the CDI vector from one or several feature tables, joined by id (never by row).

    The rows follow the first table's ids; a column missing from all tables is an error naming it.
    """
    cfg = FeatureConfig() if cfg is None else cfg
    tables = [tables] if isinstance(tables, FeatureTable) else list(tables)
    if not tables:
        raise ValueError("cdi_vector: no feature table given")
    merged = join(tables) if len(tables) > 1 else tables[0]
    return merged.select(cdi_columns(cfg))
