"""The Flax UNet2DConditionModel against diffusers' PyTorch UNet2DConditionModel (the oracle), float32 CPU.

diffusers' model is built with seeded random weights (norm scales and biases randomised too), saved
with ``save_pretrained(safe_serialization=True)``, loaded through jaxmia's loader and compared on the
same inputs and text embeddings at t ∈ {0, 500, 999}. Tolerance 1e-4 for cross-attention UNets
(docs/methods/models.md §9).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.models import load_denoiser, load_unet, save_unet
from jaxmia.models.convert import flax_to_torch
from jaxmia.models.unet2d_condition import UNet2DConditionConfig
from jaxmia.schedule import make_schedule

from cond_oracle import UNET_TEXT, UNET_TEXT_LINEAR, quiet, saved, torch_unet, unet_forward

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
CASES = {"conv_projection": UNET_TEXT, "linear_projection": UNET_TEXT_LINEAR}


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Most XLA optimisations off: compiles ~2x faster; float32 results stay within ~1e-6."""
    quiet()
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    config = CASES[request.param]
    model = torch_unet(config)
    folder = saved(model, tmp_path_factory.mktemp(request.param) / "unet")
    module, cfg, params = load_unet(folder)
    return config, model, folder, module, cfg, params


def _inputs(config, seed):
    r = np.random.default_rng(seed)
    x = r.standard_normal((2, 16, 16, config["in_channels"])).astype(np.float32)
    context = r.standard_normal((2, 5, config["cross_attention_dim"])).astype(np.float32)
    return x, context


def test_matches_diffusers_at_t_0_500_999_through_the_denoiser(case):
    """load_denoiser's Denoiser, called as the attacks call it: eps(x, t, cond) for ONE example with
    cond (L, D), vmapped and jitted."""
    config, model, folder, *_ = case
    den = load_denoiser(folder, schedule=make_schedule())
    assert den.cond_kind == "text" and not den.learned_sigma
    assert den.sample_shape == (16, 16, config["in_channels"])
    per_example = jax.jit(jax.vmap(type(den).eps, in_axes=(None, 0, 0, 0)))
    for seed, t in [(0, [0, 999]), (1, [500, 500])]:
        x, context = _inputs(config, seed)
        expected = unet_forward(model, x, np.asarray(t), context)
        got = np.asarray(per_example(den, jnp.asarray(x), jnp.asarray(t, jnp.int32), jnp.asarray(context)))
        assert np.max(np.abs(got - expected)) <= TOL, (t, np.max(np.abs(got - expected)))
    # The text matters: another context moves the output by far more than the tolerance.
    other = np.asarray(per_example(den, jnp.asarray(x), jnp.asarray(t, jnp.int32), jnp.asarray(context[::-1])))
    assert np.max(np.abs(other - got)) > 1e-2


def test_parameter_names_round_trip_to_the_pytorch_state_dict(case):
    _, model, _, _, _, params = case
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    back = flax_to_torch(params)
    assert set(back) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_flax_msgpack_round_trip_is_exact(case, tmp_path):
    _, _, _, _, cfg, params = case
    save_unet(tmp_path / "flax", cfg, params)
    saved_config = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert saved_config["_class_name"] == "UNet2DConditionModel"
    _, cfg2, params2 = load_unet(tmp_path / "flax")
    assert cfg2 == cfg
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- configs ---------------------------------------------------------------------------------------

SD1 = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD2 = {  # stabilityai/stable-diffusion-2-1 unet/config.json
    **SD1, "_diffusers_version": "0.10.0.dev0", "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
    "dual_cross_attention": False, "num_class_embeds": None, "only_cross_attention": False, "sample_size": 96,
    "upcast_attention": True, "use_linear_projection": True, "class_embed_type": None,
    "resnet_time_scale_shift": "default",
}


def test_sd_configs_mirror_diffusers_head_count_quirk():
    """attention_head_dim is the number of heads: SD 1.x has 8 heads of width C/8 at every level;
    SD 2.x has 5/10/20/20 heads of width 64."""
    sd1 = UNet2DConditionConfig.from_diffusers(SD1)
    assert sd1.heads_per_level == (8, 8, 8, 8) and sd1.context_dim == 768 and sd1.cond_kind == "text"
    assert [c // h for c, h in zip(sd1.block_out_channels, sd1.heads_per_level)] == [40, 80, 160, 160]
    sd2 = UNet2DConditionConfig.from_diffusers(SD2)
    assert [c // h for c, h in zip(sd2.block_out_channels, sd2.heads_per_level)] == [64, 64, 64, 64]
    assert sd2.use_linear_projection and sd2.context_dim == 1024 and sd2.sample_shape == (96, 96, 4)


@pytest.mark.slow
@pytest.mark.parametrize("config", [SD1, SD2], ids=["sd1", "sd2"])
def test_sd_parameter_tree_equals_diffusers_state_dict(config):
    """Every name and shape of the full-size SD UNet (859,520,964 parameters for SD 1.x), against
    diffusers' model built on the meta device (no memory, no compute)."""
    from flax import traverse_util

    from jaxmia.models import build_model
    from jaxmia.models.convert import torch_key_of

    spec = build_model(config)
    ours = {}
    for path, leaf in traverse_util.flatten_dict(spec.abstract_params).items():
        shape = leaf.shape
        if path[-1] == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
        ours[torch_key_of(path)] = tuple(shape)
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == theirs
    if config is SD1:
        assert sum(int(np.prod(s)) for s in ours.values()) == 859_520_964


@pytest.mark.parametrize("key, value, words", [
    ("addition_embed_type", "text_time", "addition_embed_type='text_time'"),
    ("class_embed_type", "timestep", "class_embed_type='timestep'"),
    ("time_cond_proj_dim", 256, "time_cond_proj_dim=256"),
    ("dual_cross_attention", True, "dual_cross_attention=True"),
    ("num_attention_heads", 8, "num_attention_heads=8"),
    ("encoder_hid_dim_type", "text_proj", "encoder_hid_dim_type"),
    ("only_cross_attention", True, "only_cross_attention"),
    ("attention_type", "gated", "attention_type='gated'"),
    ("cross_attention_dim", [32, 64], "cross_attention_dim=[32, 64]"),
    ("num_class_embeds", 10, "num_class_embeds=10"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type"),
    ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"], "down_block_types[0]"),
    ("attention_head_dim", [8, 4, 2], "attention_head_dim"),
    ("time_embedding_type", "fourier", "time_embedding_type='fourier'"),
    ("layers_per_block", "2", "layers_per_block='2'"),
    ("sample_size", 15, "sample_size=15"),
    ("not_a_key", 1, "'not_a_key'"),
])
def test_unsupported_config_values_are_refused_by_name(key, value, words):
    config = {**{k: list(v) if isinstance(v, tuple) else v for k, v in UNET_TEXT.items()}, key: value}
    with pytest.raises(ValueError, match="unet.json") as err:
        UNet2DConditionConfig.from_diffusers(config, source="unet.json")
    assert words in str(err.value)


def test_missing_or_wrong_text_embeddings_are_refused(case):
    config, _, _, module, _, params = case
    x, context = _inputs(config, 0)
    t = jnp.zeros((2,), jnp.int32)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        module.apply({"params": params}, jnp.asarray(x), t, None)
    with pytest.raises(ValueError, match="cross_attention_dim=32"):
        module.apply({"params": params}, jnp.asarray(x), t, jnp.zeros((2, 5, 16)))
