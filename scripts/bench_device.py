"""jaxmia's feature throughput on one accelerator at real shapes, float32 (TF32) or bfloat16.

    python scripts/bench_device.py --model cifar --dtype float32 --batch 256 --rows-out rows.md
    python scripts/bench_device.py --model dit-xl-2-256 --dtype bfloat16 --batch 64 --peak-tflops 989
    python scripts/bench_device.py --model tiny-unet --batch 4 --reps 1 --stream 1    # seconds, any CPU

The device check's benchmark (scripts/device_check.sh). jaxmia only (the PyTorch side of the CIFAR
shape is bench_features.py's; diffusers' DiT has no loop here). Random weights (the timings do not
depend on their values), random inputs in [-1, 1]; DiT gets class label 0 for every image. Rows:
the bare forward and forward + input gradient (bench_features.py's ``unet_forward`` / ``unet_vjp``
programs), and the 26-d ``cdi`` vector through ``extract()``'s programs (the kernels' program and
the NO lane pool, ``--stream`` batches per call), with the fraction of the network's bound (what the
forward and vjp rates allow for the passes ``cdi`` needs) and, given ``--peak-tflops``, the forward's
fraction of the chip's peak. ``--rows-out`` appends the rows as Markdown for docs/benchmarks.md.

bfloat16: parameters and network inputs in bfloat16, the output cast back to float32 for the
features (jaxmia.memory.bf16_denoiser); layers that compute in float32 by design stay so.
"""

from __future__ import annotations

import os
import sys
import time

import click
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common as bc  # noqa: E402

TINY_UNET = {"_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
             "block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
TINY_DIT = {"_class_name": "DiTTransformer2DModel", "num_attention_heads": 2, "attention_head_dim": 8,
            "in_channels": 4, "out_channels": 8, "num_layers": 2, "sample_size": 8, "patch_size": 2,
            "num_embeds_ada_norm": 10}
MODELS = ("cifar", "dit-xl-2-256", "tiny-unet", "tiny-dit")


def model_config(name: str) -> dict:
    from jaxmia import memory

    return {"cifar": bc.CIFAR_UNET_CONFIG, "dit-xl-2-256": memory.DIT_XL_2_256, "tiny-unet": TINY_UNET,
            "tiny-dit": TINY_DIT}[name]


def build(name: str, dtype: str, seed: int = 0):
    """A denoiser with random weights on the default device (float32 or bfloat16), unconditional
    from the benchmark's side (a class-conditional model gets label 0)."""
    import jax
    import jax.numpy as jnp

    from jaxmia import memory
    from jaxmia import schedule as sched
    from jaxmia.models import Denoiser, build_model

    spec = build_model(model_config(name), source=name)
    x = jnp.zeros((1, *spec.sample_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    cond = jnp.zeros((1,), jnp.int32) if spec.cond_kind == "class" else None
    params = jax.jit(lambda key: spec.module.init(key, x, t, cond))(jax.random.key(seed))["params"]
    apply_fn = spec.apply_fn
    if spec.cond_kind == "class":
        def apply_fn(p, x, t, c, _inner=spec.apply_fn):
            return _inner(p, x, t, jnp.zeros(x.shape[:1], jnp.int32) if c is None else c)
    learned_sigma = spec.out_channels == 2 * spec.sample_shape[-1]
    den = Denoiser(params=params, schedule=sched.make_schedule(), apply_fn=apply_fn,
                   sample_shape=tuple(spec.sample_shape), learned_sigma=learned_sigma, x0_clip=None,
                   digest=f"random-{name}")
    if dtype == "bfloat16":
        den = memory.bf16_denoiser(den)
    n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
    return den, n_params


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", type=click.Choice(MODELS), default="cifar", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True)
@click.option("--batch", default=64, show_default=True, help="images per device per call (the per-device batch)")
@click.option("--reps", default=3, show_default=True, help="timed calls per row (median)")
@click.option("--stream", default=4, show_default=True, type=click.IntRange(min=1), help="batches per cdi call")
@click.option("--rows", default="unet_forward,unet_vjp,cdi", show_default=True,
              help="unet_forward, unet_vjp and cdi (= the --features set)")
@click.option("--features", default="cdi", show_default=True,
              help="the signal set of the 'cdi' row (the device check's dry run uses loss,noise_opt: the kernels' "
                   "program and the NO lane pool, compiled in seconds)")
@click.option("--rows-out", type=click.Path(dir_okay=False), default=None, help="append Markdown rows here")
@click.option("--precision", type=click.Choice(["default", "highest"]), default="default", show_default=True)
@click.option("--peak-tflops", type=float, default=None, help="the chip's dense peak at this dtype, TFLOP/s")
def main(model, dtype, batch, reps, stream, rows, features, rows_out, precision, peak_tflops):
    import jax

    import bench_features as bf
    from jaxmia import compile_cache
    from jaxmia.features import make_config

    compile_cache.ensure_default()
    if precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    devices = jax.local_devices()[:1]  # one chip: the per-device figure (scaling is bench_scaling.py's)
    device_name = getattr(devices[0], "device_kind", str(devices[0]))
    den, n_params = build(model, dtype)
    images = np.clip(np.random.default_rng(0).normal(0, 0.5, (batch, *den.sample_shape)), -1, 1).astype(np.float32)
    flops = bc.forward_flops(den, batch)
    print(f"== bench_device: {device_name}, {model} ({n_params / 1e6:.1f}M params, {flops / 1e9:.2f} GFLOP per "
          f"forward), {dtype}, precision {precision}, batch {batch}", flush=True)
    cfg = make_config("cdi")
    wanted = [r.strip() for r in rows.split(",") if r.strip()]
    got = {}
    for label in wanted:
        signals = tuple(f.strip() for f in features.split(",") if f.strip())
        names = {"unet_forward": ("@forward",), "unet_vjp": ("@vjp",), "cdi": signals}[label]
        run = bf.JaxmiaRun(den, images, names, cfg if label == "cdi" else None, devices, stream=stream)
        run()  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - t0)
        ips = run.images_per_call / bc.median(times)
        got[label] = dict(ips=ips, compile_s=run.compile_s, run=run)
        print(f"   {label}: {bc.fmt(ips)} img/s (compile {run.compile_s:.1f} s)", flush=True)
    fwd = got.get("unet_forward", {}).get("ips")
    vjp = got.get("unet_vjp", {}).get("ips")
    of_bound = None
    if "cdi" in got and fwd and vjp:
        run = got["cdi"]["run"]
        needed = bf.needed_evals(run.names, cfg, run.lane_stats, run.images_per_call)
        of_bound = got["cdi"]["ips"] / bf.network_bound(fwd, vjp, needed)
        print(f"   {features} at {of_bound:.0%} of the network's bound ({needed[0]:.1f}f + {needed[1]:.1f}b per image)")
    peak = None if not (fwd and peak_tflops) else fwd * flops / (peak_tflops * 1e12)
    model_cell = model if features == "cdi" else f"{model} [{features}]"
    cells = [device_name, model_cell, dtype, precision, str(batch), bc.fmt(fwd), "-" if peak is None else f"{peak:.0%}",
             bc.fmt(vjp), bc.fmt(got.get("cdi", {}).get("ips")), "-" if of_bound is None else f"{of_bound:.0%}",
             " / ".join(f"{got[r]['compile_s']:.0f}" for r in wanted)]
    line = "| " + " | ".join(cells) + " |"
    print(line, flush=True)
    if rows_out:
        new = not os.path.exists(rows_out)
        with open(rows_out, "a") as f:
            if new:
                f.write("| device | model | dtype | precision | batch/device | forward img/s | forward % peak | "
                        "fwd+grad img/s | cdi img/s | cdi of network bound | compile s (rows) |\n")
                f.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
            f.write(line + "\n")


if __name__ == "__main__":
    main()
