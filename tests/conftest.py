"""Test environment: CPU only, two fake devices (so sharding runs anywhere), strict numerics."""

import os

# Must happen before JAX initialises its backends (docs/methods/models.md §11).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=2").strip()

# The persistent compile cache (jaxmia.compile_cache) stays off in the suite: tests never write into
# the user's cache; tests/test_compile_cache.py turns it on in temporary directories.
os.environ["JAXMIA_COMPILE_CACHE"] = "off"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
