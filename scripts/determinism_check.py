"""Are the features the same whatever the batch size and the device count? (quoted in docs/scaling.md §9)

    python scripts/determinism_check.py [--images 32] [--features cdi] [--per-device-batch 8]

Extracts the features of the first --images members of the bundled demo target three times: on one
CPU device at two batch sizes, and on two CPU devices, all at the same per_device_batch, and prints
whether the tables are bit-identical and the largest differences (absolute, relative, which columns).
"""

import click
import jax
import numpy as np


@click.command()
@click.option("--images", default=32, show_default=True)
@click.option("--features", default="cdi", show_default=True)
@click.option("--per-device-batch", default=8, show_default=True)
def main(images, features, per_device_batch):
    jax.config.update("jax_num_cpu_devices", 2)  # before JAX's first operation
    from jaxmia.data import Dataset, load_dataset
    from jaxmia.features import extract
    from jaxmia.models import load_denoiser

    denoiser = load_denoiser("demo")
    members = load_dataset("demo:members")
    data = Dataset(members.ids[:images], members.images[:images], None, members.source)
    devices = jax.devices()

    def run(n_devices, batch_size):
        return extract(denoiser, data, features, batch_size=batch_size, per_device_batch=per_device_batch,
                       devices=devices[:n_devices], progress=False)

    base = run(1, per_device_batch)
    for label, table in ((f"1 device, batch {4 * per_device_batch}", run(1, 4 * per_device_batch)),
                         (f"2 devices, batch {2 * per_device_batch}", run(2, 2 * per_device_batch))):
        diff = np.abs(table.values - base.values)
        rel = diff / np.maximum(np.abs(base.values), 1e-12)
        cols = [c for c, d in zip(table.names, diff.max(axis=0)) if d > 0]
        click.echo(f"{label} vs 1 device, batch {per_device_batch}: "
                   + ("bit-identical" if not cols else
                      f"max abs {diff.max():.2g}, max rel {rel.max():.2g}, differing columns: {', '.join(cols)}"))


if __name__ == "__main__":
    main()
