"""Trains a digits target: a small DDPM on a seeded member split of scikit-learn's 8×8 digits.

    python scripts/train_target.py --out runs/targets/few --members 50 --steps 2500
    python scripts/train_target.py --out DIR [--members 200] [--steps 2500] [--batch-size 32] [--lr 0.003] [--seed 0]

The defaults are the bundled demo target's recipe (``scripts/train_demo_target.py`` is this command
with ``--out jaxmia/assets/demo_target``). The network is always the demo UNet (280k parameters);
members, steps, batch size, learning rate and seed vary. ``--seed`` seeds both the member split
(``jaxmia.targets.digits_split``) and training; with one seed, smaller member sets are subsets of
larger ones. Writes the diffusers-shaped target folder (``jaxmia/targets.py``): weights, scheduler,
``split.json`` and ``recipe.json`` (recipe, training time in seconds, loss curve, weights digest).
Training is deterministic for a seed on a given machine.
"""

from __future__ import annotations

import click

from jaxmia.targets import TargetRecipe, train_digits_target
from jaxmia.train import TrainConfig

DEFAULT = TargetRecipe()


def make_recipe(members: int = DEFAULT.n_members, steps: int = DEFAULT.train.steps,
                batch_size: int = DEFAULT.train.batch_size, lr: float = DEFAULT.train.learning_rate,
                seed: int = 0) -> TargetRecipe:
    """The recipe this script trains: the demo recipe with these five values replaced."""
    return TargetRecipe(n_members=members, split_seed=seed,
                        train=TrainConfig(steps=steps, batch_size=batch_size, learning_rate=lr, seed=seed))


def command_line(out, recipe: TargetRecipe) -> str:
    """The exact command that trains ``recipe`` into ``out`` (quoted in reports)."""
    return (f"python scripts/train_target.py --members {recipe.n_members} --steps {recipe.train.steps} "
            f"--batch-size {recipe.train.batch_size} --lr {recipe.train.learning_rate:g} "
            f"--seed {recipe.train.seed} --out {out}")


@click.command()
@click.option("--out", required=True, help="target folder to write")
@click.option("--members", default=DEFAULT.n_members, show_default=True, help="number of member digits")
@click.option("--steps", default=DEFAULT.train.steps, show_default=True, help="training steps")
@click.option("--batch-size", default=DEFAULT.train.batch_size, show_default=True)
@click.option("--lr", default=DEFAULT.train.learning_rate, show_default=True, help="peak learning rate")
@click.option("--seed", default=0, show_default=True, help="seed of the split and of training")
def main(out, members, steps, batch_size, lr, seed):
    record = train_digits_target(out, make_recipe(members, steps, batch_size, lr, seed))
    click.echo(f"trained in {record['train_seconds']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
