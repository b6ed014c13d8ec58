"""The largest per-device batch for a feature set at real model sizes, from XLA's compiled memory
analysis on this machine's CPU (no accelerator, no weights: abstract parameters, jaxmia.memory).

    python scripts/memory_table.py                              # cdi, DiT-XL/2-256 and SD-1.5 UNet, bf16, 80/141 GB
    python scripts/memory_table.py --models dit-xl-2-256 --dtype float32 --capacity-gb 80
    python scripts/memory_table.py --features loss --models sd-1.5-unet --batches 1,2,8   # bytes per batch only

Each row: the largest per-device batch whose need (jaxmia.memory.ExtractionMemory.need: the kernels'
program or the lane pool's advance program, plus the resident lane states) fits ``--headroom`` x the
device's memory, the GiB at that batch, and the fixed (parameters, code) and per-row parts of the
need. The programs are compiled for XLA:CPU: an estimate of an accelerator's buffer assignment,
exact for parameters, inputs and lane states.
"""

from __future__ import annotations

import os
import sys
import time

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--models", default="dit-xl-2-256,sd-1.5-unet", show_default=True, help="comma-separated real-size models")
@click.option("--features", default="cdi", show_default=True, help="the feature set (its gradient passes included)")
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16", show_default=True)
@click.option("--capacity-gb", default="80,141", show_default=True, help="device memories, GB (1e9 bytes)")
@click.option("--headroom", default=0.9, show_default=True, help="fraction of a device's memory the programs may use")
@click.option("--batches", default=None, help="only print the need at these per-device batches (comma-separated)")
def main(models, features, dtype, capacity_gb, headroom, batches):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax.numpy as jnp

    from jaxmia import memory
    from jaxmia.features import make_config

    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in names if m not in memory.REAL_SIZE_MODELS]
    if unknown:
        raise click.BadParameter(f"unknown model(s) {unknown}; known: {', '.join(memory.REAL_SIZE_MODELS)}",
                                 param_hint="--models")
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    cfg = make_config("cdi")
    start = time.perf_counter()
    if batches:
        for name in names:
            config, context = memory.REAL_SIZE_MODELS[name]
            den, cond_shape = memory.abstract_denoiser(config, dtype=dt, context_shape=context, source=name)
            for b in (int(v) for v in batches.split(",")):
                m = memory.extraction_memory(den, features, cfg, b, cond_shape=cond_shape)
                parts = {k: None if v is None else memory.format_bytes(v["total"])
                         for k, v in (("kernels", m.kernels), ("advance", m.advance))}
                print(f"{name} {dtype} {features} per_device_batch {b}: need {memory.format_bytes(m.need)} "
                      f"(kernels' program {parts['kernels']}, advance {parts['advance']}, lane states "
                      f"{memory.format_bytes(m.pool_state)})", flush=True)
        return
    caps = tuple(float(v) for v in capacity_gb.split(","))
    rows = memory.table_rows(names, caps, dt, tuple(features.split(",")), cfg, headroom)
    print(f"largest per-device batch for '{features}' ({dtype}; XLA:CPU memory analysis, {headroom:.0%} of the "
          f"device's memory; {time.perf_counter() - start:.0f} s)\n")
    print("| model | device | largest per-device batch | need at that batch | fixed | per row | batches compiled |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        need = "-" if r["need_gib"] is None else f"{r['need_gib']:.1f} GiB"
        print(f"| {r['model']} | {r['device_gb']:g} GB | {r['largest_per_device_batch']} | {need} | "
              f"{r['fixed_gib']:.2f} GiB | {r['per_row_gib'] * 1024:.0f} MiB | {r['compiled_batches']} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
