"""``jaxmia demo``: the audit of the bundled demo target, once guilty and once innocent.

Guilty: P = a sample of the target's training members, U = a sample of its non-members.
Innocent: P = other non-members (never trained on), the same U. A sound audit says "trained on"
for the first and "no evidence" for the second. The U features are computed once and shared.
"""

from __future__ import annotations

from pathlib import Path

from jaxmia.audit.config import AuditConfig, load_config
from jaxmia.audit.run import run_audit

# Shipped inside the package (jaxmia/configs, also reachable as configs/ at the repository root).
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "demo.toml"


def demo_config(path=None, overrides=None) -> AuditConfig:
    """The demo's config: ``path``, else the shipped ``configs/experiments/demo.toml``; then ``overrides``."""
    return load_config(DEMO_CONFIG if path is None else path, overrides)


def run_demo(out_dir, config: AuditConfig | None = None, *, quiet: bool = False) -> dict:
    """Runs both demo audits into ``out_dir/guilty`` and ``out_dir/innocent``; returns both reports."""
    from jaxmia.data import load_dataset
    from jaxmia.models import load_denoiser

    cfg = config or demo_config()
    denoiser = load_denoiser("demo")
    shape = denoiser.input_shape
    members = load_dataset("demo:members", image_shape=shape)
    nonmembers = load_dataset("demo:nonmembers", image_shape=shape)
    n = cfg.audit.n or min(len(members), len(nonmembers) // 2)
    if 2 * n > len(nonmembers):
        raise ValueError(f"demo: audit.n = {n} needs {2 * n} non-members; the demo target has {len(nonmembers)}")
    # U and the innocent P are disjoint samples of the non-members; the guilty P samples the members.
    shuffled = nonmembers.take(len(nonmembers), seed=cfg.audit.seed)
    u_set = shuffled.subset(shuffled.ids[:n])
    innocent_p = shuffled.subset(shuffled.ids[n:2 * n])
    guilty_p = members.take(n, seed=cfg.audit.seed)
    for ds, name in ((u_set, "demo:nonmembers (U)"), (innocent_p, "demo:nonmembers (innocent P)"),
                     (guilty_p, "demo:members (guilty P)")):
        object.__setattr__(ds, "source", name)
    out = Path(out_dir)
    reports = {}
    for case, p_set in (("guilty", guilty_p), ("innocent", innocent_p)):
        if not quiet:
            print(f"jaxmia: --- {case} case: P = {p_set.source}, U = {u_set.source} ---", flush=True)
        reports[case] = run_audit(denoiser, p_set, u_set, out / case, cfg, quiet=quiet, features_dir=out / "features")
    return reports
