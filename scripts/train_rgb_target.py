"""Retrains the bundled RGB target: a small DDPM on 32 of the 192 32×32 photo patches (about 8 minutes on a 2-core CPU).

    python scripts/train_rgb_target.py [--steps 2500] [--batch-size 16] [--lr 0.003] [--seed 0] [--out jaxmia/assets/rgb_target]

The recipe of ``scripts/train_target.py`` on colour data: the UNet is ``jaxmia.targets.rgb_unet_config``
(280k parameters), a sixth of each photo's patches are members (``jaxmia.data.photos.photo_split``),
``--seed`` seeds both the split and training. Writes the diffusers-shaped target folder
(``jaxmia/targets.py``): weights, scheduler, ``split.json`` (ids, photo provenance, patch digest) and
``recipe.json`` (recipe, training seconds, loss curve, weights digest).
"""

from __future__ import annotations

import click

from jaxmia.models.layout import RGB_TARGET
from jaxmia.targets import RGBRecipe, train_rgb_target
from jaxmia.train import TrainConfig

DEFAULT = RGBRecipe()


@click.command()
@click.option("--out", default=str(RGB_TARGET), show_default=True, help="target folder to write")
@click.option("--steps", default=DEFAULT.train.steps, show_default=True, help="training steps")
@click.option("--batch-size", default=DEFAULT.train.batch_size, show_default=True)
@click.option("--lr", default=DEFAULT.train.learning_rate, show_default=True, help="peak learning rate")
@click.option("--seed", default=0, show_default=True, help="seed of the split and of training")
def main(out, steps, batch_size, lr, seed):
    recipe = RGBRecipe(split_seed=seed, train=TrainConfig(steps=steps, batch_size=batch_size, learning_rate=lr,
                                                          seed=seed))
    record = train_rgb_target(out, recipe)
    click.echo(f"trained in {record['train_seconds']:.0f}s; wrote {out}")


if __name__ == "__main__":
    main()
