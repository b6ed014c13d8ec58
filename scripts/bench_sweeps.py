"""Loss-sweep throughput: images x timesteps x draws, three ways in JAX and as a PyTorch loop.

    python scripts/bench_sweeps.py                                  # demo: 256 images x 10 t x 1 draw, B=64 (~3 min)
    python scripts/bench_sweeps.py --images 1024 --draws 4 --reps 5
    python scripts/bench_sweeps.py --target cifar --images 8 --batch 4 --timesteps 0,300,600,900 --reps 1
    python scripts/bench_sweeps.py --target cifar --images 1024 --batch 64 --peak-tflops 495   # GPU (TF32)

The same batches go through

* ``scan``: the program :func:`jaxmia.features.loss_sweep` runs (vmap over images, ``lax.scan``
  over the flattened (t, draw) grid inside each image; the batch split over the data mesh);
* ``vmap``: the same per-image errors with a ``vmap`` over the (t, draw) grid instead of the scan,
  so the network sees one batch of B x T x R inputs (docs/methods/models.md §10 found this slower on
  this CPU);
* ``loop``: a Python loop over t around one compiled program with t as an argument (B x R inputs);
* ``loss_sweep()``: the public API end to end (placement, padding, host transfers; scan inside);
* ``torch``: a PyTorch eager loop over batches, t and draws, diffusers' UNet2DModel with the same
  weights (on a CPU at each of ``--torch-threads``; the fastest is the baseline).

Rates: images/s (an image counts once its whole T x R grid is done) and UNet evaluations/s
(= images/s x T x R); ratio = images/s ÷ the PyTorch loop's, measured in the same run. The compiled
variants are compiled before timing (compile time printed apart). Before timing, all variants
must agree with ``scan``, and PyTorch fed jaxmia's keyed draws must agree on the first batch.
"""

from __future__ import annotations

import functools

import click
import numpy as np

import bench_common as bc

PURPOSE = "sweep"  # loss_sweep's default purpose: the draws are the same as the library's
AGREE_TOL = 1e-4  # max relative difference between any two variants' errors


def _grid(timesteps, n_draws):
    import jax.numpy as jnp

    ts = jnp.asarray(timesteps, jnp.int32)
    return jnp.repeat(ts, n_draws), jnp.tile(jnp.arange(n_draws, dtype=jnp.uint32), len(timesteps))


def _errors(denoiser, x0, noise_key, t, r, norm):
    """The denoising error of ONE image at timestep ``t`` with draw ``r`` (loss_sweep's draws)."""
    import jax

    from jaxmia.features import denoising_error

    eps = jax.random.normal(jax.random.fold_in(noise_key, r), x0.shape, x0.dtype)
    return denoising_error(denoiser, x0, t, eps, None, norm=norm)


@functools.lru_cache(maxsize=None)
def vmap_program(timesteps: tuple, n_draws: int, norm: str, mesh):
    """vmap over images of a vmap over the (t, draw) grid: the alternative to the library's scan."""
    import jax

    from jaxmia.features import SampleKey, runner

    def per_example(denoiser, x0, key: SampleKey):
        noise_key = key.purpose_key(PURPOSE)
        grid_t, grid_r = _grid(timesteps, n_draws)
        errs = jax.vmap(lambda t, r: _errors(denoiser, x0, noise_key, t, r, norm))(grid_t, grid_r)
        return errs.reshape(len(timesteps), n_draws)

    def program(denoiser, x0, cond, root, id_hash):
        del cond
        keys = SampleKey(root=root, id_hash=id_hash)
        return jax.vmap(per_example, in_axes=(None, 0, SampleKey(None, 0)))(denoiser, x0, keys)

    return runner.per_device_jit(program, mesh, batched=(False, True, False, False, True))


@functools.lru_cache(maxsize=None)
def loop_step(n_draws: int, norm: str, mesh):
    """vmap over images of the errors at ONE timestep ``t`` (an argument) for every draw."""
    import jax
    import jax.numpy as jnp

    from jaxmia.features import SampleKey, runner

    def per_example(denoiser, x0, key: SampleKey, t):
        noise_key = key.purpose_key(PURPOSE)
        return jax.vmap(lambda r: _errors(denoiser, x0, noise_key, t, r, norm))(jnp.arange(n_draws, dtype=jnp.uint32))

    def program(denoiser, x0, root, id_hash, t):
        keys = SampleKey(root=root, id_hash=id_hash)
        return jax.vmap(per_example, in_axes=(None, 0, SampleKey(None, 0), None))(denoiser, x0, keys, t)

    return runner.per_device_jit(program, mesh, batched=(False, True, False, True, False))


class JaxSweeps:
    """The three compiled JAX variants on the same placed batches."""

    def __init__(self, target, n_images, batch, timesteps, n_draws, norm, devices, seed=0):
        import jax
        import jax.numpy as jnp

        from jaxmia import rng
        from jaxmia.features import runner
        from jaxmia.features.sweep import _sweep_program

        if batch % len(devices):
            raise click.BadParameter(f"--batch {batch} is not a multiple of the {len(devices)} devices")
        self.placed = runner.place(target.denoiser, seed, batch, devices, per_device_batch=batch // len(devices))
        mesh = self.placed.mesh
        self.timesteps, self.n_draws = tuple(timesteps), n_draws
        hashes = rng.id_hashes(bc.bench_ids(n_images))
        put = lambda a: jax.device_put(a, self.placed.batch_sharding)  # noqa: E731
        self.batches = [(put(target.images[i:i + batch]), put(hashes[i:i + batch])) for i in range(0, n_images, batch)]
        self.t_args = [jax.device_put(jnp.int32(t), self.placed.replicated) for t in self.timesteps]
        x0, h = self.batches[0]
        args = (self.placed.denoiser, x0, None, self.placed.root, h)
        programs = {
            "scan": (_sweep_program(self.timesteps, n_draws, norm, PURPOSE, False, mesh), args),
            "vmap": (vmap_program(self.timesteps, n_draws, norm, mesh), args),
            "loop": (loop_step(n_draws, norm, mesh), (self.placed.denoiser, x0, self.placed.root, h, self.t_args[0])),
        }
        self.compiled, self.compile_s = {}, {}
        for name, (program, a) in programs.items():
            self.compiled[name], self.compile_s[name] = bc.timed(lambda: program.lower(*a).compile())
            print(f"   compiled {name}: {self.compile_s[name]:.1f} s", flush=True)

    def run(self, variant: str) -> np.ndarray:
        """(n_images, T, R) errors, blocking until all batches are done."""
        d, root = self.placed.denoiser, self.placed.root
        outs = []
        for x0, h in self.batches:  # dispatch everything, then wait
            if variant == "loop":
                outs.append([self.compiled["loop"](d, x0, root, h, t) for t in self.t_args])
            else:
                outs.append(self.compiled[variant](d, x0, None, root, h))
        if variant == "loop":
            return np.concatenate([np.stack([np.asarray(v) for v in per_t], axis=1) for per_t in outs])
        return np.concatenate([np.asarray(o) for o in outs])


def torch_sweep(tmodel, images_nchw, timesteps, n_draws, batch, norm, noise=None):
    """(N, T, R) errors with a PyTorch eager loop: per batch, per t, per draw one UNet call.

    ``noise``: None (``torch.randn``, one draw per image and r, shared over t) or (R, N, C, H, W)."""
    import torch

    import torch_reference as tr

    out = np.zeros((len(images_nchw), len(timesteps), n_draws))
    with torch.no_grad():
        for i in range(0, len(images_nchw), batch):
            x0 = images_nchw[i:i + batch]
            draws = [torch.randn_like(x0) if noise is None else noise[r, i:i + batch] for r in range(n_draws)]
            for k, t in enumerate(timesteps):
                for r, eps in enumerate(draws):
                    err = tr.sample_norm(tmodel(tmodel.q_sample(x0, t, eps), t) - eps, norm)
                    out[i:i + batch, k, r] = err.cpu().numpy()
    return out


def bench(target, n_images, batch, timesteps, n_draws, reps, session, peak_tflops, norm="l2"):
    import torch_reference as tr

    from jaxmia.data import Dataset
    from jaxmia.features import loss_sweep

    if n_images % batch:
        raise click.BadParameter(f"--images {n_images} must be a multiple of --batch {batch}")
    devices, device = session.devices, session.torch_device
    flops = bc.forward_flops(target.denoiser, batch)
    bc.print_header(f"loss sweep on target {target.name}", {
        "network": target.describe(flops),
        "sweep": f"{n_images} images x {len(timesteps)} timesteps {list(timesteps)} x {n_draws} draw(s), "
                 f"batch {batch}, {reps} timed repetition(s) after one warm-up call (median)",
    })
    sweeps = JaxSweeps(target, n_images, batch, timesteps, n_draws, norm, devices)
    tmodel = bc.torch_denoiser(target, device)
    images_nchw = tr.to_nchw(target.images[:n_images], device)
    data = Dataset(bc.bench_ids(n_images), target.images[:n_images], None, "bench")

    def lib():
        return loss_sweep(target.denoiser, data, timesteps, n_draws, seed=0, batch_size=batch,
                          per_device_batch=batch // len(devices), norm=norm, purpose=PURPOSE, devices=devices)

    # agreement before timing: every variant against scan, PyTorch (jaxmia's draws) on the first batch
    values = {v: sweeps.run(v) for v in ("scan", "vmap", "loop")}
    values["loss_sweep()"] = lib()
    noise = tr.to_nchw(bc.keyed_draws(batch, PURPOSE, n_draws, target.denoiser.sample_shape).reshape(
        n_draws * batch, *target.denoiser.sample_shape), device).reshape(n_draws, batch, *images_nchw.shape[1:])
    ref = torch_sweep(tmodel, images_nchw[:batch], timesteps, n_draws, batch, norm, noise)
    agree = []
    for name, (a, b) in {**{f"{v} vs scan": (values[v], values["scan"]) for v in ("vmap", "loop", "loss_sweep()")},
                         "torch (same draws) vs scan, first batch": (ref, values["scan"][:batch])}.items():
        diff = float(np.max(bc.rel_diff(a, b)))
        agree.append([name, f"{diff:.1e}", f"{AGREE_TOL:.0e}", bc.verdict(diff, AGREE_TOL)])
    bc.print_table(["comparison", "max rel. diff", "tolerance", "verdict"], agree, title="agreement (before timing):")

    fns = {v: (lambda v=v: sweeps.run(v)) for v in ("scan", "vmap", "loop")}
    fns["loss_sweep()"] = lib
    fns.update(bc.torch_thunks(lambda: torch_sweep(tmodel, images_nchw, timesteps, n_draws, batch, norm),
                               session.torch_threads))
    times = bc.time_calls(fns, reps)
    torch_label, torch_s = bc.fastest(times)
    evals = n_images * len(timesteps) * n_draws
    rows = []
    for name in [k for k in fns if not k.startswith("torch")] + [torch_label]:
        med = bc.median(times[name])
        compile_s = sweeps.compile_s.get(name)
        rows.append([name, bc.fmt(n_images / med), bc.fmt(evals / med), bc.flops_cell(evals / med * flops, peak_tflops),
                     bc.ratio_cell(torch_s, med), f"{med:.3f}", f"{min(times[name]):.3f}",
                     "-" if compile_s is None else f"{compile_s:.1f}"])
    bc.print_table(["variant", "img/s", "evals/s", bc.flops_header(peak_tflops), "ratio", "median s", "min s",
                    "compile s"], rows,
                   title=f"{target.name}: loss sweep (img/s = images with their whole {len(timesteps)} x {n_draws} "
                         f"grid done per second; evals/s = UNet forwards per second; ratio = img/s / {torch_label}'s; "
                         "loss_sweep() reuses scan's compiled program)")
    print(f"   load average at the end: {bc.load_average()}\n", flush=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", default="demo", show_default=True, help=bc.TARGET_HELP)
@click.option("--images", default=256, show_default=True)
@click.option("--batch", default=64, show_default=True, help="images per compiled call (a multiple of the devices)")
@click.option("--timesteps", default="0,100,200,300,400,500,600,700,800,900", show_default=True)
@click.option("--draws", default=1, show_default=True, help="noise draws per image (shared over t)")
@click.option("--reps", default=3, show_default=True)
@bc.common_options
def main(target, images, batch, timesteps, draws, reps, cpu_devices, torch_threads, torch_device, precision,
         peak_tflops):
    ts = tuple(int(t) for t in timesteps.split(",") if t.strip())
    session = bc.start("bench_sweeps", cpu_devices, torch_threads, torch_device, precision)
    bench(bc.load_target(target, images), images, batch, ts, draws, reps, session, peak_tflops)


if __name__ == "__main__":
    main()
