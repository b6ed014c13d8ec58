"""CPU cost of the networks CDI audits at their real sizes: one forward (and, with --grad, one
input-gradient) at batch 1, random weights, fp32 or bf16; wall time and peak memory per model.

    python scripts/real_size.py                         # every model, fp32 and bf16 forwards
    python scripts/real_size.py --models dit_xl2_256 --dtypes float32 --grad

Each model runs in its own subprocess, so the peak resident memory (``ru_maxrss``) is that model's.
Times are medians of ``--reps`` calls after a compiling first call (reported apart). Prints one
markdown table; the figures in docs/benchmarks.md come from it.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import click


MODELS = ("dit_xl2_256", "dit_xl2_512", "uvit_h2_256", "uvit_h4_512", "uvit_t2i_small", "uvit_t2i_small_deep",
          "ldm_cin256_v2", "sd15_unet")


def model_config(name: str) -> tuple[dict, str]:
    """(the registered config dict, the conditioning: class | text | none)."""
    if name.startswith("dit"):
        from jaxmia.models.dit_official import DiTOfficialConfig

        return DiTOfficialConfig(input_size=32 if name.endswith("256") else 64).to_diffusers(), "class"
    if name.startswith("uvit_t2i"):
        from jaxmia.models.uvit import UViTT2IConfig

        depth = 16 if name.endswith("deep") else 12
        return UViTT2IConfig(embed_dim=512, depth=depth, num_heads=8).to_diffusers(), "text"
    if name.startswith("uvit"):
        from jaxmia.models.uvit import UViTConfig

        cfg = UViTConfig() if name.endswith("256") else UViTConfig(img_size=64, patch_size=4)
        return cfg.to_diffusers(), "class"
    if name == "ldm_cin256_v2":
        from pathlib import Path

        import yaml

        import jaxmia
        from jaxmia.models.official import ldm

        release = Path(jaxmia.__file__).parent / "configs" / "official" / "ldm-cin256-v2.yaml"  # shipped
        unet_cfg, _ = ldm.pipeline_configs(ldm.parse_config(yaml.safe_load(release.read_text())))
        return unet_cfg.to_diffusers(), "class"
    if name == "sd15_unet":
        from jaxmia.models.unet2d_condition import UNet2DConditionConfig

        return UNet2DConditionConfig(sample_size=64, cross_attention_dim=768, attention_head_dim=8).to_diffusers(), \
            "text"
    raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})")


def measure(name: str, dtype: str, grad: bool, reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmia.models import build_model

    config, cond_kind = model_config(name)
    spec = build_model(config, source=name)
    dt = jnp.dtype(dtype)
    leaves, tree = jax.tree_util.tree_flatten(spec.abstract_params)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_unflatten(
        tree, [jnp.asarray(0.02 * rng.standard_normal(leaf.shape, np.float32), dt) for leaf in leaves])
    n_params = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    x = jnp.asarray(rng.standard_normal((1,) + tuple(spec.sample_shape), np.float32), dt)
    t = jnp.array([500], jnp.int32)
    if cond_kind == "class":
        cond = jnp.array([1], jnp.int32)
    elif cond_kind == "text":
        length = 77
        width = config.get("clip_dim") or config.get("cross_attention_dim")
        cond = jnp.asarray(rng.standard_normal((1, config.get("num_clip_token", length), width), np.float32), dt)
    else:
        cond = None

    def forward(p, x):
        return spec.apply_fn(p, x, t, cond)

    fn = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x).astype(jnp.float32)), argnums=1) if grad
                 else forward)
    start = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        times.append(time.perf_counter() - start)
    return {"model": name, "dtype": dtype, "pass": "input-gradient" if grad else "forward", "params": n_params,
            "sample_shape": list(spec.sample_shape), "first_call_s": round(first, 2),
            "steady_s": round(float(np.median(times)), 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


@click.command()
@click.option("--models", default=",".join(MODELS), show_default=True)
@click.option("--dtypes", default="float32,bfloat16", show_default=True)
@click.option("--grad", is_flag=True, help="Time the input-gradient instead of the forward.")
@click.option("--reps", default=2, show_default=True)
@click.option("--one", hidden=True, default=None, help="internal: measure one model/dtype in this process")
def main(models, dtypes, grad, reps, one):
    if one:
        name, dtype = one.split(":")
        print(json.dumps(measure(name, dtype, grad, reps)), flush=True)
        return
    rows = []
    for name in models.split(","):
        model_config(name)  # fail fast on an unknown name
        for dtype in dtypes.split(","):
            cmd = [sys.executable, __file__, "--one", f"{name}:{dtype}", "--reps", str(reps)] + (["--grad"] if grad else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"{name} {dtype}: failed ({tail[0]})", file=sys.stderr, flush=True)
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name} {dtype}: {row}", file=sys.stderr, flush=True)
            rows.append(row)
    print("| model | params | sample (H, W, C) | dtype | pass | first call s | steady s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {tuple(r['sample_shape'])} | {r['dtype']} | {r['pass']} | "
              f"{r['first_call_s']} | {r['steady_s']} | {r['peak_rss_gib']} |")


if __name__ == "__main__":
    main()
