"""Device memory of feature extraction, from XLA's compiled memory analysis (no device, no weights).

``extract()`` runs, per data-axis device, the kernels' program on ``per_device_batch`` rows and,
for noise optimisation, the lane pool's three programs on as many slots (jaxmia.features.lanes).
This module lowers and compiles those same per-device programs for abstract inputs
(``jax.ShapeDtypeStruct`` parameters from ``jax.eval_shape``: nothing is allocated or computed)
and reads ``compiled.memory_analysis()``:

    program bytes = arguments + outputs − aliased (donated) + temporaries + generated code

and the device needs, at the peak, the larger of

    kernels' program + lane pool + 2 chunk states     (the pool and up to two partly used chunks stay
    advance program + 2 chunk states                    resident while the other program runs)

(:func:`extraction_memory`). The analysis is XLA's buffer assignment for the backend it compiles
for: on this CPU, an estimate of an accelerator's (whose fusions differ; parameters, inputs and the
pool are exact byte counts).

Micro-batching (:func:`fit_per_device_batch`): when a requested ``per_device_batch`` needs more than
a device has (``device.memory_stats()["bytes_limit"]`` where the backend reports it, or a limit the
caller gives), ``extract()`` runs the largest per-device batch that fits instead, several calls per
chunk, and says so. Bits: the features are those of the per-device batch that ran; it is the one
recorded in the run's identity (``per_device_batch``), so a resumed or merged run compares like
with like, and a run on a device where the requested batch fits gives the requested batch's bits
(which agree with the smaller batch's to float rounding; jaxmia/runtime.py's docstring).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

GIB = 1024 ** 3
GB = 1000 ** 3

# diffusers' configs of the real-size models (facebook/DiT-XL-2-256 transformer/config.json;
# runwayml/stable-diffusion-v1-5 unet/config.json), for the memory table.
DIT_XL_2_256 = {"_class_name": "DiTTransformer2DModel", "num_attention_heads": 16, "attention_head_dim": 72,
                "in_channels": 4, "out_channels": 8, "num_layers": 28, "sample_size": 32, "patch_size": 2,
                "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate"}
SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
REAL_SIZE_MODELS = {"dit-xl-2-256": (DIT_XL_2_256, None), "sd-1.5-unet": (SD15_UNET, (77, 768))}


def abstract_denoiser(config: Mapping, *, dtype=jnp.float32, context_shape=None, source: str = "config"):
    """A :class:`~jaxmia.models.Denoiser` whose parameters are ``ShapeDtypeStruct`` leaves in ``dtype``.

    With ``dtype`` bfloat16 the network runs on bfloat16 inputs and parameters (its output is cast
    back to float32 for the features); layers that compute in float32 by design (attention softmax,
    time embeddings) stay so. ``context_shape``: (L, D) of a text-conditional model's embeddings.
    Returns (denoiser, cond_shape or None).
    """
    from jaxmia import schedule as sched
    from jaxmia.models import Denoiser, build_model

    spec = build_model(config, source=source)
    params = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, jnp.float32), spec.abstract_params)
    learned_sigma = spec.out_channels == 2 * spec.sample_shape[-1]
    cond_shape = {"class": (), "text": tuple(context_shape) if context_shape else None}.get(spec.cond_kind)
    if spec.cond_kind == "text" and cond_shape is None:
        raise ValueError(f"{source}: a text-conditional model needs context_shape (L, D)")
    denoiser = Denoiser(params=params, schedule=sched.make_schedule(), apply_fn=spec.apply_fn,
                        sample_shape=tuple(spec.sample_shape), cond_kind=spec.cond_kind, learned_sigma=learned_sigma,
                        x0_clip=None, digest="abstract")
    if jnp.dtype(dtype) != jnp.float32:
        denoiser = bf16_denoiser(denoiser, dtype)
    return denoiser, (None if spec.cond_kind == "none" else cond_shape)


def bf16_denoiser(denoiser, dtype=jnp.bfloat16):
    """The denoiser computing in ``dtype``: its float parameters cast (arrays or ShapeDtypeStructs), the
    network's input (and float conditions) cast on the way in, its output cast back to float32, so
    the features' own arithmetic stays float32. Layers written to compute in float32 (attention's
    softmax, time embeddings) stay so."""
    def cast(leaf):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, dtype)
        return jnp.asarray(leaf, dtype)

    inner = denoiser.apply_fn

    def apply_fn(p, x, t, cond):
        if cond is not None and jnp.issubdtype(cond.dtype, jnp.floating):
            cond = cond.astype(dtype)
        return inner(p, x.astype(dtype), t, cond).astype(jnp.float32)

    return denoiser.replace(params=jax.tree_util.tree_map(cast, denoiser.params), apply_fn=apply_fn,
                            digest=f"{denoiser.digest}+{jnp.dtype(dtype).name}")


def program_bytes(compiled) -> dict:
    """Bytes of one compiled program (``compiled.memory_analysis()``), and their total."""
    m = compiled.memory_analysis()
    out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
    return out


def _abstract(shape, dtype, sharding=None):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def _tree_bytes(tree) -> int:
    return int(sum(math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass(frozen=True)
class ExtractionMemory:
    """Per-device bytes of one feature set at one per-device batch (see the module docstring)."""

    per_device_batch: int
    kernels: Optional[dict]  # program_bytes of the kernels' program (None: no such columns)
    advance: Optional[dict]  # program_bytes of the lane pool's advance program (None: no lanes)
    pool_state: int  # bytes of the pool's lane states (one chunk's worth)

    @property
    def need(self) -> int:
        resident = 2 * self.pool_state
        kernels = 0 if self.kernels is None else self.kernels["total"] + self.pool_state + resident
        advance = 0 if self.advance is None else self.advance["total"] + resident
        return max(kernels, advance)


def extraction_memory(denoiser, names, cfg, per_device_batch: int, *, cond_shape=None, mesh=None) -> ExtractionMemory:
    """Compiles ``extract()``'s programs for ``per_device_batch`` rows per data-axis device of ``mesh``
    (default: a mesh of the first CPU device) for abstract inputs, and returns their per-device memory.

    With the run's own mesh and denoiser (``extract()`` does so), these are the programs the run
    executes, so with the persistent compile cache on (jaxmia.compile_cache) the run loads them
    instead of compiling them again.
    """
    from jaxmia import rng
    from jaxmia.features import get_feature, jit_features, lanes, runner
    from jaxmia.features.registry import parse_features

    names = parse_features(names)
    mesh = mesh if mesh is not None else runner.data_mesh(jax.devices("cpu")[:1])
    batched = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(runner.DATA_AXIS))
    b = int(per_device_batch) * int(mesh.shape[runner.DATA_AXIS])
    with_cond = cond_shape is not None
    x0 = _abstract((b, *denoiser.sample_shape), jnp.float32, batched)
    cond = None
    if with_cond:
        cond = _abstract((b, *cond_shape), jnp.int32 if cond_shape == () else jnp.float32, batched)
    root = jax.eval_shape(lambda: rng.root_key(0))
    id_hash = _abstract((b, 2), jnp.uint32, batched)
    kernels = None
    if any(get_feature(n).device_columns(cfg, lanes=True) for n in names):
        program = jit_features(tuple(names), cfg, with_cond, mesh, lanes=True)
        kernels = program_bytes(program.lower(denoiser, x0, cond, root, id_hash).compile())
    advance, pool_state = None, 0
    stages = [get_feature(n).lane for n in names if get_feature(n).lane_columns(cfg)]
    for stage in stages:
        jit = lanes.programs(stage, cfg, with_cond, mesh)
        state = jax.eval_shape(jit["init"], denoiser, x0, cond, root, id_hash)
        state = jax.tree_util.tree_map(lambda s: _abstract(s.shape, s.dtype, batched), state)
        flags = _abstract((b,), jnp.bool_, batched)
        advance = program_bytes(jit["advance"].lower(denoiser, state, flags).compile())
        pool_state += _tree_bytes(state) // int(mesh.shape[runner.DATA_AXIS])
    return ExtractionMemory(int(per_device_batch), kernels, advance, pool_state)


def device_limit(device=None) -> Optional[int]:
    """Bytes a device can hold (``memory_stats()["bytes_limit"]``), None where the backend does not say (CPU)."""
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        return None
    if not stats or "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"])


def largest_batch(need: Callable[[int], int], limit: int, *, start: int = 1, upper: int = 4096) -> tuple[int, dict]:
    """The largest per-device batch B ≤ ``upper`` with ``need(B) ≤ limit`` (0 if even ``start`` does not
    fit), from as few compiles as possible: a straight line through need(start) and need(2·start)
    predicts B, then measured values correct it (need is close to affine in B: fixed parameters plus
    per-row activations). Returns (B, {B: bytes measured}).
    """
    seen: dict = {}

    def at(b):
        if b not in seen:
            seen[b] = int(need(b))
        return seen[b]

    if at(start) > limit:
        return 0, seen
    slope = max((at(2 * start) - at(start)) / start, 1.0)
    guess = int(min(upper, max(start, start + (limit - at(start)) // slope)))
    lo, hi = start, upper + 1  # need(lo) fits; hi does not (or is past the range)
    if at(guess) <= limit:
        lo, step = guess, 1
        while lo + step < hi and at(lo + step) <= limit:  # the line was pessimistic: walk up, doubling
            lo, step = lo + step, 2 * step
        hi = min(hi, lo + step)
    else:
        hi = guess
    while hi - lo > 1:  # bisection between a fitting and a failing batch
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid) <= limit else (lo, mid)
    return lo, seen


def fit_per_device_batch(requested: int, need: Callable[[int], int], limit: Optional[int]) -> tuple[int, Optional[str]]:
    """``requested`` if it fits (or nothing is known), else the largest batch that does, with a message.

    The smaller batch is chosen among the divisors of ``requested`` (micro-batches: a chunk of
    ``requested`` rows per device runs as ``requested / B`` calls of B rows), so the steps and
    progress reports stay as asked.
    """
    if limit is None:
        return requested, None
    have = need(requested)
    if have <= limit:
        return requested, None
    for b in sorted((d for d in range(1, requested) if requested % d == 0), reverse=True):
        got = need(b)
        if got <= limit:
            return b, (f"per_device_batch {requested} needs {have / GIB:.1f} GiB per device, more than the "
                       f"{limit / GIB:.1f} GiB available; running {requested // b} micro-batches of {b} "
                       f"({got / GIB:.1f} GiB; the features are those of per_device_batch {b})")
    raise ValueError(f"per_device_batch {requested}: even 1 row needs {need(1) / GIB:.1f} GiB per device, more than "
                     f"the {limit / GIB:.1f} GiB available")


def table_rows(models=("dit-xl-2-256", "sd-1.5-unet"), capacities_gb=(80, 141), dtype=jnp.bfloat16,
               features=("cdi",), cfg=None, headroom: float = 0.9):
    """Rows (model, device GB, largest per-device batch, GiB at that batch, GiB per extra row) for the
    real-size models, each capacity taken as ``headroom`` × its GB (the rest for XLA's own workspace)."""
    from jaxmia.features import make_config

    cfg = cfg or make_config("cdi")
    rows = []
    for name in models:
        config, context = REAL_SIZE_MODELS[name]
        denoiser, cond_shape = abstract_denoiser(config, dtype=dtype, context_shape=context, source=name)
        memo: dict = {}

        def need(b):
            if b not in memo:
                memo[b] = extraction_memory(denoiser, features, cfg, b, cond_shape=cond_shape)
            return memo[b].need

        for gb in capacities_gb:
            limit = int(gb * GB * headroom)
            best, seen = largest_batch(need, limit)
            per_row = (need(2) - need(1))
            rows.append({"model": name, "device_gb": gb, "largest_per_device_batch": best,
                         "need_gib": need(best) / GIB if best else None, "per_row_gib": per_row / GIB,
                         "fixed_gib": (need(1) - per_row) / GIB, "compiled_batches": sorted(seen)})
    return rows


def format_bytes(n: Optional[float]) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


