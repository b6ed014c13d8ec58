"""Retrains the bundled demo target from scratch (about 10 minutes on a 2-core CPU).

    python scripts/train_demo_target.py [--out jaxmia/assets/demo_target] [--members 200] [--steps 2500]

Writes the diffusers-shaped target folder (see jaxmia/targets.py) and prints the member /
non-member denoising-loss gap and the single-image loss-attack AUC.
"""

import click

from jaxmia.data.demo import DEMO_TARGET
from jaxmia.targets import TargetRecipe, train_digits_target
from jaxmia.train import TrainConfig


@click.command()
@click.option("--out", default=str(DEMO_TARGET), show_default=True, help="target folder to write")
@click.option("--members", default=TargetRecipe.n_members, show_default=True, help="number of member digits")
@click.option("--steps", default=TargetRecipe().train.steps, show_default=True, help="training steps")
@click.option("--batch-size", default=TargetRecipe().train.batch_size, show_default=True)
@click.option("--lr", default=TargetRecipe().train.learning_rate, show_default=True)
@click.option("--seed", default=0, show_default=True, help="seed of the split and of training")
def main(out, members, steps, batch_size, lr, seed):
    recipe = TargetRecipe(n_members=members, split_seed=seed,
                          train=TrainConfig(steps=steps, batch_size=batch_size, learning_rate=lr, seed=seed))
    record = train_digits_target(out, recipe)
    click.echo(f"trained in {record['train_seconds']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
