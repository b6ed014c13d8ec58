"""Membership signal of a target with a known split: member vs non-member loss, and attack AUCs.

    python scripts/target_stats.py [--target demo] [--features loss,secmi,pia,pian]

For the bundled demo target this prints the numbers quoted in README.md. Every image of the split
is scored (members and non-members); AUC and TPR@1%FPR come from the exact ROC.
"""

import json
from pathlib import Path

import click
import numpy as np

from jaxmia.data import Dataset, DEMO_TARGET, digits
from jaxmia.features import extract
from jaxmia.mia import evaluate_mia
from jaxmia.models import load_denoiser

LOWER_IS_MEMBER = ("dl", "secmi", "pia", "pian")


@click.command()
@click.option("--target", default="demo", show_default=True, help="'demo' or a digits target folder with split.json")
@click.option("--features", default="loss,secmi,pia,pian", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
def main(target, features, seed, batch_size):
    folder = DEMO_TARGET if target == "demo" else Path(target)
    split = json.loads((folder / "split.json").read_text())
    denoiser = load_denoiser(target if target == "demo" else folder)
    ids, images, _ = digits(int(split["size"]))
    where = {i: k for k, i in enumerate(ids)}
    wanted = split["members"] + split["nonmembers"]
    data = Dataset(wanted, images[[where[i] for i in wanted]], None, f"{target} split")
    table = extract(denoiser, data, features, seed=seed, batch_size=batch_size, progress=False)
    labels = {i: 1 for i in split["members"]} | {i: 0 for i in split["nonmembers"]}
    result = evaluate_mia(table, labels, lower_is_member=[c for c in table.names if c in LOWER_IS_MEMBER])
    m = np.array([labels[i] for i in table.ids]) == 1
    click.echo(f"target {folder}: {m.sum()} members, {(~m).sum()} non-members, seed {seed}")
    click.echo(f"{'signal':8s} {'members':>9s} {'non-mem.':>9s} {'gap %':>7s} {'AUC':>6s} {'TPR@1%':>7s}")
    for name in table.names:
        col = table.column(name)
        mm, nm = col[m].mean(), col[~m].mean()
        r = result["columns"][name]
        tpr = r["tpr_at_fpr"]
        tpr1 = next((v["tpr"] if isinstance(v, dict) else v for k, v in tpr.items() if abs(float(k) - 0.01) < 1e-12),
                    float("nan"))
        click.echo(f"{name:8s} {mm:9.4f} {nm:9.4f} {100 * (nm - mm) / nm:7.2f} {r['auc']:6.3f} {100 * tpr1:6.1f}%")


if __name__ == "__main__":
    main()
