"""CIFAR-10 for the SecMI / PIA membership protocol: the data steps of docs/reproduce-cifar10.md.

  prepare      the binary CIFAR-10 release + SecMI's split file -> members.npz, nonmembers.npz,
               all.npz, labels.json, manifest.json (ids = CIFAR-10 training indices)
  split-table  one feature table of all.npz -> <stem>.members.npz and <stem>.nonmembers.npz
               (P and U of ``jaxmia cdi``)

    python scripts/prepare_cifar10.py prepare ~/data/cifar-10-batches-bin \\
        ~/SecMI/mia_evals/member_splits/CIFAR10_train_ratio0.5.npz --out data/cifar10-secmi
    python scripts/prepare_cifar10.py split-table runs/cifar10/features.npz \\
        --labels data/cifar10-secmi/labels.json

The logic lives in :mod:`jaxmia.data.cifar10`; this is a thin wrapper. Runs in seconds on a CPU
(nothing here touches a model).
"""

from __future__ import annotations

import click

from jaxmia.cli import CleanErrors


class _CleanErrors(CleanErrors):
    prog = "prepare_cifar10"


@click.group(cls=_CleanErrors)
def main():
    """CIFAR-10 member / non-member sets for the SecMI / PIA protocol (docs/reproduce-cifar10.md)."""


@main.command("prepare")
@click.argument("cifar_dir", type=click.Path())
@click.argument("split", type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--n", type=int, default=None,
              help="Images per side: the first N indices of each split array [all: 25000 per side].")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def prepare_command(cifar_dir, split, out_dir, n, overwrite):
    """Read CIFAR_DIR (cifar-10-batches-bin) and SPLIT (CIFAR10_train_ratio0.5.npz); write the sets."""
    from jaxmia.data.cifar10 import prepare_cifar10

    done = prepare_cifar10(cifar_dir, split, out_dir, n=n, overwrite=overwrite)
    m = done.manifest
    click.echo(f"prepare: {m['n_members']} members + {m['n_nonmembers']} non-members of {m['n_train_images']} "
               f"CIFAR-10 training images -> {done.members}, {done.nonmembers}, {done.all}")
    click.echo(f"labels: {done.labels}; manifest: {done.manifest_path}")
    if not m["is_secmi_cifar10_split"]:
        click.echo("note: the split file is not SecMI's CIFAR-10 split (checksum of its first indices and sizes, "
                   "docs/methods/mia.md §2.1); the published numbers do not apply to it")


@main.command("split-table")
@click.argument("table", type=click.Path(dir_okay=False))
@click.option("--labels", required=True, type=click.Path(dir_okay=False), help="labels.json written by prepare.")
@click.option("--members", "members_out", default=None, type=click.Path(dir_okay=False),
              help="Members' table [<TABLE stem>.members.npz].")
@click.option("--nonmembers", "nonmembers_out", default=None, type=click.Path(dir_okay=False),
              help="Non-members' table [<TABLE stem>.nonmembers.npz].")
def split_table_command(table, labels, members_out, nonmembers_out):
    """Split TABLE (features of all.npz) by LABELS into the P and U tables of 'jaxmia cdi'."""
    from jaxmia.data.cifar10 import split_feature_table

    p, u = split_feature_table(table, labels, members_out=members_out, nonmembers_out=nonmembers_out)
    click.echo(f"split-table: {table} -> {p} (members), {u} (non-members)")


if __name__ == "__main__":
    main()
