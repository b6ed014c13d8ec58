"""The Flax DiTTransformer2DModel against diffusers' PyTorch DiTTransformer2DModel (the oracle), float32 CPU.

A tiny DiT (8×8×4 latents, patch 2, 2 blocks, 2 heads of 16, 10 classes + the null class, learned σ)
with seeded random weights is saved with ``save_pretrained(safe_serialization=True)``, loaded through
jaxmia's loader and compared at t ∈ {0, 500, 999} with class labels including the null label 10.
Tolerance 1e-4 (docs/methods/models.md §9).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.models import load_denoiser, load_unet
from jaxmia.models.attention import sinusoid_2d
from jaxmia.models.convert import flax_to_torch
from jaxmia.models.dit import DiTConfig
from jaxmia.schedule import make_schedule

from cond_oracle import DIT_TINY, dit_forward, quiet, saved, torch_dit

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
NULL = DIT_TINY["num_embeds_ada_norm"]


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    quiet()
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def dit(tmp_path_factory):
    model = torch_dit(DIT_TINY)
    folder = saved(model, tmp_path_factory.mktemp("dit") / "transformer")
    return model, folder


def test_matches_diffusers_with_null_label_through_the_denoiser(dit):
    """ε̂ = the first half of the 8 output channels; labels include the null class."""
    model, folder = dit
    den = load_denoiser(folder, schedule=make_schedule())
    assert den.cond_kind == "class" and den.learned_sigma and den.sample_shape == (8, 8, 4)
    per_example = jax.jit(jax.vmap(type(den).eps, in_axes=(None, 0, 0, 0)))
    r = np.random.default_rng(0)
    x_a, x_b = r.standard_normal((2, 2, 8, 8, 4)).astype(np.float32)
    results = {}
    for x, t, labels in [(x_a, [0, 999], [3, NULL]), (x_b, [500, 500], [NULL, 9]), (x_b, [500, 500], [NULL, NULL])]:
        expected = dit_forward(model, x, np.asarray(t), np.asarray(labels))
        assert expected.shape == (2, 8, 8, 8)
        got = np.asarray(per_example(den, jnp.asarray(x), jnp.asarray(t, jnp.int32), jnp.asarray(labels, jnp.int32)))
        assert np.max(np.abs(got - expected[..., :4])) <= TOL, (t, labels, np.max(np.abs(got - expected[..., :4])))
        results[tuple(labels)] = got
    # The label matters: label 9 and the null label give different ε̂ for the same x and t.
    assert np.max(np.abs(results[(NULL, 9)][1] - results[(NULL, NULL)][1])) > 1e-2


def test_full_output_and_parameter_names_match_diffusers(dit):
    model, folder = dit
    module, cfg, params = load_unet(folder)
    assert cfg.null_label == NULL and cfg.output_channels == 8
    back = flax_to_torch(params)
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(back) == set(expected)  # pos_embed is a fixed table, not a weight, in both
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_position_table_matches_diffusers():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    expected = get_2d_sincos_pos_embed(32, 4, base_size=4, output_type="pt").numpy()
    np.testing.assert_allclose(sinusoid_2d(32, 4, 4), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("key, value, words", [
    ("norm_type", "ada_norm_single", "norm_type='ada_norm_single'"),
    ("num_embeds_ada_norm", None, "num_embeds_ada_norm=None"),
    ("activation_fn", "swiglu", "activation_fn='swiglu'"),
    ("sample_size", 9, "sample_size=9"),
    ("patch_size", 2.0, "patch_size=2.0"),
    ("caption_channels", 4096, "'caption_channels'"),
])
def test_unsupported_config_values_are_refused_by_name(key, value, words):
    with pytest.raises(ValueError, match="dit.json") as err:
        DiTConfig.from_diffusers({**DIT_TINY, key: value}, source="dit.json")
    assert words in str(err.value)


def test_missing_labels_are_refused(dit):
    _, folder = dit
    module, _, params = load_unet(folder)
    with pytest.raises(ValueError, match="null class"):
        module.apply({"params": params}, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,), jnp.int32), None)
