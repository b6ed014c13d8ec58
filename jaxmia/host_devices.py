"""One JAX CPU device per core: how jaxmia uses every core of a CPU host.

XLA:CPU runs a program's convolutions on one thread: on the 2-core reference machine a UNet
forward takes the same time pinned to one core as free on two (``taskset -c 0``), 0.56x diffusers'
PyTorch with 2 threads. Split into one JAX device per core, with the batch sharded over them (the
``"data"`` axis of :mod:`jaxmia.runtime`), the same network runs 1.26x PyTorch forward and 1.01x
forward + input gradient (docs/benchmarks.md §10, ``scripts/bench_features.py --cpu-devices 1|2``).
So the CLI splits a CPU host into one device per usable core by default:

* ``jaxmia --cpu-devices N`` (or ``auto``), else ``$JAXMIA_CPU_DEVICES``, else ``auto``;
* ``auto`` = the cores this process may run on (``os.sched_getaffinity``);
* a count the user already chose is left alone: ``$JAX_NUM_CPU_DEVICES``, ``jax_num_cpu_devices``
  set in the process, or ``--xla_force_host_platform_device_count`` in ``$XLA_FLAGS``.

It only shapes the CPU backend (a GPU or TPU host's accelerators are unaffected) and must run before
JAX's first operation; library users who want it call :func:`configure` right after importing jax.
Features are the same whatever the device count up to float rounding (docs/scaling.md §9).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Union

import jax

ENV_VAR = "JAXMIA_CPU_DEVICES"
AUTO = "auto"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unsupported)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_count(value: Union[str, int, None], source: str) -> Optional[int]:
    """``"auto"``/None -> None (decide from the cores), a positive integer -> itself; else a one-line error."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", AUTO):
        return None
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{source}: expected a positive device count or 'auto', got {value!r}") from None
    if count < 1:
        raise ValueError(f"{source}: expected a positive device count or 'auto', got {value!r}")
    return count


def chosen_elsewhere() -> Optional[str]:
    """Where a CPU device count was already chosen (None: nobody chose)."""
    if os.environ.get("JAX_NUM_CPU_DEVICES", "").strip():
        return "$JAX_NUM_CPU_DEVICES"
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return "$XLA_FLAGS (--xla_force_host_platform_device_count)"
    if int(jax.config.jax_num_cpu_devices) > 0:
        return "jax_num_cpu_devices"
    return None


def configure(count: Union[str, int, None] = None) -> Optional[int]:
    """Splits the CPU backend into ``count`` devices (``None``/``"auto"``: one per usable core).

    ``count=None`` reads ``$JAXMIA_CPU_DEVICES`` first. Returns the count set, or None when it was
    left alone: chosen elsewhere (:func:`chosen_elsewhere`), or JAX's backends already running (an
    explicit count then warns: it cannot take effect in this process).
    """
    source = "--cpu-devices"
    if count is None and os.environ.get(ENV_VAR, "").strip():
        count, source = os.environ[ENV_VAR], f"${ENV_VAR}"
    explicit = parse_count(count, source)
    if explicit is None and chosen_elsewhere() is not None:
        return None
    n = explicit if explicit is not None else usable_cores()
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # backends already initialised: the device count is fixed for this process
        if explicit is not None:
            warnings.warn(f"{source}={explicit}: JAX is already running with {jax.local_device_count(backend='cpu')} "
                          "CPU device(s); set it before the first JAX operation", stacklevel=2)
        return None
    return int(n)
