"""A subprocess of the distributed tests (not a test module): one JAX process on fake CPU devices.

    python distributed_worker.py extract DATA OUT --mesh D,M [--mesh D,M ...] [--per-device-batch B]
                                         # writes OUT-DxM.npz per mesh; parameters split on any model axis
    python distributed_worker.py shard DATA OUT --coordinator H:P --num-processes P --process-id K
                                       [--exit-after-batches N]
    python distributed_worker.py cli ARGS...     # `jaxmia ARGS...` with MODEL loaded as the tiny test denoiser

The device count comes from XLA_FLAGS, set by the parent. ``--exit-after-batches N`` ends the
process with ``os._exit(17)`` right after its N-th batch reached its partial file: a hard death,
no cleanup, as a preempted worker.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

FEATURES, SEED = "loss,pia", 3
EXIT_CODE = 17


def _pair(text):
    return tuple(int(v) for v in text.split(","))


def main(argv):
    from features_util import tiny_denoiser

    if argv and argv[0] == "cli":
        import jaxmia.models
        from jaxmia.cli import main as cli_main

        jaxmia.models.load_denoiser = lambda path, **kw: tiny_denoiser()  # the CLI imports it at call time
        cli_main(argv[1:], prog_name="jaxmia")
        return

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("extract", "shard"))
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--mesh", action="append", default=[])
    parser.add_argument("--per-device-batch", type=int, default=1)
    parser.add_argument("--shard-min-size", type=int, default=0)
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--exit-after-batches", type=int)
    args = parser.parse_args(argv)

    from jaxmia import distributed
    from jaxmia.data import load_dataset
    from jaxmia.features import extract

    if args.mode == "shard":
        layout = distributed.initialize(args.coordinator, args.num_processes, args.process_id, timeout_s=60)
    data = load_dataset(args.data)
    if args.mode == "extract":
        for mesh in map(_pair, args.mesh):
            out = args.out.replace(".npz", f"-{mesh[0]}x{mesh[1]}.npz")
            table = extract(tiny_denoiser(), data, FEATURES, out=out, seed=SEED, progress=False,
                            per_device_batch=args.per_device_batch, mesh_shape=mesh, shard_min_size=args.shard_min_size)
            print(f"extract: {len(table.ids)} rows, mesh {table.meta['mesh_shape']}")
        return

    def on_batch(info):
        if args.exit_after_batches is not None and info["batch"] >= args.exit_after_batches:
            sys.stdout.flush()
            os._exit(EXIT_CODE)

    run = distributed.extract_sharded(tiny_denoiser(), data, FEATURES, out=args.out, layout=layout, seed=SEED,
                                      per_device_batch=args.per_device_batch, progress=False, on_batch=on_batch)
    print(f"shard {layout.process_id}: {len(run.table.ids)} rows, reused={run.reused}, merged={run.merged}")


if __name__ == "__main__":
    jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
    jax.config.update("jax_disable_most_optimizations", True)  # as features_util.fast_compile
    main(sys.argv[1:])
