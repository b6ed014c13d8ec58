"""The Flax UNet2DModel against diffusers' PyTorch UNet2DModel (the oracle), float32 on CPU.

Each case builds diffusers' model with seeded random weights (norm scales and biases randomised
too, so a swapped scale/bias cannot hide), saves it with ``save_pretrained(safe_serialization=True)``,
loads it through ``load_unet`` / ``load_denoiser`` and compares the outputs on the same inputs
(NCHW in PyTorch, NHWC in jaxmia) at several timesteps. Tolerance 1e-5 (docs/methods/models.md §9).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmia.models import load_denoiser, load_unet
from unet_oracle import CIFAR_SHAPE, CLASS_COND, TINY, VARIANTS, inputs, saved, torch_forward, torch_unet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Most XLA optimisations off: compiles ~2x faster here, and float32 results stay within 1e-6."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def jax_forward(module, params, x, t, labels=None):
    return np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(x), jnp.asarray(t),
                                            None if labels is None else jnp.asarray(labels)))


def test_tiny_matches_diffusers_at_two_batch_sizes(tmp_path):
    model = torch_unet(TINY)
    module, config, params = load_unet(saved(model, tmp_path / "tiny"))
    assert config.attention_head_dim == 8 and config.downsample_padding == 1
    for batch, t in [(1, [100]), (4, [0, 100, 999, 500])]:
        x = inputs(TINY, batch, seed=batch)
        expected = torch_forward(model, x, t)
        got = jax_forward(module, params, x, np.asarray(t, np.int32))
        assert np.max(np.abs(got - expected)) <= TOL * max(1.0, np.max(np.abs(expected)))


def test_class_conditional_matches_diffusers_through_load_denoiser(tmp_path):
    model = torch_unet(CLASS_COND)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    diffusers.DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(tmp_path / "pipe", safe_serialization=True)
    den = load_denoiser(tmp_path / "pipe")
    assert den.cond_kind == "class" and den.sample_shape == (16, 16, 3) and not den.learned_sigma
    x, t, labels = inputs(CLASS_COND, 4), np.array([0, 100, 999, 100]), np.array([3, 0, 9, 7])
    expected = torch_forward(model, x, t, labels)
    # Per example and vmapped, as the attack kernels call it.
    per_example = jax.jit(jax.vmap(type(den).eps, in_axes=(None, 0, 0, 0)))
    got = np.asarray(per_example(den, jnp.asarray(x), jnp.asarray(t), jnp.asarray(labels)))
    assert np.max(np.abs(got - expected)) <= TOL * max(1.0, np.max(np.abs(expected)))
    # The label matters (the check above would pass trivially for a label-blind network otherwise).
    assert np.max(np.abs(expected - torch_forward(model, x, t, (labels + 1) % 10))) > 1e-3


def test_cifar10_shape_matches_diffusers(tmp_path):
    model = torch_unet(CIFAR_SHAPE)
    module, config, params = load_unet(saved(model, tmp_path / "cifar"))
    assert config.attention_head_dim is None and config.downsample_padding == 0
    x, t = inputs(CIFAR_SHAPE, 3), np.array([0, 100, 999])
    expected = torch_forward(model, x, t)
    got = jax_forward(module, params, x, t)
    assert np.max(np.abs(got - expected)) <= TOL * max(1.0, np.max(np.abs(expected)))


def test_variant_options_match_diffusers(tmp_path):
    model = torch_unet(VARIANTS)
    folder = saved(model, tmp_path / "variants")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)  # scheduler_config.json beside
    den = load_denoiser(folder)
    assert den.sample_shape == (16, 8, 1) and den.learned_sigma and den.cond_kind == "class"
    x, t, labels = inputs(VARIANTS, 3), np.array([0, 100, 999]), np.array([1, 5, 2])
    expected = torch_forward(model, x, t, labels)
    got = np.asarray(jax.jit(den.apply_fn)(den.params, jnp.asarray(x), jnp.asarray(t), jnp.asarray(labels)))
    assert got.shape == (3, 16, 8, 2)
    assert np.max(np.abs(got - expected)) <= TOL * max(1.0, np.max(np.abs(expected)))


@pytest.mark.slow
def test_cifar10_full_width_matches_diffusers(tmp_path):
    config = {**CIFAR_SHAPE, "block_out_channels": (128, 256, 256, 256), "norm_num_groups": 32}
    model = torch_unet(config)
    module, _, params = load_unet(saved(model, tmp_path / "cifar_full"))
    assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == 35_746_307
    for batch in (1, 4):
        x, t = inputs(config, batch, seed=batch), np.array([0, 100, 999, 500][:batch])
        expected = torch_forward(model, x, t)
        got = jax_forward(module, params, x, t)
        assert np.max(np.abs(got - expected)) <= TOL * max(1.0, np.max(np.abs(expected)))
