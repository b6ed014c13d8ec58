"""jaxmia.host_devices: one JAX CPU device per core, unless the user chose a count elsewhere.

The device count is fixed when JAX's backends start, so the effective counts are checked in fresh
subprocesses (this test process already runs with conftest's two fake devices).
"""

import json
import os
import subprocess
import sys

import pytest

from jaxmia import host_devices

PROBE = """
import json, sys, warnings
import jax
from jaxmia import host_devices
args = json.loads(sys.argv[1])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    chosen = host_devices.configure(*args)
print(json.dumps({"set": chosen, "devices": jax.local_device_count(),
                  "cores": host_devices.usable_cores(), "warnings": [str(w.message) for w in caught]}))
"""


def probe(args=(), **env):
    """configure(*args) in a fresh process with ``env`` (None deletes a variable): what it set and what JAX runs."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", host_devices.ENV_VAR)}
    environ["JAX_PLATFORMS"] = "cpu"
    environ.update({k: v for k, v in env.items() if v is not None})
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], env=environ,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", None), (" AUTO ", None), ("", None),
                                             ("3", 3), (1, 1), ("12", 12)])
def test_parse_count_accepts_auto_and_positive_integers(value, expected):
    assert host_devices.parse_count(value, "--cpu-devices") == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", 0])
def test_parse_count_refuses_the_rest_naming_the_source(value):
    with pytest.raises(ValueError, match=r"^\$JAXMIA_CPU_DEVICES: expected a positive device count or 'auto', got"):
        host_devices.parse_count(value, "$JAXMIA_CPU_DEVICES")


def test_usable_cores_is_the_affinity_set():
    assert host_devices.usable_cores() == len(os.sched_getaffinity(0))


def test_chosen_elsewhere_names_each_source(monkeypatch):
    # This process runs with conftest's --xla_force_host_platform_device_count=2.
    assert host_devices.chosen_elsewhere() == "$XLA_FLAGS (--xla_force_host_platform_device_count)"
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "4")
    assert host_devices.chosen_elsewhere() == "$JAX_NUM_CPU_DEVICES"


def test_auto_is_one_device_per_usable_core():
    got = probe()
    assert got["set"] == got["cores"] == got["devices"]
    # The affinity mask, not the machine's core count, decides (taskset / cgroup CPU sets).
    if len(os.sched_getaffinity(0)) > 1:
        pinned = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", PROBE, "[]"],
                                env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
                                capture_output=True, text=True, timeout=120)
        assert pinned.returncode == 0, pinned.stderr
        assert json.loads(pinned.stdout.strip().splitlines()[-1])["devices"] == 1


def test_explicit_count_and_env_var():
    assert probe([3])["devices"] == 3
    assert probe(**{host_devices.ENV_VAR: "3"})["devices"] == 3
    # An explicit argument wins over the environment variable.
    assert probe([2], **{host_devices.ENV_VAR: "3"})["devices"] == 2


def test_a_count_chosen_elsewhere_is_left_alone():
    got = probe(XLA_FLAGS="--xla_force_host_platform_device_count=3")
    assert got["set"] is None and got["devices"] == 3
    got = probe(JAX_NUM_CPU_DEVICES="3")
    assert got["set"] is None and got["devices"] == 3
    # ... unless jaxmia is told a count explicitly.
    assert probe([2], XLA_FLAGS="--xla_force_host_platform_device_count=3")["devices"] == 2


def test_after_jax_started_an_explicit_count_warns_and_auto_is_silent():
    import jax

    jax.numpy.zeros(1).block_until_ready()  # backends are running in this process
    with pytest.warns(UserWarning, match=r"--cpu-devices=3: JAX is already running with 2 CPU device\(s\)"):
        assert host_devices.configure(3) is None
    assert jax.local_device_count() == 2


def test_cli_refuses_a_bad_count_in_one_line():
    from click.testing import CliRunner

    from jaxmia.cli import main

    result = CliRunner().invoke(main, ["--cpu-devices", "0", "signals"])
    assert result.exit_code == 2
    assert result.output.strip() == "jaxmia: error: --cpu-devices: expected a positive device count or 'auto', got '0'"
