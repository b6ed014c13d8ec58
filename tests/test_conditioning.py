"""Per-image conditioning: labels, text embeddings and the null input reach the data set, checked against
the model; and the attack kernels run unchanged on a tiny DiT and a tiny text-conditional UNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia.data import Dataset
from jaxmia.models import (ConditionSpec, Denoiser, analytic_denoiser, attach_conditioning, build_model,
                           condition_spec, save_text_embeddings, spec_from_family)
from jaxmia.models.dit import DiTConfig
from jaxmia.models.unet2d_condition import UNet2DConditionConfig
from jaxmia.schedule import make_schedule

SHAPE = (8, 8, 4)
D = 8  # text width of the tiny UNet
NUM_CLASSES = 3  # the tiny DiT's classes; label 3 is its null class

TINY_DIT = DiTConfig(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1, num_attention_heads=2,
                     attention_head_dim=8, num_embeds_ada_norm=NUM_CLASSES)
TINY_TEXT_UNET = UNet2DConditionConfig(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16,), layers_per_block=1, norm_num_groups=4,
    down_block_types=("DownBlock2D",), up_block_types=("CrossAttnUpBlock2D",), mid_block_type=None, cross_attention_dim=D,
    attention_head_dim=2)


def _random_params(abstract, seed: int):
    """NumPy-drawn parameters of the registry's abstract tree (Flax's eager init compiles one program per
    shape, ~1 s each here): kernels ~ N(0, 1/fan_in), norm scales 1 ± 0.1, small random biases."""
    r = np.random.default_rng(seed)

    def draw(path, leaf):
        shape, name = leaf.shape, path[-1].key
        if name == "kernel":
            return r.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        if name == "scale":
            return 1.0 + 0.1 * r.standard_normal(shape)
        return (1.0 if name == "embedding" else 0.1) * r.standard_normal(shape)

    return jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(draw(p, leaf), jnp.float32), abstract)


def _denoiser(config, *, seed: int) -> Denoiser:
    """A random registry model as a Denoiser (what load_denoiser builds from a folder)."""
    spec = build_model(config.to_diffusers())
    return Denoiser(params=_random_params(spec.abstract_params, seed), schedule=make_schedule(),
                    apply_fn=spec.apply_fn, sample_shape=spec.sample_shape, cond_kind=spec.cond_kind,
                    learned_sigma=spec.out_channels == 2 * spec.sample_shape[-1], x0_clip=None,
                    digest=f"tiny-{spec.cond_kind}")


@pytest.fixture(scope="module")
def dit():
    return _denoiser(TINY_DIT, seed=0)


@pytest.fixture(scope="module")
def text_unet():
    return _denoiser(TINY_TEXT_UNET, seed=1)


def _data(n=4, cond=None, seed=0):
    images = np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)).astype(np.float32)
    return Dataset([f"img{i}" for i in range(n)], images, cond, "tiny.npz")


# ---- what the model takes ------------------------------------------------------------------------


def test_condition_spec_is_read_from_the_parameters(dit, text_unet):
    assert condition_spec(dit) == ConditionSpec("class", num_labels=NUM_CLASSES + 1, null_label=NUM_CLASSES)
    assert condition_spec(text_unet) == ConditionSpec("text", context_dim=D)
    pixel = analytic_denoiser(np.zeros(SHAPE), make_schedule())
    assert condition_spec(pixel) == ConditionSpec("none")


def test_family_declarations_become_specs_and_must_agree_with_the_model(dit):
    assert spec_from_family("dit") == ConditionSpec("class", num_labels=1001, null_label=1000)
    assert spec_from_family("sd") == ConditionSpec("text", context_dim=768, context_length=77)
    with pytest.raises(ValueError, match="num_labels=1001 but the model's parameters give num_labels=4"):
        condition_spec(dit, family="dit")


# ---- class labels ----------------------------------------------------------------------------------


def test_labels_from_an_int_an_array_a_file_or_the_data_set(dit, tmp_path):
    data = _data()
    assert attach_conditioning(data, dit, labels=2).cond.tolist() == [2, 2, 2, 2]
    assert attach_conditioning(data, dit, labels=np.array([0, 1, 2, 3])).cond.dtype == np.int32
    # A label file is matched by id: rows in another order, plus ids of other images.
    np.savez(tmp_path / "labels.npz", ids=np.array(["other", "img3", "img1", "img0", "img2"]),
             labels=np.array([0, 3, 1, 0, 2]))
    assert attach_conditioning(data, dit, labels=tmp_path / "labels.npz").cond.tolist() == [0, 1, 2, 3]
    carried = _data(cond=np.array([1, 1, 0, 0], np.int32))
    assert attach_conditioning(carried, dit).cond.tolist() == [1, 1, 0, 0]
    assert attach_conditioning(carried, dit, null=True).cond.tolist() == [NUM_CLASSES] * 4


def test_bad_labels_are_refused_with_the_culprit_named(dit, tmp_path):
    data = _data()
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.3 \(3 is the null class\), found 0\.\.7"):
        attach_conditioning(data, dit, labels=np.array([0, 1, 2, 7]))
    np.savez(tmp_path / "few.npz", ids=np.array(["img0", "img1"]), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"few\.npz: no 'labels' for 2 image\(s\) of tiny\.npz: 'img2', 'img3'"):
        attach_conditioning(data, dit, labels=tmp_path / "few.npz")
    with pytest.raises(ValueError, match="carries no labels"):
        attach_conditioning(data, dit)
    with pytest.raises(ValueError, match="takes labels, not text embeddings"):
        attach_conditioning(data, dit, text_embeddings=np.zeros((3, D), np.float32))
    with pytest.raises(ValueError, match="integers"):
        attach_conditioning(data, dit, labels=np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="no null class"):
        attach_conditioning(data, dit, null=True, spec=ConditionSpec("class", num_labels=3))


# ---- text embeddings --------------------------------------------------------------------------------


def test_text_embeddings_per_image_by_id_or_one_for_all(text_unet, tmp_path):
    data = _data()
    emb = np.random.default_rng(1).standard_normal((4, 5, D)).astype(np.float32)
    order = [2, 0, 3, 1]
    save_text_embeddings(tmp_path / "text.npz", [f"img{i}" for i in order] + ["spare"],
                         np.concatenate([emb[order], emb[:1]]))
    out = attach_conditioning(data, text_unet, text_embeddings=tmp_path / "text.npz")
    np.testing.assert_array_equal(out.cond, emb)
    one = emb[0]
    np.save(tmp_path / "prompt.npy", one)
    out = attach_conditioning(data, text_unet, text_embeddings=tmp_path / "prompt.npy")
    assert out.cond.shape == (4, 5, D) and np.all(out.cond == one)
    assert attach_conditioning(data, text_unet, text_embeddings=one, null=True).cond.shape == (4, 5, D)
    # What a text .npz data set already carries is used as is.
    np.testing.assert_array_equal(attach_conditioning(_data(cond=emb), text_unet).cond, emb)


def test_bad_text_embeddings_are_refused_with_file_and_shape(text_unet, tmp_path):
    data = _data()
    save_text_embeddings(tmp_path / "wide.npz", data.ids, np.zeros((4, 77, 768)))
    with pytest.raises(ValueError, match=r"wide\.npz: text embeddings have width D=768 \(shape \(77, 768\) per "
                                         r"image\) but the model's cross-attention reads D=8"):
        attach_conditioning(data, text_unet, text_embeddings=tmp_path / "wide.npz")
    np.savez(tmp_path / "noids.npz", text_embeddings=np.zeros((4, 5, D)))
    with pytest.raises(ValueError, match=r"noids\.npz: 'text_embeddings' of shape \(4, 5, 8\) without 'ids'"):
        attach_conditioning(data, text_unet, text_embeddings=tmp_path / "noids.npz")
    with pytest.raises(ValueError, match="empty prompt"):
        attach_conditioning(data, text_unet, null=True)
    with pytest.raises(ValueError, match="takes text embeddings, not labels"):
        attach_conditioning(data, text_unet, labels=1)
    with pytest.raises(ValueError, match="carries int32 conditions"):
        attach_conditioning(_data(cond=np.zeros(4, np.int32)), text_unet)
    with pytest.raises(ValueError, match="NaN"):
        attach_conditioning(data, text_unet, text_embeddings=np.full((5, D), np.nan, np.float32))
    with pytest.raises(ValueError, match="L=5 tokens but the model takes L=77"):
        attach_conditioning(data, text_unet, text_embeddings=np.zeros((5, D), np.float32),
                            spec=ConditionSpec("text", context_dim=D, context_length=77))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        attach_conditioning(data, text_unet, text_embeddings=tmp_path / "missing.npz")


def test_unconditional_models_take_no_condition():
    pixel = analytic_denoiser(np.zeros(SHAPE), make_schedule())
    assert attach_conditioning(_data(cond=np.zeros(4, np.int32)), pixel).cond is None
    with pytest.raises(ValueError, match="unconditional"):
        attach_conditioning(_data(), pixel, labels=1)


# ---- the attacks, unchanged, on conditional models -----------------------------------------------


@pytest.fixture(scope="module")
def fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


FEATURES = "loss,pia,secmi"


def _extract(den, data):
    return F.extract(den, data, FEATURES, seed=3, batch_size=2, progress=False)


def test_features_run_on_dit_and_text_unet_with_the_pixel_schema(fast_compile, dit, text_unet):
    pixel = _extract(analytic_denoiser(np.zeros(SHAPE), make_schedule()), _data(2))
    emb = np.random.default_rng(2).standard_normal((2, 5, D)).astype(np.float32)
    tables = {
        "dit": _extract(dit, attach_conditioning(_data(2), dit, labels=np.array([1, NUM_CLASSES]))),
        "text": _extract(text_unet, attach_conditioning(_data(2), text_unet, text_embeddings=emb)),
    }
    for name, table in tables.items():
        assert list(table.names) == list(pixel.names) == ["dl", "pia", "secmi"], name
        assert table.values.shape == (2, 3) and np.all(np.isfinite(table.values)), name
        assert np.all(table.values > 0), name  # random networks: no error is exactly zero
    # The condition reaches the network: another text embedding changes the features.
    other = _extract(text_unet, attach_conditioning(_data(2), text_unet, text_embeddings=emb[::-1]))
    assert np.max(np.abs(other.values - tables["text"].values)) > 1e-4
