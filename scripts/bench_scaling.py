"""Scaling of feature extraction over devices and processes, on host CPU devices (quoted in docs/scaling.md).

    python scripts/bench_scaling.py                                 # cdi, 32 images, 4 per device
    python scripts/bench_scaling.py --features loss,pia --images 64
    python scripts/bench_scaling.py --layouts 1x1,1x2,2x1,1x4       # PROCESSESxDEVICES per process

Each layout runs in fresh subprocesses (the device count is fixed when JAX starts):

* ``1x1``: one process, one CPU device (``--xla_force_host_platform_device_count=1``);
* ``1x2``: one process, the batch sharded over two CPU devices (data axis of the mesh);
* ``2x1``: two processes joined by ``jax.distributed`` on a loopback coordinator, one device
  each, each extracting its share of the ids; process 0 merges the shards.

The target is a tiny ``UNet2DModel`` (8x8x1, channels 8/16, attention at the second level) with
random weights, the images are the first ``--images`` 8x8 digits. Each process first compiles on
one batch of its share (warm-up), then all processes start the timed extraction together (a
``jax.distributed`` barrier). Reported: the compile time, the timed seconds until the (merged)
table is written and images/s = images / timed seconds, the wall time of the whole subprocess run,
and the largest difference of every layout's table from the first's (determinism: it must be 0).

Fake CPU devices share the host's cores: on a machine with 2 physical cores, "2 devices" can at
best use the same 2 cores better than one XLA:CPU device does. The numbers measure the mechanism,
not accelerator scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY_UNET = {
    "_class_name": "UNet2DModel", "sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": None,
}
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}


def make_inputs(folder: Path, n_images: int) -> tuple[Path, Path]:
    from jaxmia.data import digits, write_npz
    from jaxmia.models import build_model, init_params, save_unet

    model = folder / "tiny-unet"
    save_unet(model / "unet", TINY_UNET, init_params(build_model(TINY_UNET).module, seed=0))
    (model / "scheduler").mkdir(parents=True, exist_ok=True)
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    ids, images, _ = digits(8)
    data = folder / "digits.npz"
    write_npz(data, ids[:n_images], images[:n_images])
    return model, data


def worker(args) -> None:
    """One process of one layout: compile on one batch, wait for the others, time the run, print JSON."""
    from jaxmia.distributed import ProcessLayout, barrier, extract_sharded, initialize, share_of

    layout = ProcessLayout()
    if args.num_processes > 1:
        layout = initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id, timeout_s=300)
    from jaxmia.data import load_dataset
    from jaxmia.features import extract
    from jaxmia.models import load_denoiser

    denoiser = load_denoiser(args.model)
    data = load_dataset(args.data, image_shape=denoiser.input_shape)
    # Warm-up: the same program on one batch of this process's share compiles it (jit caches it).
    share = share_of(data.ids, layout.process_id, layout.num_processes)
    warm = extract(denoiser, data.subset(share[:args.per_device_batch]), args.features, seed=0,
                   per_device_batch=args.per_device_batch, progress=False)
    barrier("bench-scaling-start")  # all processes start the timed run together
    start = time.perf_counter()
    run = extract_sharded(denoiser, data, args.features, out=args.out, layout=layout, seed=0,
                          per_device_batch=args.per_device_batch, progress=False)
    print(json.dumps({
        "process": layout.process_id, "timed_s": time.perf_counter() - start,
        "compile_s": warm.meta["timings_s"]["first_batch"],
        "first_timed_batch_s": run.table.meta["timings_s"]["first_batch"],
        "images": len(run.table.ids), "batch_size": run.table.meta["batch_size"],
    }), flush=True)


def run_layout(layout: str, model: Path, data: Path, out_dir: Path, args) -> dict:
    n_proc, n_dev = (int(v) for v in layout.split("x"))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n_dev}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = out_dir / f"features-{layout}.npz"
    cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--data", str(data), "--out", str(out),
           "--features", args.features, "--per-device-batch", str(args.per_device_batch),
           "--num-processes", str(n_proc), "--port", str(port)]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--process-id", str(k)], env=env, stdout=subprocess.PIPE, text=True)
             for k in range(n_proc)]
    try:
        outputs = [p.communicate(timeout=args.timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.perf_counter() - start
    for p, text in zip(procs, outputs):
        if p.returncode != 0:
            raise SystemExit(f"layout {layout}: a process failed (exit {p.returncode}):\n{text}")
    reports = [json.loads(text.strip().splitlines()[-1]) for text in outputs]
    timed = max(r["timed_s"] for r in reports)  # until the last process is done (and process 0 has merged)
    return {
        "layout": layout, "processes": n_proc, "devices_per_process": n_dev,
        "batch_per_process": reports[0]["batch_size"],
        "compile_s": max(r["compile_s"] for r in reports),
        "first_timed_batch_s": max(r["first_timed_batch_s"] for r in reports),
        "timed_s": timed, "images_per_s": sum(r["images"] for r in reports) / timed,
        "wall_s": wall, "table": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", default="cdi")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--layouts", default="1x1,1x2,2x1")
    parser.add_argument("--timeout", type=float, default=1800)
    # worker-only arguments
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--num-processes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import jax
    import numpy as np

    from jaxmia.table import load_table

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"host: {platform.machine()}, {os.cpu_count()} logical CPUs, load average {load} (1/5/15 min); "
          f"jax {jax.__version__}, CPU devices only")
    print(f"features {args.features!r}, {args.images} 8x8x1 images, tiny UNet2DModel, "
          f"{args.per_device_batch} images per device per step\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, data = make_inputs(Path(tmp), args.images)
        for layout in args.layouts.split(","):
            rows.append(run_layout(layout.strip(), model, data, Path(tmp), args))
            r = rows[-1]
            print(f"  ran {r['layout']}: {r['wall_s']:.1f} s", file=sys.stderr, flush=True)
        base_rate = rows[0]["images_per_s"]
        base = load_table(rows[0]["table"])
        print(f"{'layout':>7} {'procs':>5} {'dev/proc':>8} {'batch':>5} {'compile s':>9} {'timed s':>8} "
              f"{'images/s':>9} {'speed-up':>8} {'wall s':>7}  largest difference from the first layout")
        for r in rows:
            table = load_table(r["table"]).rows(base.ids.tolist())
            abs_diff = np.abs(table.values - base.values)
            rel_diff = abs_diff / np.maximum(np.abs(base.values), 1e-12)
            row, col = np.unravel_index(np.argmax(rel_diff), rel_diff.shape)
            worst = "identical" if abs_diff.max() == 0 else (
                f"abs {abs_diff.max():.1e}; rel {rel_diff[row, col]:.1e} ({base.names[col]}, {base.ids[row]}); "
                f"{int((rel_diff > 1e-5).sum())} of {rel_diff.size} values off by > 1e-5 rel")
            print(f"{r['layout']:>7} {r['processes']:>5} {r['devices_per_process']:>8} {r['batch_per_process']:>5} "
                  f"{r['compile_s']:>9.1f} {r['timed_s']:>8.2f} {r['images_per_s']:>9.2f} "
                  f"{r['images_per_s'] / base_rate:>7.2f}x {r['wall_s']:>7.1f}  {worst}")
        print("\ncompile s: the warm-up batch (slowest process); timed s: the extraction after it, all processes "
              "started together, until the table is merged;\nimages/s = images / timed s; wall s: the whole "
              f"subprocess run (imports, compile, run). First timed batch (cache check, should be small): "
              f"{max(r['first_timed_batch_s'] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
