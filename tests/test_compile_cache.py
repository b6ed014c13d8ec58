"""Compile once (jaxmia.compile_cache): where the cache lives, that XLA:CPU really reuses it, the CLI
flags, and compile seconds reported apart. Every cache here is a temporary directory."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import jaxmia.features as F
from jaxmia import compile_cache as cc
from jaxmia.progress import Progress

from features_util import fast_compile, tiny_dataset, tiny_denoiser


@pytest.fixture
def fresh_state():
    """jaxmia's cache state as at import, restored (and JAX's cache turned off) afterwards."""
    saved = dict(cc._state)
    cc._state.update(dir=None, configured_by=None)
    yield
    if jax.config.jax_compilation_cache_dir is not None:
        jax.config.update("jax_compilation_cache_dir", None)
        cc._reset_jax_cache()
    cc._state.clear()
    cc._state.update(saved)


def test_default_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(cc.ENV_VAR, str(tmp_path / "mine"))
    assert cc.default_dir() == tmp_path / "mine"
    for off in ("off", "0", "OFF", "none"):
        monkeypatch.setenv(cc.ENV_VAR, off)
        assert cc.default_dir() is None
    monkeypatch.delenv(cc.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cc.default_dir() == tmp_path / "xdg" / "jaxmia" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cc.default_dir() == tmp_path / "home" / ".cache" / "jaxmia" / "xla"


def test_a_second_compile_loads_from_the_cache_on_cpu(fresh_state, tmp_path):
    """XLA:CPU in this jax: the executable is written on the first compile, read on the next one
    (after jax.clear_caches(), as a new process would), and computes the same bits."""
    assert cc.enable(tmp_path / "xla") == tmp_path / "xla"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0

    @jax.jit
    def program(x):
        for _ in range(5):
            x = jnp.tanh(x @ x.T + 0.5 * x)
        return x

    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 16)), jnp.float32)
    before = cc.snapshot()
    first = np.asarray(program(x))
    cold = cc.since(before)
    assert cold["cache_misses"] >= 1 and cold["cache_hits"] == 0 and cold["compile_s"] > 0
    assert any(p.name.startswith("jit_program-") for p in (tmp_path / "xla").iterdir())
    jax.clear_caches()
    before = cc.snapshot()
    second = np.asarray(program(x))
    warm = cc.since(before)
    assert warm["cache_hits"] >= 1 and warm["cache_misses"] == 0 and warm["cache_dir"] == str(tmp_path / "xla")
    np.testing.assert_array_equal(first, second)


def test_the_users_own_setting_wins_and_off_is_off(fresh_state, tmp_path, monkeypatch):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
    assert cc.enable(tmp_path / "ours") is None and jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")
    cc.disable()  # not jaxmia's: left alone
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "theirs")
    jax.config.update("jax_compilation_cache_dir", None)
    cc._state.update(dir=None, configured_by=None)
    monkeypatch.setenv(cc.ENV_VAR, "off")
    assert cc.ensure_default() is None and jax.config.jax_compilation_cache_dir is None
    monkeypatch.setenv(cc.ENV_VAR, str(tmp_path / "env"))
    assert cc.ensure_default() == tmp_path / "env" and (tmp_path / "env").is_dir()
    cc.disable()
    assert jax.config.jax_compilation_cache_dir is None and cc.ensure_default() is None  # a choice sticks


def test_cli_flags(fresh_state, tmp_path):
    from jaxmia.cli import main

    result = CliRunner().invoke(main, ["--compile-cache", str(tmp_path / "cli"), "merge", "--help"])
    assert result.exit_code == 0, result.output
    assert cc.cache_dir() == tmp_path / "cli" and jax.config.jax_compilation_cache_dir == str(tmp_path / "cli")
    result = CliRunner().invoke(main, ["--no-compile-cache", "merge", "--help"])
    assert result.exit_code == 0 and cc.cache_dir() is None and jax.config.jax_compilation_cache_dir is None
    result = CliRunner().invoke(main, ["--no-compile-cache", "--compile-cache", str(tmp_path), "merge", "--help"])
    assert result.exit_code == 2 and "choose one" in result.output


def test_extract_reports_compile_time_and_reuses_the_cache(fresh_state, tmp_path):
    cc.enable(tmp_path / "xla")
    den, data = tiny_denoiser(), tiny_dataset(4)
    kw = dict(seed=1, batch_size=4, per_device_batch=2, devices=jax.devices()[:2], progress=False)
    with fast_compile():
        cold = F.extract(den, data, "loss,pia", **kw)
        runs = []
        for _ in range(2):  # the first also writes what earlier tests compiled before the cache was on
            jax.clear_caches()
            runs.append(F.extract(den, data, "loss,pia", **kw))
    assert cold.meta["compile"]["compile_s"] > 0 and cold.meta["compile"]["cache_misses"] >= 1
    warm = runs[-1].meta["compile"]
    assert warm["cache_hits"] >= 1 and warm["cache_misses"] == 0 and warm["cache_dir"] == str(tmp_path / "xla")
    for run in runs:
        np.testing.assert_array_equal(run.values, cold.values)


def test_progress_lines_give_compile_seconds_apart():
    stream = io.StringIO()
    bar = Progress("t", total=2, stream=stream, every=0.0)
    jax.jit(lambda x: jnp.cos(x) * 3.0 + 1.25)(jnp.ones(7)).block_until_ready()  # a new program: compiles
    bar.update(1)
    bar.update(1)
    bar.finish()
    assert bar.jit_compile_seconds > 0 and bar.summary()["compile_seconds"] == round(bar.jit_compile_seconds, 3)
    lines = stream.getvalue().split("\r")
    assert all("compile " in line for line in lines if line.strip())
    assert "done in" in lines[-1]
