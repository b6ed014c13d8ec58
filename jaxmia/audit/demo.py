"""``jaxmia demo``: the audit of a bundled target, once guilty and once innocent.

The target is the demo target (8×8 digits, default) or the RGB target (32×32 photo patches,
``jaxmia demo --target rgb``); each has its config in ``configs/experiments/``.

Guilty: P = a sample of the target's training members, U = a sample of its non-members.
Innocent: P = other non-members (never trained on), the same U. A sound audit says "trained on"
for the first and "no evidence" for the second. The U features are computed once and shared.
"""

from __future__ import annotations

from pathlib import Path

from jaxmia.audit.config import AuditConfig, load_config
from jaxmia.audit.run import run_audit

# Shipped inside the package (jaxmia/configs, also reachable as configs/ at the repository root).
EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiments"
DEMO_CONFIG = EXPERIMENTS / "demo.toml"
# bundled target name (a model name and a data-set prefix) -> its demo config
DEMO_CONFIGS = {"demo": DEMO_CONFIG, "rgb": EXPERIMENTS / "rgb.toml"}


def demo_config(path=None, overrides=None, *, target: str = "demo") -> AuditConfig:
    """The demo's config: ``path``, else the target's shipped ``configs/experiments/<name>.toml``; then ``overrides``."""
    if target not in DEMO_CONFIGS:
        raise ValueError(f"unknown demo target {target!r}; known: {', '.join(DEMO_CONFIGS)}")
    return load_config(DEMO_CONFIGS[target] if path is None else path, overrides)


def run_demo(out_dir, config: AuditConfig | None = None, *, quiet: bool = False, target: str = "demo") -> dict:
    """Runs both audits of bundled ``target`` into ``out_dir/guilty`` and ``out_dir/innocent``; returns both reports."""
    from jaxmia.data import load_dataset
    from jaxmia.models import load_denoiser

    cfg = config or demo_config(target=target)
    if target not in DEMO_CONFIGS:
        raise ValueError(f"unknown demo target {target!r}; known: {', '.join(DEMO_CONFIGS)}")
    denoiser = load_denoiser(target)
    shape = denoiser.input_shape
    members = load_dataset(f"{target}:members", image_shape=shape)
    nonmembers = load_dataset(f"{target}:nonmembers", image_shape=shape)
    n = cfg.audit.n or min(len(members), len(nonmembers) // 2)
    if 2 * n > len(nonmembers):
        raise ValueError(f"{target}: audit.n = {n} needs {2 * n} non-members; the {target} target has "
                         f"{len(nonmembers)}")
    # U and the innocent P are disjoint samples of the non-members; the guilty P samples the members.
    shuffled = nonmembers.take(len(nonmembers), seed=cfg.audit.seed)
    u_set = shuffled.subset(shuffled.ids[:n])
    innocent_p = shuffled.subset(shuffled.ids[n:2 * n])
    guilty_p = members.take(n, seed=cfg.audit.seed)
    for ds, name in ((u_set, f"{target}:nonmembers (U)"), (innocent_p, f"{target}:nonmembers (innocent P)"),
                     (guilty_p, f"{target}:members (guilty P)")):
        object.__setattr__(ds, "source", name)
    out = Path(out_dir)
    reports = {}
    for case, p_set in (("guilty", guilty_p), ("innocent", innocent_p)):
        if not quiet:
            print(f"jaxmia: --- {case} case: P = {p_set.source}, U = {u_set.source} ---", flush=True)
        reports[case] = run_audit(denoiser, p_set, u_set, out / case, cfg, quiet=quiet, features_dir=out / "features")
    return reports
