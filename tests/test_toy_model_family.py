"""A new model family needs its module and one registration, nothing else (issue 17).

``ToyNet`` is defined here only: a tiny Flax module, its typed config, ``@register_model("ToyNet")``
and a family registered from Python. It is saved as a diffusers-format folder (config.json with
``_class_name: ToyNet``, safetensors in PyTorch layout, scheduler_config.json) and then goes
through ``load_denoiser``, ``save_unet``, ``jaxmia inspect`` and ``jaxmia features`` unchanged. The
values are checked against a NumPy re-derivation of the network.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from jaxmia.cli import main
from jaxmia.models import families, load_denoiser, save_unet, weights_digest
from jaxmia.models.blocks import torch_default_params
from jaxmia.models.convert import flax_to_torch
from jaxmia.models.registry import ModelSpec, register_model, registered_classes, unregister_model
from jaxmia.table import load_table

from features_util import draws, fast_compile

SEED = 3
SHAPE = (8, 8, 3)
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
             "num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": True}


# ---- the family: one module's worth of code ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    sample_size: int = 8
    in_channels: int = 3
    width: int = 5
    class_name = "ToyNet"

    @classmethod
    def from_diffusers(cls, config, *, source):
        keys = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in config if not k.startswith("_") and k not in keys)
        if unknown:
            raise ValueError(f"{source}: unknown ToyNet config key(s) {', '.join(map(repr, unknown))}")
        return cls(**{k: config[k] for k in keys if k in config})

    def to_diffusers(self) -> dict:
        return {"_class_name": self.class_name, **dataclasses.asdict(self)}


class ToyNet(nn.Module):
    """out = toy_layers_1(tanh(toy_layers_0(x))) + time_proj(sin(t·f)), per pixel."""

    config: ToyConfig

    @nn.compact
    def __call__(self, x, t, cond=None):
        c, w = self.config.in_channels, self.config.width
        h = jnp.tanh(nn.Dense(w, name="toy_layers_0")(x))
        freqs = jnp.arange(1, w + 1, dtype=jnp.float32) / 1000.0
        temb = nn.Dense(c, name="time_proj")(jnp.sin(t.astype(jnp.float32)[:, None] * freqs))
        return nn.Dense(c, name="toy_layers_1")(h) + temb[:, None, None, :]


def _apply(module, params, x, t, cond):
    return module.apply({"params": params}, x, t, cond)


def build_toy(config, *, source="config") -> ModelSpec:
    cfg = ToyConfig.from_diffusers(config, source=source)
    module = ToyNet(cfg)
    shape = (cfg.sample_size, cfg.sample_size, cfg.in_channels)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, *shape)),
                                                  jnp.zeros((1,), jnp.int32)))["params"]
    return ModelSpec(module=module, config=cfg, abstract_params=abstract, apply_fn=functools.partial(_apply, module),
                     sample_shape=shape, out_channels=cfg.in_channels, cond_kind="none")


TOY_FAMILY = {"name": "toynet", "description": "a test-only family", "reference": "tests/test_toy_model_family.py",
              "learned_sigma": False,
              "schedule": {k: SCHEDULER[k] for k in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps",
                                                     "prediction_type")} | {"first_index_clean": False},
              "latent": {"kind": "none", "encode": "none"}, "conditioning": {"kind": "none"}}


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    register_model("ToyNet", module_lists=("toy_layers",))(build_toy)
    families.register_family(families.parse_family(TOY_FAMILY, source="test"))
    try:
        with fast_compile():
            yield
    finally:
        unregister_model("ToyNet")
        families.unregister_family("toynet")


# ---- the oracle ----------------------------------------------------------------------------------


def toy_numpy(params, x, t):
    def dense(name, v):
        return v @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)

    width = params["toy_layers_0"]["kernel"].shape[1]
    temb = dense("time_proj", np.sin(np.asarray(t, np.float64)[:, None] * np.arange(1, width + 1) / 1000.0))
    return dense("toy_layers_1", np.tanh(dense("toy_layers_0", np.asarray(x, np.float64)))) + temb[:, None, None, :]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A diffusers-format folder written by hand, as a PyTorch user of the family would save it."""
    out = tmp_path_factory.mktemp("toynet")
    cfg = ToyConfig()
    params = torch_default_params(build_toy(cfg.to_diffusers()).abstract_params, seed=1)
    state = flax_to_torch(params)
    save_file(state, str(out / "diffusion_pytorch_model.safetensors"))
    (out / "config.json").write_text(json.dumps({**cfg.to_diffusers(), "_diffusers_version": "0.42.0"}))
    (out / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    return out, params, state


def test_the_registration_is_all_it_takes(folder):
    _, _, state = folder
    assert "ToyNet" in registered_classes()
    # the declared ModuleList name gives PyTorch's toy_layers.0, the undeclared time_proj stays a name
    assert sorted(state) == ["time_proj.bias", "time_proj.weight", "toy_layers.0.bias", "toy_layers.0.weight",
                             "toy_layers.1.bias", "toy_layers.1.weight"]
    assert state["toy_layers.0.weight"].shape == (5, 3)  # (out, in): PyTorch's Linear layout


def test_load_denoiser_eps_is_the_toy_network(folder):
    path, params, _ = folder
    den = load_denoiser(path)
    assert den.sample_shape == SHAPE and den.cond_kind == "none" and not den.learned_sigma and not den.is_latent
    assert den.digest == weights_digest(params)
    x = np.random.default_rng(0).uniform(-1, 1, (2, *SHAPE)).astype(np.float32)
    t = np.array([10, 700], np.int32)
    want = toy_numpy(params, x, t)
    np.testing.assert_allclose(np.asarray(den.eps_batch(jnp.asarray(x), jnp.asarray(t))), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(den.eps(jnp.asarray(x[1]), 700)), want[1], rtol=1e-5, atol=1e-5)
    ab = np.cumprod(1 - np.linspace(0.0001, 0.02, 1000))
    np.testing.assert_allclose(np.asarray(den.schedule.alphas_cumprod), ab, rtol=1e-6)


def test_family_and_flax_round_trip(folder, tmp_path):
    path, params, _ = folder
    den = load_denoiser(path, family="toynet")
    assert den.digest == weights_digest(params)
    saved = save_unet(tmp_path / "flax", ToyConfig(), den.params)
    (saved / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    assert json.loads((saved / "config.json").read_text())["_class_name"] == "ToyNet"
    assert load_denoiser(saved).digest == den.digest
    wrong = {**TOY_FAMILY, "name": "toynet_sigma", "learned_sigma": True}
    families.register_family(families.parse_family(wrong, source="test"))
    try:
        with pytest.raises(ValueError, match="learned_sigma is False but model family 'toynet_sigma' says True"):
            load_denoiser(path, family="toynet_sigma")
    finally:
        families.unregister_family("toynet_sigma")


def test_jaxmia_inspect_shows_the_toy(folder):
    path, params, _ = folder
    result = CliRunner().invoke(main, ["inspect", str(path), "--family", "toynet", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    n = sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(params))
    assert d["denoiser"]["class"] == "ToyNet" and d["denoiser"]["parameters"] == n == 5 * 3 + 5 + 5 * 3 + 3 + 5 * 3 + 3
    assert d["denoiser"]["sample_shape"] == list(SHAPE) and d["layout"]["family"] == "toynet"
    assert d["schedule"]["source"].startswith(str(path / "scheduler_config.json"))
    assert d["digest"] == weights_digest(params) and d["latent"] is None


def test_jaxmia_features_runs_on_the_toy(folder, tmp_path):
    path, params, _ = folder
    rng = np.random.default_rng(4)
    ids = [f"toy{i}" for i in range(4)]
    images = rng.uniform(-1, 1, (4, *SHAPE)).astype(np.float32)
    np.savez(tmp_path / "data.npz", images=images, ids=np.array(ids))
    out = tmp_path / "feat.npz"
    result = CliRunner().invoke(main, ["features", str(path), str(tmp_path / "data.npz"), "--features", "multi_loss",
                                       "--out", str(out), "--seed", str(SEED), "--set", "ml_timesteps=100,700"])
    assert result.exit_code == 0, result.output
    table = load_table(out)
    assert list(table.names) == ["ml_t100", "ml_t700"] and list(table.ids) == ids
    eps = draws(SEED, ids, "ml", shape=SHAPE).astype(np.float64)
    ab = np.cumprod(1 - np.linspace(0.0001, 0.02, 1000))
    for t in (100, 700):
        x_t = math.sqrt(ab[t]) * images + math.sqrt(1 - ab[t]) * eps
        err = np.sqrt(((toy_numpy(params, x_t, np.full(4, t)) - eps) ** 2).sum(axis=(1, 2, 3)))
        np.testing.assert_allclose(table.column(f"ml_t{t:03d}"), err, rtol=1e-4)
