"""Progress lines with an ETA that ignores compile time (docs/methods/design.md §14).

The first step of a jitted loop compiles; its duration says nothing about the steady state, so the
rate (and the ETA) is measured from the end of the first step on. Every line also gives the seconds
JAX has spent compiling since the bar started (:mod:`jaxmia.compile_cache`; with the persistent
cache warm, that is the time to load the programs), so compile and compute time read apart.
"""

from __future__ import annotations

import sys
import time

from jaxmia import compile_cache


class Progress:
    """``with Progress("features", total=N) as p: ... p.update(k)`` prints to stderr."""

    def __init__(self, label: str, total: int, *, unit: str = "img", enabled: bool = True, every: float = 1.0,
                 stream=None):
        self.label, self.total, self.unit = label, int(total), unit
        self.enabled, self.every = enabled, every
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self.steady_start = None  # set after the first (compiling) update
        self.steady_done = 0
        self.compile_seconds = 0.0  # duration of the first step (compiling, or loading from the cache)
        self._compile_start = compile_cache.snapshot()
        self._last_print = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.finish()

    def finish(self) -> None:
        """Prints the final line (with the total time)."""
        if self.enabled:
            self._print(final=True)

    def update(self, n: int) -> None:
        now = time.perf_counter()
        self.done += n
        if self.steady_start is None:
            self.steady_start = now
            self.steady_done = self.done
            self.compile_seconds = now - self.start
        if self.enabled and (now - self._last_print >= self.every or self.done >= self.total):
            self._last_print = now
            self._print()

    @property
    def rate(self) -> float:
        """Steady-state items per second (0 until two updates have happened)."""
        if self.steady_start is None:
            return 0.0
        elapsed = time.perf_counter() - self.steady_start
        n = self.done - self.steady_done
        return n / elapsed if elapsed > 0 and n > 0 else 0.0

    @property
    def eta(self):
        """Seconds left at the steady rate (None until it is known)."""
        rate = self.rate
        return max(self.total - self.done, 0) / rate if rate > 0 else None

    @property
    def jit_compile_seconds(self) -> float:
        """Seconds JAX has spent compiling (or loading compiled programs) since the bar started."""
        return compile_cache.since(self._compile_start)["compile_s"]

    def summary(self) -> dict:
        return {
            "items": self.done,
            "seconds": round(time.perf_counter() - self.start, 3),
            "first_step_seconds": round(self.compile_seconds, 3),
            "compile_seconds": round(self.jit_compile_seconds, 3),
            "steady_items_per_second": round(self.rate, 3),
        }

    def _print(self, final: bool = False) -> None:
        rate = self.rate
        compiled = f"compile {self.jit_compile_seconds:.1f}s"
        if final:
            tail = f"done in {time.perf_counter() - self.start:.1f}s ({compiled})"
        elif rate > 0:
            tail = f"{rate:.1f} {self.unit}/s, ETA {max(self.total - self.done, 0) / rate:.0f}s, {compiled}"
        else:
            tail = f"compiling... ({compiled})"
        width = 24
        filled = int(width * min(self.done / max(self.total, 1), 1.0))
        bar = "#" * filled + "-" * (width - filled)
        print(f"\r{self.label}: [{bar}] {self.done}/{self.total} {tail}   ", end="\n" if final else "",
              file=self.stream, flush=True)
