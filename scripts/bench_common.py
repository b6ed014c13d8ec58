"""Shared pieces of the benchmark scripts (bench_features.py, bench_sweeps.py, bench_drc.py).

Not a benchmark itself. It holds: the common command-line options and the session set-up (host CPU
devices must be configured before JAX starts, PyTorch thread counts, matmul precision), the two
targets (the bundled demo target and a ddpm-cifar10-32-shaped UNet with random weights), the same
weights as a diffusers PyTorch ``UNet2DModel``, keyed noise draws (so that PyTorch can be fed
jaxmia's noise in the agreement checks), the model FLOP count from XLA's cost analysis, the
fraction of a device's peak, a denoiser that counts its own evaluations, timing and tables.

Conventions of every script: the agreement check runs before timing; every timed thunk gets one
untimed warm-up call; repetitions are interleaved (jaxmia, torch, jaxmia, torch, ...) so that a
change of the machine's load hits both sides alike; the figures are medians. On a CPU host PyTorch
is timed at each of ``--torch-threads`` (default 1 and 2) and the faster count is the baseline: on a
loaded 2-core machine PyTorch's OpenMP barriers make 2 threads up to 10x slower than 1.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

# google/ddpm-cifar10-32's UNet (docs/methods/models.md §6): 35.7M parameters, attention at 16x16.
CIFAR_UNET_CONFIG = {
    "_class_name": "UNet2DModel",
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 256, 256],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "attention_head_dim": None,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "mid_block_scale_factor": 1,
}
TARGETS = ("demo", "rgb", "cifar")
TARGET_HELP = ("demo: the bundled 0.28M-parameter 8x8 target; rgb: the bundled 32x32x3 target; cifar: a "
               "ddpm-cifar10-32-shaped UNet (35.7M, random weights); or the path of any UNet2DModel folder "
               "(as diffusers' save_pretrained writes it, with its scheduler)")
PRECISIONS = ("default", "highest")


# ---- command line and session ------------------------------------------------------------------


def common_options(fn):
    """The options every benchmark script takes (devices, PyTorch, precision, peak)."""
    import click

    options = [
        click.option("--cpu-devices", default="auto", show_default=True, metavar="N|auto",
                     help="host CPU devices for jaxmia's data mesh, as the jaxmia CLI's --cpu-devices "
                          "(auto = one per usable core; ignored on GPU hosts)"),
        click.option("--torch-threads", default="1,2", show_default=True,
                     help="PyTorch CPU thread counts to time; the fastest is the baseline (ignored on cuda)"),
        click.option("--torch-device", default="auto", show_default=True, help="auto, cpu or cuda"),
        click.option("--precision", type=click.Choice(PRECISIONS), default="default", show_default=True,
                     help="float32 conv/matmul precision on both sides: 'default' = each framework's default "
                          "(on NVIDIA Ampere+ both use TF32 tensor cores), 'highest' = true float32"),
        click.option("--peak-tflops", type=float, default=None,
                     help="the device's peak TFLOP/s at --precision, for the fraction-of-peak column "
                          "(H100/H200 SXM: 495 TF32 dense, 67 FP32)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@dataclass
class Session:
    devices: list
    torch_device: str
    torch_threads: tuple
    info: dict


def start(title: str, cpu_devices, torch_threads: str, torch_device: str, precision: str) -> Session:
    """Devices, PyTorch and precision set up; prints and returns the machine description."""
    devices = setup_devices(cpu_devices)
    device = torch_setup(torch_device, precision)
    threads = tuple(int(t) for t in str(torch_threads).split(",") if t.strip()) if device == "cpu" else ()
    info = machine_info(devices)
    info["torch"] = f"{device}, threads {', '.join(map(str, threads))} (fastest is the baseline)" if threads else device
    info["precision"] = precision
    print_header(title, info)
    return Session(devices, device, threads, info)


def setup_devices(cpu_devices) -> list:
    """Splits the host CPU into ``cpu_devices`` JAX devices (``"auto"``: one per usable core), as the
    jaxmia CLI does (``jaxmia.host_devices.configure``; must run before JAX's first operation).

    XLA:CPU runs a convolution on one thread, so one device per core is what uses the host
    (docs/benchmarks.md §10). On a GPU host the CPU count is irrelevant: the returned devices are
    the accelerators.
    """
    import jax

    from jaxmia import host_devices

    host_devices.configure(cpu_devices)
    return jax.devices()


def torch_setup(device: str, precision: str) -> str:
    """``device="auto"`` picks cuda when available; sets both frameworks' float32 precision.

    "default": JAX's default, which on NVIDIA Ampere+ computes float32 convolutions and matmuls in
    TF32, so PyTorch gets TF32 too (its convolutions already default to it, its matmuls do not).
    "highest": true float32 everywhere.
    """
    import jax
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tf32 = precision == "default"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    return device


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    load1, load5, load15 = os.getloadavg()
    return f"{load1:.2f}, {load5:.2f}, {load15:.2f} (1, 5, 15 min)"


def machine_info(devices) -> dict:
    import jax
    import torch

    return {
        "jax devices": f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})",
        "host": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.machine()}",
        "load average": load_average(),
        "versions": f"jax {jax.__version__}, torch {torch.__version__}",
    }


def print_header(title: str, info: dict) -> None:
    print(f"== {title}")
    for k, v in info.items():
        print(f"   {k}: {v}")
    print(flush=True)


# ---- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    denoiser: object  # jaxmia Denoiser
    config: dict  # the diffusers UNet2DModel config (resolved)
    images: np.ndarray  # (N, H, W, C) float32 in [-1, 1]
    n_params: int

    def describe(self, flops: float) -> str:
        return (f"UNet2DModel {list(self.config['block_out_channels'])}, {self.n_params / 1e6:.2f}M params, "
                f"input {tuple(self.denoiser.sample_shape)}, {flops / 1e6:.1f} MFLOP per forward "
                "(XLA cost analysis)")


def _n_params(params) -> int:
    import jax

    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def demo_target(n_images: int, name: str = "demo") -> Target:
    """A bundled target and the first ``n_images`` of its images: ``demo`` (UNet2DModel on 8x8x1
    digits) or ``rgb`` (the same UNet on 32x32x3 photo patches, jaxmia/assets/rgb_target)."""
    from jaxmia.data import load_dataset
    from jaxmia.models import load_denoiser
    from jaxmia.models.layout import BUNDLED_TARGETS
    from jaxmia.fileio import read_json

    folder = BUNDLED_TARGETS[name]
    if not (folder / "recipe.json").is_file():
        raise FileNotFoundError(f"{folder}/recipe.json: bundled target {name!r} not trained yet")
    denoiser = load_denoiser(folder)
    config = read_json(folder / "unet" / "config.json")
    images = load_dataset(f"{name}:all").images
    reps = -(-n_images // len(images))
    images = np.concatenate([images] * reps)[:n_images]
    return Target(name, denoiser, config, np.ascontiguousarray(images), _n_params(denoiser.params))


def cifar_target(n_images: int, seed: int = 0) -> Target:
    """A ddpm-cifar10-32-shaped UNet (35.7M parameters) with random PyTorch-style weights, and random
    images in [-1, 1]. The timings do not depend on the weights' values."""
    from jaxmia import schedule as sched
    from jaxmia.models import Denoiser, build_model, init_params

    spec = build_model(CIFAR_UNET_CONFIG, source="ddpm-cifar10-32 config")
    params = init_params(spec.module, seed)
    denoiser = Denoiser(params=params, schedule=sched.make_schedule("linear", 1000, 1e-4, 0.02),
                        apply_fn=spec.apply_fn, sample_shape=tuple(spec.sample_shape), digest="random-cifar-shape")
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(0.0, 0.5, (n_images, 32, 32, 3)), -1, 1).astype(np.float32)
    return Target("cifar", denoiser, spec.config.to_diffusers(), images, _n_params(params))


def folder_target(path, n_images: int, seed: int = 0) -> Target:
    """Any pixel-space, unconditional ``UNet2DModel`` folder (as diffusers' ``save_pretrained``
    writes it, with its scheduler; every layout ``jaxmia.models.load_denoiser`` reads) and random
    images in [-1, 1] of its sample shape. PyTorch gets the same weights as a diffusers
    ``UNet2DModel``; other classes have no PyTorch baseline here and are refused by name."""
    from pathlib import Path

    from jaxmia.fileio import read_json
    from jaxmia.models import load_denoiser
    from jaxmia.models.loading import resolve

    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such model folder (or give a bundled target: {', '.join(TARGETS)})")
    layout = resolve(folder)
    config = read_json(layout.model_dir / "config.json", what="model config")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel" or layout.encoder_dir is not None:
        raise ValueError(f"{layout.model_dir}: the PyTorch baseline takes a pixel-space UNet2DModel, this folder "
                         f"holds {config.get('_class_name')!r}{' with a latent autoencoder' if layout.encoder_dir else ''}")
    denoiser = load_denoiser(folder)
    if denoiser.cond_kind != "none":
        raise ValueError(f"{layout.model_dir}: the benchmark rows are unconditional; this model takes "
                         f"{denoiser.cond_kind} conditioning")
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(0.0, 0.5, (n_images, *denoiser.sample_shape)), -1, 1).astype(np.float32)
    return Target(folder.name or str(folder), denoiser, config, images, _n_params(denoiser.params))


def load_target(name: str, n_images: int) -> Target:
    """A bundled target by name (``demo``, ``rgb``, ``cifar``) or a model folder's path."""
    if name in ("demo", "rgb"):
        return demo_target(n_images, name)
    if name == "cifar":
        return cifar_target(n_images)
    return folder_target(name, n_images)


def torch_unet(target: Target, device: str):
    """diffusers' PyTorch UNet2DModel with the target's weights (``flax_to_torch`` + ``load_state_dict``)."""
    import diffusers
    import torch

    from jaxmia.models import flax_to_torch

    model = diffusers.UNet2DModel.from_config(target.config)  # tolerates keys of other diffusers versions
    state = {k: torch.from_numpy(np.array(v)) for k, v in flax_to_torch(target.denoiser.params).items()}
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)


def torch_denoiser(target: Target, device: str):
    """The PyTorch baseline's ε_θ (scripts/torch_reference.py) on the target's weights and schedule."""
    import torch_reference as tr

    if target.denoiser.schedule.prediction_type != "epsilon":
        raise ValueError(f"the PyTorch baseline assumes ε-prediction, the target predicts "
                         f"{target.denoiser.schedule.prediction_type!r}")
    return tr.TorchDenoiser(torch_unet(target, device), target.denoiser.schedule.alphas_cumprod, device)


# ---- keyed draws -------------------------------------------------------------------------------


def bench_ids(n: int) -> list[str]:
    """The image ids every benchmark uses (the keys of all jaxmia draws)."""
    return [f"bench-{i:05d}" for i in range(n)]


def keyed_draws(n_images: int, purpose: str, reps: int, shape: tuple, seed: int = 0) -> np.ndarray:
    """(reps, n_images, *shape) standard normals, draw ``r`` of image ``i`` keyed exactly as jaxmia's
    kernels key it: ``SampleKey(root_key(seed), id_hash(bench_ids[i])).normal(purpose, r, shape)``."""
    import jax
    import jax.numpy as jnp

    from jaxmia import rng
    from jaxmia.features import SampleKey

    root = rng.root_key(seed)
    hashes = jnp.asarray(rng.id_hashes(bench_ids(n_images)))

    def one(r, h):
        return SampleKey(root, h).normal(purpose, r, tuple(shape))

    draws = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))(
        jnp.arange(reps, dtype=jnp.uint32), hashes)
    return np.asarray(draws)


# ---- FLOPs and the fraction of peak ------------------------------------------------------------


def forward_flops(denoiser, batch: int) -> float:
    """FLOPs of ONE network evaluation (XLA's cost analysis of a batch-``batch`` forward, / batch)."""
    import jax
    import jax.numpy as jnp

    h, w, c = denoiser.sample_shape
    x = jax.ShapeDtypeStruct((batch, h, w, c), jnp.float32)
    t = jax.ShapeDtypeStruct((batch,), jnp.int32)
    fn = jax.jit(lambda params, x, t: denoiser.apply_fn(params, x, t, None))
    cost = fn.lower(denoiser.params, x, t).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per computation
        cost = cost[0]
    return float(cost["flops"]) / batch


def flop_rate(forward_per_s: float, backward_per_s: float, flops_per_eval: float) -> float:
    """Model FLOP/s of a run: FLOPs per forward × (forward + 2 × backward evaluations) per second.

    A backward pass (vector-Jacobian product) costs about 2 forward passes; with no backward this is
    the issue's "model FLOPs × evaluations/s".
    """
    return (forward_per_s + 2.0 * backward_per_s) * flops_per_eval


def peak_fraction(flop_per_s: float, peak_tflops: Optional[float]) -> Optional[float]:
    """``flop_per_s`` as a fraction of a peak given in TFLOP/s (None without a peak)."""
    if not peak_tflops:
        return None
    if peak_tflops < 0:
        raise ValueError(f"peak_tflops must be positive, got {peak_tflops}")
    return flop_per_s / (peak_tflops * 1e12)


def flops_cell(flop_per_s: float, peak_tflops: Optional[float]) -> str:
    """A table cell: GFLOP/s, and the percentage of peak when a peak is given."""
    cell = fmt(flop_per_s / 1e9)
    frac = peak_fraction(flop_per_s, peak_tflops)
    return cell if frac is None else f"{cell} ({100 * frac:.2g}%)"


def flops_header(peak_tflops: Optional[float]) -> str:
    return "GFLOP/s" + (f" (% of {peak_tflops:g} TF)" if peak_tflops else "")


# ---- counting network evaluations --------------------------------------------------------------


class EvalCounter:
    """Counts network evaluations per example as they execute (not as they are traced); thread-safe
    (each device's callbacks run on their own thread)."""

    def __init__(self):
        self.forward = 0
        self.backward = 0
        self._lock = threading.Lock()

    def add(self, kind: str, n: int) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + int(n))


def counting_denoiser(denoiser, counter: EvalCounter):
    """The denoiser with an ``apply_fn`` that reports every execution to ``counter``.

    A ``jax.debug.callback`` fires once per example and call (under vmap, once per lane; in a
    batched ``while_loop``, for every lane of every iteration, i.e. what is really computed), and a
    ``custom_vjp`` counts backward passes. For counting only: the backward rule recomputes the
    forward pass, so never time it.
    """
    import jax

    apply_fn = denoiser.apply_fn

    def bump(kind):
        def callback(x):
            counter.add(kind, np.shape(x)[0])
        return callback

    def make(cond):
        @jax.custom_vjp
        def counted(params, x, t):
            jax.debug.callback(bump("forward"), x)
            return apply_fn(params, x, t, cond)

        def fwd(params, x, t):
            jax.debug.callback(bump("forward"), x)
            return apply_fn(params, x, t, cond), (params, x, t)

        def bwd(res, g):
            params, x, t = res
            jax.debug.callback(bump("backward"), x)
            _, vjp = jax.vjp(lambda p, x: apply_fn(p, x, t, cond), params, x)
            dp, dx = vjp(g)
            return dp, dx, None

        counted.defvjp(fwd, bwd)
        return counted

    def counted_apply(params, x, t, cond):
        return make(cond)(params, x, t)

    return denoiser.replace(apply_fn=counted_apply)


# ---- timing ------------------------------------------------------------------------------------


def time_calls(fns: dict[str, Callable[[], object]], reps: int, drop_factor: float = 2.0) -> dict[str, list[float]]:
    """Wall seconds of each thunk, ``reps`` times, interleaved (a, b, a, b, ...) so that a change of
    the machine's load hits all of them alike, after one untimed warm-up call of each (its seconds
    are printed: a warm-up far slower than the median reveals a recompile). Thunks must block until
    their result is ready.

    Thunks labelled ``name@N`` are one computation at N threads: those whose warm-up took more than
    ``drop_factor`` times the fastest variant's are not timed (on a loaded 2-core machine PyTorch at
    2 threads can be 10x slower than at 1, and timing it would only waste minutes).
    """
    first = {k: timed(fn)[1] for k, fn in fns.items()}
    print("   warm-up s: " + ", ".join(f"{k} {v:.2f}" for k, v in first.items()), flush=True)
    variants = [k for k in fns if "@" in k]
    dropped = [k for k in variants if first[k] > drop_factor * min(first[v] for v in variants)]
    if dropped:
        print(f"   not timed (warm-up > {drop_factor:g}x the fastest thread count's): {', '.join(dropped)}", flush=True)
    fns = {k: fn for k, fn in fns.items() if k not in dropped}
    out = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - start)
    return out


def n_calls(fns: dict, times: dict, prefix: str = "torch") -> int:
    """Calls :func:`time_calls` made of the thunks labelled ``prefix*`` (warm-ups included)."""
    return sum(1 for k in fns if k.startswith(prefix)) + sum(len(v) for k, v in times.items() if k.startswith(prefix))


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def torch_thunks(fn: Callable[[], object], threads: tuple) -> dict[str, Callable[[], object]]:
    """``fn`` at each PyTorch CPU thread count (labels ``torch@N``); on a GPU, ``fn`` as ``torch``."""
    import torch

    if not threads:
        return {"torch": fn}

    def at(n):
        def thunk():
            torch.set_num_threads(n)
            return fn()
        return thunk

    return {f"torch@{n}": at(n) for n in threads}


def fastest(times: dict[str, list[float]], prefix: str = "torch") -> tuple[str, float]:
    """(label, median seconds) of the fastest of the thunks whose label starts with ``prefix``."""
    labels = [k for k in times if k.startswith(prefix)]
    if not labels:
        raise ValueError(f"no timings labelled {prefix}*")
    best = min(labels, key=lambda k: median(times[k]))
    return best, median(times[best])


def median(xs) -> float:
    return float(statistics.median(xs))


# ---- numbers and tables ------------------------------------------------------------------------


def rel_diff(a, b) -> np.ndarray:
    """|a − b| / max(|b|, 1e-12), elementwise, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-12)


def verdict(diff: float, tol: Optional[float]) -> str:
    if tol is None:
        return "-"
    return "ok" if diff <= tol else "DIFFERS"


def fmt(x: Optional[float], digits: int = 3) -> str:
    """3 significant digits; thousands separators from 1,000; '-' for None."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def ratio_cell(ours: Optional[float], baseline: Optional[float]) -> str:
    if ours is None or not baseline:
        return "-"
    return f"{ours / baseline:.2f}x"


def format_table(headers: list[str], rows: list[list]) -> list[str]:
    """Lines of a plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    if any(len(r) != len(headers) for r in cells):
        raise ValueError("every row needs one cell per header")
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def print_table(headers: list[str], rows: list[list], title: str = "") -> None:
    if title:
        print(title)
    print("\n".join(format_table(headers, rows)))
    print(flush=True)
