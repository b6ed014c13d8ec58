"""Feature-extraction throughput: jaxmia against a plain PyTorch eager loop on the same weights.

    python scripts/bench_features.py                          # demo target, batch 64, 5 rows (~10 min)
    python scripts/bench_features.py --rows all --reps 5       # every signal alone, and both cdi presets
    python scripts/bench_features.py --target cifar --batch 4 --rows unet_forward,cdi --reps 1
    python scripts/bench_features.py --target cifar --batch 64 --peak-tflops 495   # GPU (H100/H200, TF32)

For each row it prints images/s and UNet evaluations/s of

* jaxmia: the program ``extract()`` runs on one batch (``jit_features``: vmap over examples, one
  program per signal set, the batch split over the devices of the data mesh), steady state; the
  compile time is reported apart;
* PyTorch: diffusers' ``UNet2DModel`` holding the same weights (``flax_to_torch`` +
  ``load_state_dict``), the reference's straightforward algorithm (scripts/torch_reference.py),
  eager; on a CPU at each of ``--torch-threads`` (the fastest is the baseline);

and their ratio (jaxmia images/s ÷ PyTorch images/s, measured in the same run, interleaved). The
``unet_forward`` row is the bare network on the batch (one evaluation per image): the UNet's own
speed on both sides and the fraction of the device's peak FLOP rate that the forward reaches;
``unet_vjp`` adds one backward pass (the input gradient of ½‖ε_θ‖², what GM and NO need).
UNet evaluations per image are counted as they execute on both sides ("f" forward, "b" backward;
jaxmia: a counting denoiser for the data-dependent noise optimisation, the registry's exact counts
for the rest; PyTorch: a counter in the loop). jaxmia shares work inside ``cdi`` (ε_θ(x0, 0) once;
ML read from GM's gradient passes) and runs NO per example (``no_mode="per_example"``); the row
``cdi[cdi_reference]`` runs the reference preset (NO on the host with SciPy, ML and GM on separate
draws) and has no PyTorch counterpart of its own (compare it with the PyTorch ``cdi`` row).

Before timing a row, the script checks that both sides compute the same numbers on the timed batch
(the UNet outputs; every column of the row, jaxmia's keyed noise draws fed to the PyTorch loop).
"""

from __future__ import annotations

import click
import numpy as np

import bench_common as bc

ROWS = {  # row label -> (jaxmia feature names or the bare network, preset, torch_reference signal)
    "unet_forward": (("@forward",), None, "forward"),
    "unet_vjp": (("@vjp",), None, "vjp"),
    "loss": (("loss",), "cdi", "loss"),
    "secmi": (("secmi",), "cdi", "secmi"),
    "pia+pian": (("pia", "pian"), "cdi", "pia"),
    "multi_loss": (("multi_loss",), "cdi", "multi_loss"),
    "grad_mask": (("grad_mask",), "cdi", "grad_mask"),
    "noise_opt": (("noise_opt",), "cdi", "noise_opt"),
    "cdi": (("cdi",), "cdi", "cdi"),
    "cdi[while_loop]": (("cdi",), "cdi", None),
    "cdi[cdi_reference]": (("cdi",), "cdi_reference", None),
}
# Rows that run NO as one vmapped while loop inside the kernels' program (the form before the lane
# pool, jaxmia.features.lanes): every lane of a call computes until the slowest one has finished.
WHILE_LOOP_ROWS = ("cdi[while_loop]",)
# The default rows: the bare network, the cheap signals and the whole 26-d vector (multi_loss, grad_mask
# and noise_opt are parts of cdi; each row costs its own compile, minutes on a loaded 2-core CPU).
DEFAULT_ROWS = ("unet_forward", "unet_vjp", "loss", "secmi", "pia+pian", "cdi")
FORWARD_T = 500  # the timestep of the unet_forward row (the cost does not depend on it)
DETERMINISTIC_TOL = 1e-4  # max relative difference of the agreement check's exact columns
FORWARD_TOL = 1e-5  # max absolute difference of the UNet outputs (docs/methods/models.md §9)
VJP_TOL = 1e-4  # max absolute difference of the input gradients, relative to their largest magnitude


# ---- jaxmia ------------------------------------------------------------------------------------


def bare_network(kind: str):
    """The per-device program of the bare network rows: the forward ε_θ(x, t), or the input
    gradient ∂(½‖ε_θ(x, t)‖²)/∂x (one forward and one backward pass, as GM and NO need)."""
    import jax
    import jax.numpy as jnp

    def forward(d, x, t):
        return d.apply_fn(d.params, x, t, None)

    def vjp(d, x, t):
        return jax.grad(lambda x: 0.5 * jnp.sum(forward(d, x, t) ** 2))(x)

    return {"@forward": forward, "@vjp": vjp}[kind]


class JaxmiaRun:
    """One signal set of jaxmia on one fixed batch, as ``extract()`` runs a chunk: compiled once
    (``compile_s``), then called repeatedly. ``names`` ("@forward",) or ("@vjp",): the bare network."""

    def __init__(self, denoiser, images, names, cfg, devices, seed: int = 0, while_loop: bool = False,
                 stream: int = 1):
        import jax
        import jax.numpy as jnp

        from jaxmia import rng
        from jaxmia.features import get_feature, jit_features, lanes, runner

        self.denoiser, self.images, self.names, self.cfg = denoiser, images, tuple(names), cfg
        self.bare = self.names[0] if self.names[0].startswith("@") else None
        batch = len(images)
        if batch % len(devices):
            raise click.BadParameter(f"batch {batch} is not a multiple of the {len(devices)} devices")
        self.placed = runner.place(denoiser, seed, batch, devices, per_device_batch=batch // len(devices))
        self.id_hash_host = rng.id_hashes(bc.bench_ids(batch))
        self.id_hash = jax.device_put(self.id_hash_host, self.placed.batch_sharding)
        self.x0 = jax.device_put(images, self.placed.batch_sharding)
        self.host_root = rng.root_key(seed)
        if self.bare:  # on the same mesh as the kernels
            t = jax.device_put(jnp.full((batch,), FORWARD_T, jnp.int32), self.placed.batch_sharding)
            self.args = (self.placed.denoiser, self.x0, t)
            program = runner.per_device_jit(bare_network(self.bare), self.placed.mesh, batched=(False, True, True))
            self.host_specs, self.has_device = [], True
        else:
            self.args = (self.placed.denoiser, self.x0, None, self.placed.root, self.id_hash)
            use_lanes = not while_loop
            program = jit_features(self.names, cfg, False, self.placed.mesh, lanes=use_lanes)
            self.host_specs = [get_feature(n) for n in self.names if get_feature(n).host_columns(cfg)]
            self.has_device = any(get_feature(n).device_columns(cfg, lanes=use_lanes) for n in self.names)
            # as extract() runs them: NO's lanes in a pool of the batch's slots (jaxmia.features.lanes)
            self.lane_stages = [get_feature(n).lane for n in self.names if use_lanes and get_feature(n).lane_columns(cfg)]
        # With a lane pool, each call streams ``stream`` batches (the same images under other ids, so
        # other draws) through it, as extract() does over a data set: a finished lane's slot is then
        # refilled from the next batch. The values returned are the first batch's.
        self.stream = int(stream) if getattr(self, "lane_stages", None) else 1
        ids = bc.bench_ids(batch * self.stream)
        self.chunks = [(ids[k * batch:(k + 1) * batch],
                        jax.device_put(rng.id_hashes(ids[k * batch:(k + 1) * batch]), self.placed.batch_sharding))
                       for k in range(self.stream)]
        self.images_per_call = batch * self.stream
        self.compiled, self.compile_s = None, 0.0
        self.lane_stats = None  # the last call's pool statistics (evaluations needed / computed)
        self.split_s = []
        if self.has_device:
            self.compiled, self.compile_s = bc.timed(lambda: program.lower(*self.args).compile())
        self.pools = []
        for stage in getattr(self, "lane_stages", []):
            pool = lanes.LanePool(self.placed, stage, cfg, False)
            _, seconds = bc.timed(lambda: pool.compile(self.x0, None, self.id_hash))
            self.compile_s += seconds
            self.pools.append(pool)

    def __call__(self):
        """The batch's columns as NumPy (device stage, then host stage, as ``extract()`` runs them);
        the network's output (NHWC) for the bare network. ``images_per_call`` images are computed."""
        import time

        import jax

        from jaxmia.features import lanes

        t0 = time.perf_counter()
        if self.bare:
            return np.asarray(self.compiled(*self.args), np.float64)
        outs = []
        if self.compiled is not None:  # dispatch every batch, then wait (as extract() does)
            outs = [self.compiled(self.placed.denoiser, self.x0, None, self.placed.root, h) for _, h in self.chunks]
        values = {k: np.asarray(v, np.float64) for k, v in (outs[0].items() if outs else ())}
        jax.block_until_ready(outs)
        t1 = time.perf_counter()
        first = self.chunks[0][0]
        for pool in self.pools:  # a fresh pool each call (the compiled programs are kept)
            fresh = lanes.LanePool(self.placed, pool.stage, self.cfg, False)
            fresh.jit = pool.jit
            got = {}
            for k, (ids, id_hash) in enumerate(self.chunks, start=1):
                fresh.submit(ids, np.ones(len(ids), bool), self.x0, None, id_hash)
                got.update(fresh.run(drain=k == len(self.chunks)))
            for c in pool.stage.columns(self.cfg):
                values[c] = np.array([got[i][c] for i in first], np.float64)
            self.lane_stats = dict(fresh.stats)
        if self.pools:  # seconds of the kernels' program and of the NO lanes, per call
            self.split_s.append((t1 - t0, time.perf_counter() - t1))
        for spec in self.host_specs:
            values.update(spec.host_fn(self.denoiser, self.images, None, self.host_root, self.id_hash_host, self.cfg))
        return values


def count_jaxmia(denoiser, images, names, cfg, devices, while_loop: bool = False) -> tuple[float, float]:
    """(forward, backward) UNet evaluations per image, counted while one batch executes."""
    import jax

    counter = bc.EvalCounter()
    JaxmiaRun(bc.counting_denoiser(denoiser, counter), images, names, cfg, devices, while_loop=while_loop)()
    jax.effects_barrier()
    return counter.forward / len(images), counter.backward / len(images)


def jaxmia_evals(target, images, names, cfg, devices, count_all: bool, memo: dict, lane_stats=None,
                 while_loop: bool = False, lane_images: int = 0) -> tuple[float, float]:
    """(forward, backward) UNet evaluations per image of a jaxmia signal set, as executed.

    ``count_all``: counted while the set executes once (one extra compile). Otherwise the registry's
    exact counts (fixed by the algorithm and checked by the feature tests) plus, for the
    data-dependent NO units (L-BFGS line searches): with the lane pool, the evaluations its calls
    computed (``lane_stats["slot_evals"]``: each one forward and one backward pass); in the
    while-loop form, a count of ``noise_opt`` run alone on the same batch (memoised per config).
    """
    from jaxmia.features.registry import plan_work

    if names[0].startswith("@"):
        return 1.0, float(names[0] == "@vjp")
    if count_all:
        return count_jaxmia(target.denoiser, images, names, cfg, devices, while_loop)
    units = plan_work(names, cfg)
    fwd = sum(c.forward for k, c in units.items() if not k.startswith("no_"))
    bwd = sum(c.backward for k, c in units.items() if not k.startswith("no_"))
    if any(k.startswith("no_") for k in units):
        if lane_stats is not None:
            n = lane_stats["slot_evals"] / lane_images
            return float(fwd + n), float(bwd + n)
        key = (cfg, while_loop)
        if key not in memo:
            memo[key] = count_jaxmia(target.denoiser, images, ("noise_opt",), cfg, devices, while_loop)
        fwd, bwd = fwd + memo[key][0], bwd + memo[key][1]
    return float(fwd), float(bwd)


def needed_evals(names, cfg, lane_stats, n_images: int) -> tuple[float, float]:
    """(forward, backward) per image that the maths needs: the registry's exact units plus the NO
    evaluations the lanes themselves made (no idle slot counted)."""
    from jaxmia.features.registry import plan_work

    units = plan_work(names, cfg)
    fwd = sum(c.forward for k, c in units.items() if not k.startswith("no_"))
    bwd = sum(c.backward for k, c in units.items() if not k.startswith("no_"))
    n = lane_stats["evals_needed"] / n_images if lane_stats else 0.0
    return float(fwd + n), float(bwd + n)


def network_bound(forward_ips: float, vjp_ips: float, needed) -> float:
    """Images/s the bare network allows for ``needed`` = (f, b) passes per image: a forward costs
    1/forward_ips, a backward 1/vjp_ips − 1/forward_ips (the unet_forward and unet_vjp rows)."""
    f, b = needed
    backward_s = max(1.0 / vjp_ips - 1.0 / forward_ips, 0.0)
    return 1.0 / (f / forward_ips + b * backward_s)


# ---- agreement ---------------------------------------------------------------------------------


def jaxmia_noise(n: int, shape: tuple, cfg) -> dict:
    """jaxmia's keyed draws of the first ``n`` bench ids, keyed like the PyTorch loop's noise."""
    out = {("dl", r): d for r, d in enumerate(bc.keyed_draws(n, "dl", cfg.dl_n_draws, shape))}
    for purpose in ("ml", "gm", "no"):
        out[(purpose, 0)] = bc.keyed_draws(n, purpose, 1, shape)[0]
    return out


def _names(cols) -> str:
    """Column names, each timestep family collapsed (ml_t000..ml_t900 -> ml_t*)."""
    out = []
    for c in cols:
        name = c[: c.index("_t") + 2] + "*" if c.startswith(("ml_t", "gm_t")) else c
        if name not in out:
            out.append(name)
    return ", ".join(out)


def agreement(label: str, jax_values, ref, no_reference) -> list[list]:
    """Rows (row, quantity, max diff, tolerance, verdict / note) of one row's jaxmia vs PyTorch values.

    The PyTorch loop was fed jaxmia's draws, so DL, ML and GM see the same noise; SecMI, PIA and PIAN
    use none. GM has no tolerance: a top-k mask flips where two gradient magnitudes tie to float
    precision. NO is compared with jaxmia's reference mode (``no_reference()``: host SciPy over the
    flat batch, like the loop), without a tolerance: two L-BFGS-B runs on float32 gradients that
    differ in the last bits need not take identical steps.
    """
    if not isinstance(ref, dict):  # the bare network: NCHW arrays
        diff = float(np.max(np.abs(np.transpose(jax_values, (0, 3, 1, 2)) - ref)))
        if label == "unet_forward":
            return [[label, "eps (max abs diff)", f"{diff:.1e}", f"{FORWARD_TOL:.0e}", bc.verdict(diff, FORWARD_TOL)]]
        diff /= float(np.max(np.abs(ref)))
        return [[label, "dx (max abs diff / max |dx|)", f"{diff:.1e}", f"{VJP_TOL:.0e}", bc.verdict(diff, VJP_TOL)]]
    rows = []
    exact = [c for c in ref if c in ("dl", "secmi", "pia", "pian") or c.startswith("ml_")]
    if exact:
        diff = max(float(np.max(bc.rel_diff(jax_values[c], ref[c]))) for c in exact)
        tol = DETERMINISTIC_TOL
        rows.append([label, _names(exact), f"{diff:.1e}", f"{tol:.0e}", bc.verdict(diff, tol)])
    gm = [c for c in ref if c.startswith("gm_")]
    if gm:
        d = np.stack([bc.rel_diff(jax_values[c], ref[c]) for c in gm])
        rows.append([label, _names(gm), f"{d.max():.1e}", "-",
                     f"median {np.median(d):.1e}; {np.mean(d < 1e-3):.0%} within 1e-3 (top-k ties may flip)"])
    for col in (c for c in ("no_loss", "no_delta_norm") if c in ref):
        d = bc.rel_diff(no_reference()[col], ref[col])
        rows.append([label, f"{col} (jaxmia no_mode=reference)", f"{d.max():.1e}", "-", f"median {np.median(d):.1e}"])
    return rows


# ---- the benchmark -----------------------------------------------------------------------------


class Bench:
    """One target and batch: the PyTorch model, the compiled jaxmia runs, the checks and the rows."""

    def __init__(self, target, session, count_all: bool, stream: int = 1):
        import torch_reference as tr

        self.target, self.session, self.count_all, self.stream = target, session, count_all, stream
        self.images = target.images
        self.tmodel = bc.torch_denoiser(target, session.torch_device)
        self.x0 = tr.to_nchw(self.images, session.torch_device)
        self.memo, self._noise, self._no_reference = {}, None, None
        self.agree = []

    def noise(self, cfg):
        import torch_reference as tr

        if self._noise is None:
            draws = jaxmia_noise(len(self.images), self.target.denoiser.sample_shape, cfg)
            self._noise = {k: tr.to_nchw(v, self.session.torch_device) for k, v in draws.items()}
        return self._noise

    def no_reference(self, cfg):
        """jaxmia's reference-mode NO on the batch (compiled once, on demand)."""
        from jaxmia.features import make_config

        if self._no_reference is None:
            ref_cfg = make_config(cfg, no_mode="reference", no_double_noise=cfg.no_double_noise)
            self._no_reference = JaxmiaRun(self.target.denoiser, self.images, ("noise_opt",), ref_cfg,
                                           self.session.devices)()
        return self._no_reference

    def torch_call(self, signal: str, cfg, noise=None):
        import torch_reference as tr

        if signal == "forward":
            return lambda: tr.forward(self.tmodel, self.x0, FORWARD_T)
        if signal == "vjp":
            return lambda: tr.input_gradient(self.tmodel, self.x0, FORWARD_T)
        return lambda: tr.run(self.tmodel, signal, self.x0, cfg, noise)

    def row(self, label: str, reps: int, check: bool) -> dict:
        """Compile, check against PyTorch (before timing), time, count."""
        from jaxmia.features import make_config

        names, preset, torch_signal = ROWS[label]
        cfg = make_config(preset) if preset else None
        while_loop = label in WHILE_LOOP_ROWS
        run = JaxmiaRun(self.target.denoiser, self.images, names, cfg, self.session.devices, while_loop=while_loop,
                        stream=self.stream)
        print(f"   {label}: compiled in {run.compile_s:.1f} s", flush=True)
        if check and torch_signal is not None:
            ref = self.torch_call(torch_signal, cfg, None if cfg is None else self.noise(cfg))()
            self.agree += agreement(label, run(), ref, lambda: self.no_reference(cfg))
        self.tmodel.reset_counts()
        fns = {"jaxmia": run}
        if torch_signal is not None:
            fns.update(bc.torch_thunks(self.torch_call(torch_signal, cfg), self.session.torch_threads))
        times = bc.time_calls(fns, reps)
        batch = len(self.images)
        t_ips, t_counts, threads = None, None, "-"
        if torch_signal is not None:  # counted over the warm-up and timed calls of every thread count
            calls = bc.n_calls(fns, times) * batch
            t_counts = (self.tmodel.forward / calls, self.tmodel.backward / calls)
            torch_label, torch_s = bc.fastest(times)
            t_ips, threads = batch / torch_s, torch_label.partition("@")[2] or "-"
        j_ips = run.images_per_call / bc.median(times["jaxmia"])
        print(f"   {label}: jaxmia {bc.fmt(j_ips)} img/s, torch {bc.fmt(t_ips)} img/s", flush=True)
        if run.split_s:
            kernels, no = (bc.median([s[i] for s in run.split_s]) for i in (0, 1))
            print(f"   {label}: per call, kernels' program {kernels:.2f} s, NO lanes {no:.2f} s "
                  f"({run.lane_stats['calls']} pool calls)", flush=True)
        j_counts = jaxmia_evals(self.target, self.images, names, cfg, self.session.devices, self.count_all, self.memo,
                                run.lane_stats, while_loop, run.images_per_call)
        needed = None
        if not names[0].startswith("@"):  # the while-loop form has no lane count: its executed passes
            needed = j_counts if while_loop else needed_evals(names, cfg, run.lane_stats, run.images_per_call)
        return dict(label=label, j_ips=j_ips, t_ips=t_ips, threads=threads, t_counts=t_counts, j_counts=j_counts,
                    compile_s=run.compile_s, needed=needed, lane_stats=run.lane_stats)


def bench_target(target, reps: int, rows: list[str], session, peak_tflops, count_all: bool, check: bool,
                 stream: int = 1) -> None:
    batch = len(target.images)
    flops = bc.forward_flops(target.denoiser, batch)
    bc.print_header(f"target {target.name}", {
        "network": target.describe(flops),
        "batch": f"{batch} images, {reps} timed repetition(s) per row after one warm-up call (median); rows with "
                 f"NO lanes stream {stream} batch(es) per call through the lane pool",
    })
    bench = Bench(target, session, count_all, stream)
    results = [bench.row(label, reps, check) for label in rows]
    print()
    if check:
        bc.print_table(["row", "quantity", "max diff", "tolerance", "verdict / note"], bench.agree,
                       title=f"agreement before timing, on the timed batch ({batch} images), jaxmia vs the PyTorch "
                             "loop fed jaxmia's draws (relative differences unless stated):")
    print_results(target, results, flops, peak_tflops, batch)
    print_bound(results)
    print(f"   load average at the end: {bc.load_average()}\n", flush=True)


def print_bound(results) -> None:
    """Each signal row's img/s against what the bare network's per-pass throughput allows for the
    passes the maths needs (issue 15's "≥ 90% of the network's bound"); needs both bare rows."""
    by = {r["label"]: r for r in results}
    if "unet_forward" not in by or "unet_vjp" not in by:
        return
    fwd, vjp = by["unet_forward"]["j_ips"], by["unet_vjp"]["j_ips"]
    rows = []
    for r in results:
        if r["needed"] is None:
            continue
        bound = network_bound(fwd, vjp, r["needed"])
        stats = r["lane_stats"]
        pool = "-" if not stats else f"{stats['evals_needed'] / stats['slot_evals']:.0%}"
        rows.append([r["label"], _evals(r["needed"]), bc.fmt(bound), bc.fmt(r["j_ips"]), f"{r['j_ips'] / bound:.0%}", pool])
    bc.print_table(["signal", "needed evals/img", "network bound img/s", "jaxmia img/s", "of bound", "NO pool use"], rows,
                   title=f"pipeline against the network's bound (forward {bc.fmt(fwd)} img/s, forward+backward "
                         f"{bc.fmt(vjp)} img/s, from the unet_forward and unet_vjp rows; needed = the registry's exact "
                         "passes + the NO evaluations the lanes made (cdi[while_loop]: its executed passes); pool use = needed / "
                         "computed NO evaluations)")


def _evals(counts) -> str:
    f, b = counts
    return f"{f:.3g}f+{b:.3g}b"


def print_results(target, results, flops, peak_tflops, batch) -> None:
    flops_col = bc.flops_header(peak_tflops)
    headers = ["signal", "jaxmia img/s", "evals/img", "evals/s", flops_col,
               "torch img/s", "thr", "evals/img", "evals/s", flops_col, "ratio", "compile s"]
    rows = []
    for r in results:
        def rates(ips, counts):
            if ips is None:
                return "-", "-", "-"
            f, b = counts
            return _evals(counts), bc.fmt(ips * (f + b)), bc.flops_cell(bc.flop_rate(ips * f, ips * b, flops),
                                                                        peak_tflops)
        rows.append([r["label"], bc.fmt(r["j_ips"]), *rates(r["j_ips"], r["j_counts"]),
                     bc.fmt(r["t_ips"]), r["threads"], *rates(r["t_ips"], r["t_counts"]),
                     bc.ratio_cell(r["j_ips"], r["t_ips"]), f"{r['compile_s']:.1f}"])
    bc.print_table(headers, rows, title=(
        f"{target.name}: throughput per signal, batch {batch} (ratio = jaxmia img/s / torch img/s; evals = UNet "
        "forward (f) + backward (b) passes; FLOP rate = model FLOPs x (f + 2b)/s; thr = PyTorch threads)"))


def _rows(text: str) -> list[str]:
    rows = list(ROWS) if text.strip() == "all" else [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        raise click.BadParameter(f"unknown row(s) {unknown}; known: {', '.join(ROWS)} or 'all'", param_hint="--rows")
    return rows


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", default="demo", show_default=True, help=bc.TARGET_HELP)
@click.option("--batch", default=64, show_default=True, help="images per compiled call (a multiple of the devices)")
@click.option("--reps", default=3, show_default=True, help="timed repetitions per row")
@click.option("--rows", default=",".join(DEFAULT_ROWS), show_default=True,
              help=f"comma-separated rows or 'all': {', '.join(ROWS)}")
@click.option("--count-all/--count-inexact", default=False, show_default=True,
              help="count every jaxmia row's UNet evaluations as they execute (one extra compile per row), or "
                   "only the data-dependent NO part (the rest from the registry)")
@click.option("--check/--no-check", default=True, show_default=True,
              help="compare every row's jaxmia values with PyTorch's on the timed batch before timing it")
@click.option("--stream", default=4, show_default=True, type=click.IntRange(min=1),
              help="batches per timed call of rows with a NO lane pool (cdi, noise_opt), the same images under "
                   "other ids, as extract() streams a data set: finished lanes are refilled from the next batch")
@bc.common_options
def main(target, batch, reps, rows, count_all, check, stream, cpu_devices, torch_threads, torch_device, precision,
         peak_tflops):
    row_list = _rows(rows)
    session = bc.start("bench_features", cpu_devices, torch_threads, torch_device, precision)
    bench_target(bc.load_target(target, batch), reps, row_list, session, peak_tflops, count_all, check, stream)


if __name__ == "__main__":
    main()
