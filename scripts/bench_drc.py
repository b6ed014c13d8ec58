"""DRC restoration throughput: jaxmia (one compiled call per batch) against a PyTorch eager loop.

    python scripts/bench_drc.py                        # demo target, 16 images, B=8, K=50 and K=20 (~6 min)
    python scripts/bench_drc.py --images 128 --batch 16 --steps 50,20,10
    python scripts/bench_drc.py --target cifar --images 2 --batch 2 --steps 10 --reps 1
    python scripts/bench_drc.py --target cifar --images 256 --batch 64 --peak-tflops 495   # GPU (TF32)

For each number of sampling steps K (the default DRC config otherwise: R = 10 tasks, strength 0.5,
DDIM, no RePaint resampling) it measures

* ``jaxmia``: the program :func:`jaxmia.drc.run_drc` runs (every image x every task, the whole
  sampling ``lax.scan`` inside one compiled call per batch, the batch split over the data mesh) on
  fixed batches, after compiling it (compile time printed apart);
* ``run_drc()``: the public API end to end (placement, padding, host transfers, table written, no
  evidence images; it reuses the compiled program);
* ``torch``: diffusers' UNet2DModel with the same weights, the same move plan as an eager loop, all
  tasks of a batch's images in one UNet batch (scripts/torch_reference.py ``drc``), then the hole's
  MSE and PSNR (jaxmia also computes SSIM: a few small convolutions, nothing next to R x K UNet calls);

as images/s, UNet evaluations/s (= images/s x R x K), the fraction of peak and the ratio to the
fastest PyTorch thread count. It also shows that a batch is one compiled call: one Python call per
batch and the sampling loop as an XLA ``while`` (trip count = K moves) inside the executable; with
``--count``, the network evaluations counted while ONE call runs a batch equal R x K per image.
Before timing, PyTorch is fed jaxmia's masks and keyed noise and must reproduce its scores.
"""

from __future__ import annotations

import re
import tempfile

import click
import numpy as np

import bench_common as bc

MSE_TOL = 1e-3  # max relative difference of the hole MSE after K moves (float32 round-off compounds)


class DRCBatches:
    """The program ``run_drc`` runs, compiled once and called on fixed batches (scores only)."""

    def __init__(self, denoiser, images, batch, cfg, devices, seed=0):
        import jax

        from jaxmia import rng
        from jaxmia.drc.driver import _per_device_drc
        from jaxmia.features import runner

        if batch % len(devices):
            raise click.BadParameter(f"--batch {batch} is not a multiple of the {len(devices)} devices")
        self.placed = runner.place(denoiser, seed, batch, devices, per_device_batch=batch // len(devices))
        put = lambda a: jax.device_put(np.asarray(a), self.placed.batch_sharding)  # noqa: E731
        hashes = rng.id_hashes(bc.bench_ids(len(images)))
        self.batches = [(put(images[i:i + batch]), put(hashes[i:i + batch])) for i in range(0, len(images), batch)]
        self.calls = 0
        program = _per_device_drc(self.placed.mesh, cfg, False, False, False)
        self.compiled, self.compile_s = bc.timed(lambda: program.lower(*self._args(*self.batches[0])).compile())

    def _args(self, x, h):
        return (self.placed.denoiser, x, None, self.placed.root, h)

    def run(self) -> dict:
        """{metric: (N, R)} raw scores, one call of the compiled program per batch."""
        outs = []
        for x, h in self.batches:  # dispatch everything, then wait
            self.calls += 1
            outs.append(self.compiled(*self._args(x, h))["scores"])
        return {m: np.concatenate([np.asarray(o[m], np.float64) for o in outs]) for m in outs[0]}

    def longest_loop(self) -> int:
        """The largest trip count among the XLA while loops of the executable (the sampling scan)."""
        counts = re.findall(r'known_trip_count":\{"n":"(\d+)"', self.compiled.as_text())
        return max((int(n) for n in counts), default=0)


def count_calls(denoiser, images, cfg, devices) -> float:
    """Network evaluations per image counted while ONE call of the compiled program runs one batch."""
    import jax

    counter = bc.EvalCounter()
    runner = DRCBatches(bc.counting_denoiser(denoiser, counter), images, len(images), cfg, devices)
    runner.run()
    jax.effects_barrier()
    if runner.calls != 1:
        raise RuntimeError(f"expected one call, made {runner.calls}")
    return counter.forward / len(images)


def task_masks(target, cfg, n: int, seed: int = 0) -> np.ndarray:
    """(n, R, H, W) jaxmia's masks of the first ``n`` bench images (1 = known)."""
    import jax

    from jaxmia import rng
    from jaxmia.drc import task_masks as make

    h, w, _ = target.denoiser.sample_shape
    root = rng.root_key(seed)
    return np.asarray(jax.vmap(lambda k: make(cfg, h, w, root, k))(rng.id_hashes(bc.bench_ids(n))))


def restore_noise(target, cfg, n: int, moves: int) -> np.ndarray:
    """(moves, 3, n·R, H, W, C): jaxmia's keyed draws of every move, image-major like the torch batch."""
    from jaxmia.drc import tasks

    per_task = [bc.keyed_draws(n, f"drc:{t.name}", moves, (3, *target.denoiser.sample_shape)) for t in tasks(cfg)]
    draws = np.stack(per_task, axis=2)  # (moves, n, R, 3, H, W, C)
    return np.moveaxis(draws, 3, 1).reshape(moves, 3, -1, *target.denoiser.sample_shape)


def bench_config(target, batch, cfg, reps, session, tmodel, flops, peak_tflops, count: bool) -> tuple[list, list]:
    import torch

    import torch_reference as tr

    from jaxmia.data import Dataset
    from jaxmia.drc import network_calls_per_image, run_drc, tasks
    from jaxmia.drc.restore import plan_for

    devices, device = session.devices, session.torch_device
    images = target.images
    n, n_tasks = len(images), len(tasks(cfg))
    plan = plan_for(target.denoiser, cfg)
    calls_per_image = network_calls_per_image(cfg, target.denoiser.schedule.num_train_timesteps)
    runner = DRCBatches(target.denoiser, images, batch, cfg, devices)
    print(f"   K={cfg.steps}: compiled in {runner.compile_s:.1f} s", flush=True)
    masks = torch.as_tensor(np.array(task_masks(target, cfg, n)), device=device)
    x0 = tr.to_nchw(images, device)
    clip = target.denoiser.x0_clip

    def torch_drc(noise=None, upto=n):
        out = [tr.drc(tmodel, x0[i:i + batch], masks[i:i + batch], plan, eta=cfg.eta, init=cfg.init, clip=clip,
                      noise=noise) for i in range(0, upto, batch)]
        return {m: np.concatenate([o[m] for o in out]) for m in out[0]}

    # agreement before timing: the first batch, PyTorch fed jaxmia's masks and draws
    jax_scores = runner.run()
    noise = restore_noise(target, cfg, batch, plan.network_calls)  # NHWC draws -> NCHW
    noise = torch.as_tensor(np.ascontiguousarray(np.moveaxis(noise, -1, -3)), device=device)
    ref = torch_drc(noise, upto=batch)
    mse_diff = float(np.max(bc.rel_diff(jax_scores["mse"][:batch], ref["mse"])))
    psnr_diff = float(np.max(np.abs(jax_scores["psnr"][:batch] - ref["psnr"])))
    agree = [f"K={cfg.steps}", f"{mse_diff:.1e}", f"{MSE_TOL:.0e}", bc.verdict(mse_diff, MSE_TOL), f"{psnr_diff:.1e}"]
    tmodel.reset_counts()

    data = Dataset(bc.bench_ids(n), images, None, "bench")
    with tempfile.TemporaryDirectory() as tmp:
        fns = {"jaxmia": runner.run,
               "run_drc()": lambda: run_drc(target.denoiser, data, cfg, tmp, batch_size=batch, progress=False,
                                            evidence=0, devices=devices, per_device_batch=batch // len(devices))}
        fns.update(bc.torch_thunks(torch_drc, session.torch_threads))
        times = bc.time_calls(fns, reps)
    torch_label, torch_s = bc.fastest(times)
    torch_calls = tmodel.forward / (bc.n_calls(fns, times) * n)
    tmodel.reset_counts()
    n_batches = len(runner.batches)
    counted = count_calls(target.denoiser, images[:batch], cfg, devices) if count else None
    rows = []
    for name in ("jaxmia", "run_drc()", torch_label):
        med = bc.median(times[name])
        ips = n / med
        per_image = torch_calls if name.startswith("torch") else calls_per_image
        rows.append([f"K={cfg.steps}, R={n_tasks}", name, f"{per_image:g}", bc.fmt(ips), bc.fmt(ips * per_image),
                     bc.flops_cell(ips * per_image * flops, peak_tflops), bc.ratio_cell(torch_s, med),
                     f"{med:.2f} ({min(times[name]):.2f})", f"{runner.compile_s:.1f}" if name == "jaxmia" else "-"])
    rows[0].append(f"{runner.calls // ((reps + 2) * n_batches)} call/batch, XLA while of {runner.longest_loop()} "
                   "steps" + ("" if counted is None else f", {counted:g} evals/img counted in 1 call"))
    for r in rows[1:]:
        r.append("")
    print(f"   K={cfg.steps}: jaxmia {rows[0][3]} img/s, torch {rows[2][3]} img/s", flush=True)
    return rows, agree


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", default="demo", show_default=True, help=bc.TARGET_HELP)
@click.option("--images", default=16, show_default=True, help="images restored per repetition")
@click.option("--batch", default=8, show_default=True,
              help="images per compiled call (run_drc's default: 8 per device)")
@click.option("--steps", default="50,20", show_default=True, help="sampling steps K to measure (50 = default config)")
@click.option("--reps", default=2, show_default=True)
@click.option("--count/--no-count", default=True, show_default=True,
              help="count the network evaluations of one compiled call (one extra compile per config)")
@bc.common_options
def main(target, images, batch, steps, reps, count, cpu_devices, torch_threads, torch_device, precision, peak_tflops):
    from jaxmia.drc import DRCConfig

    if images % batch:
        raise click.BadParameter(f"--images {images} must be a multiple of --batch {batch}")
    session = bc.start("bench_drc", cpu_devices, torch_threads, torch_device, precision)
    tgt = bc.load_target(target, images)
    flops = bc.forward_flops(tgt.denoiser, batch)
    tmodel = bc.torch_denoiser(tgt, session.torch_device)
    bc.print_header(f"DRC on target {tgt.name}", {
        "network": tgt.describe(flops),
        "batches": f"{images} images in batches of {batch}, {reps} timed repetition(s) after one warm-up call (median)",
    })
    rows, agree = [], []
    for k in (int(s) for s in steps.split(",") if s.strip()):
        r, a = bench_config(tgt, batch, DRCConfig().replace(steps=k), reps, session, tmodel, flops, peak_tflops, count)
        rows += r
        agree.append(a)
    print()
    bc.print_table(["config", "max rel. diff of hole MSE", "tolerance", "verdict", "max |PSNR diff| dB"], agree,
                   title="agreement before timing (first batch, PyTorch fed jaxmia's masks and draws):")
    bc.print_table(
        ["config", "variant", "evals/img", "img/s", "evals/s", bc.flops_header(peak_tflops), "ratio",
         "median s (min)", "compile s", "one compiled call per batch"],
        rows, title="DRC restoration (jaxmia = the compiled program on fixed batches; run_drc() = end to end incl. "
                    "table writing; ratio = img/s / the fastest PyTorch's)")
    print(f"   load average at the end: {bc.load_average()}\n", flush=True)


if __name__ == "__main__":
    main()
