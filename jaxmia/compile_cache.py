"""Compile once: JAX's persistent compilation cache for jaxmia's drivers, and compile-time accounting.

The cache (JAX's own, https://docs.jax.dev/en/latest/persistent_compilation_cache.html) stores
every compiled XLA executable on disk under a key of the program, its shapes, the devices, the
flags and the jax/jaxlib versions, so a second run of the same model and configuration loads its
programs instead of compiling them. jaxmia turns it on by default in the CLI and in the library's
drivers (``extract()``, ``loss_sweep()``, ``run_drc()``, ``run_audit()``), at

* ``$JAXMIA_COMPILE_CACHE`` if set (a directory; ``off`` disables the cache), else
* ``$XDG_CACHE_HOME/jaxmia/xla``, else ``~/.cache/jaxmia/xla``;

``jaxmia --compile-cache DIR`` / ``--no-compile-cache`` override both. A program the user's own
code has already configured (``jax_compilation_cache_dir`` set by them) is left alone.

Every program is cached (``jax_persistent_cache_min_compile_time_secs = 0``): jaxmia's small
programs (the lane pool's merge and init, the encoders) each compile in under a second on XLA:CPU,
and together they are what a warm start would otherwise still wait for.

Compile seconds: JAX's own compile events (tracing, lowering, the XLA compile or the cache read)
are summed per process; :func:`snapshot` and :func:`since` give the seconds of a stretch of work, so
progress lines, feature tables and ``report.json`` give compile time apart from compute time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Optional

import jax

ENV_VAR = "JAXMIA_COMPILE_CACHE"
OFF_VALUES = ("off", "0", "false", "no", "none")
# JAX's compile events (jax/_src/dispatch.py): tracing to a jaxpr, lowering to MLIR, and the XLA
# compile (or, with the persistent cache, its lookup and load).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_MISS_EVENT = "/jax/compilation_cache/cache_misses"

_state = {"dir": None, "configured_by": None}
_lock = threading.Lock()


def default_dir() -> Optional[Path]:
    """The cache directory from the environment (None: ``$JAXMIA_COMPILE_CACHE`` says off)."""
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        if env.strip().lower() in OFF_VALUES:
            return None
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxmia" / "xla"


def enable(path=None) -> Optional[Path]:
    """Turns the persistent cache on at ``path`` (default :func:`default_dir`); returns the directory.

    None (nothing changed) when the environment says off, or when the user's own code configured
    ``jax_compilation_cache_dir`` before jaxmia did. Calling it again with another path moves the
    cache (tests point it at a temporary directory).
    """
    with _lock:
        current = jax.config.jax_compilation_cache_dir
        if current and _state["configured_by"] != "jaxmia":
            return None  # the user's own setting wins
        target = Path(path).expanduser() if path is not None else default_dir()
        if target is None:
            return None
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"compile cache {target}: cannot create the directory ({err.strerror})") from None
        if current != str(target):
            jax.config.update("jax_compilation_cache_dir", str(target))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
            _reset_jax_cache()
        _state.update(dir=target, configured_by="jaxmia")
        return target


def disable() -> None:
    """Turns jaxmia's cache off (a cache configured by the user's own code is left alone)."""
    with _lock:
        if _state["configured_by"] == "jaxmia":
            jax.config.update("jax_compilation_cache_dir", None)
            _reset_jax_cache()
        _state.update(dir=None, configured_by="off")


def ensure_default() -> Optional[Path]:
    """The drivers' call: the default cache unless someone already chose (CLI flag, ``disable()``)."""
    if _state["configured_by"] is not None:
        return _state["dir"]
    return enable()


def cache_dir() -> Optional[Path]:
    """Where jaxmia's cache is (None: off or not configured by jaxmia)."""
    return _state["dir"]


def _reset_jax_cache() -> None:
    # JAX decides once per process whether the cache is used (at the first compile); a new
    # directory needs that decision made again.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()


_totals = {"seconds": 0.0, "cache_hits": 0, "cache_misses": 0}


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    if event in COMPILE_EVENTS:
        _totals["seconds"] += seconds


def _on_event(event: str, **kwargs) -> None:
    if event == CACHE_HIT_EVENT:
        _totals["cache_hits"] += 1
    elif event == CACHE_MISS_EVENT:
        _totals["cache_misses"] += 1


def _register() -> None:
    from jax import monitoring

    monitoring.register_event_duration_secs_listener(_on_duration)
    monitoring.register_event_listener(_on_event)


_register()  # once per process, at import (jaxmia's drivers import this module before compiling)


def snapshot() -> dict:
    """The process's compile totals so far: seconds, persistent-cache hits and misses."""
    return dict(_totals)


def since(before: dict) -> dict:
    """Compile totals since ``before`` (a :func:`snapshot`), with the cache directory."""
    now = snapshot()
    return {"compile_s": round(now["seconds"] - before["seconds"], 3),
            "cache_hits": now["cache_hits"] - before["cache_hits"],
            "cache_misses": now["cache_misses"] - before["cache_misses"],
            "cache_dir": None if cache_dir() is None else str(cache_dir())}


def configure(path=None, off: bool = False) -> Optional[Path]:
    """The CLI's ``--compile-cache DIR`` / ``--no-compile-cache``: off, at ``path``, or the default."""
    if off and path is not None:
        raise ValueError("--compile-cache and --no-compile-cache: choose one")
    if off:
        disable()
        return None
    return enable(path)
