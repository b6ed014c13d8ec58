"""The Flax CLIP image encoder against transformers' PyTorch models (the oracle), its JAX preprocessing
against torch's antialiased resize and transformers' CLIPImageProcessor, and DRC's embedding compare.

Tiny random CLIPVisionConfig (width 32, 2 layers, 2 heads, 30 px images in 6 px patches, projection
16); norm scales and biases randomised so none can hide. Tolerance 1e-5 (float32, CPU).
"""

import json

import jax
import numpy as np
import pytest
from click.testing import CliRunner

import jaxmia.models
from jaxmia.cli import main
from jaxmia.data import Dataset, write_npz
from jaxmia.drc import DRCConfig, run_drc, with_embedding_metric
from jaxmia.models import analytic_denoiser, clip_vision
from jaxmia.schedule import make_schedule
from jaxmia.table import load_table

from cond_oracle import quiet, randomise_vectors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=30,
              patch_size=6, projection_dim=16)
TEXT = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=98, eos_token_id=99, pad_token_id=0)


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    quiet()
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _torch_model(architecture, seed=0, **overrides):
    torch.manual_seed(seed)
    vision = transformers.CLIPVisionConfig(**{**VISION, **overrides})
    if architecture == "CLIPModel":
        config = transformers.CLIPConfig(text_config=TEXT, vision_config=vision.to_dict(), projection_dim=16)
        model = transformers.CLIPModel(config)
    else:
        model = getattr(transformers, architecture)(vision)
    return randomise_vectors(model, seed + 1)


def _torch_outputs(model, pixel_values_nhwc):
    """(pooled, image_embeds or None) of the PyTorch model."""
    x = torch.from_numpy(np.ascontiguousarray(pixel_values_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        # transformers 5's CLIPVisionModel is the vision transformer itself; the others wrap one
        inner = getattr(model, "vision_model", model)(pixel_values=x)
        projection = getattr(model, "visual_projection", None)
        embeds = None if projection is None else projection(inner.pooler_output).numpy()
        return inner.pooler_output.numpy(), embeds


def _torch_preprocess(images_uint8, size, mean=clip_vision.OPENAI_CLIP_MEAN, std=clip_vision.OPENAI_CLIP_STD):
    """Float CLIP preprocessing in torch: antialiased bicubic shortest-edge resize, centre crop, normalise."""
    x = torch.from_numpy(images_uint8.astype(np.float32).transpose(0, 3, 1, 2))
    h, w = x.shape[-2:]
    oh, ow = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    if (oh, ow) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(oh, ow), mode="bicubic", antialias=True,
                                            align_corners=False).clamp(0, 255)
    top, left = int((oh - size) / 2), int((ow - size) / 2)
    x = x[:, :, top:top + size, left:left + size] / 255.0
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("architecture", ["CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel"])
def test_matches_transformers(tmp_path, architecture):
    model = _torch_model(architecture, hidden_act="quick_gelu" if architecture != "CLIPModel" else "gelu")
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = clip_vision.load_clip_vision(tmp_path)
    assert loaded.architecture == architecture
    assert loaded.module.with_projection == (architecture != "CLIPVisionModel")
    x = np.random.default_rng(0).normal(size=(3, 30, 30, 3)).astype(np.float32)
    hidden, pooled, embeds = jax.jit(lambda p, v: loaded.module.apply({"params": p}, v))(loaded.params, x)
    ref_pooled, ref_embeds = _torch_outputs(model, x)
    assert hidden.shape == (3, 26, 32)
    assert np.max(np.abs(np.asarray(pooled) - ref_pooled)) <= TOL
    if ref_embeds is None:
        assert embeds is None
    else:
        assert embeds.shape == (3, 16) and np.max(np.abs(np.asarray(embeds) - ref_embeds)) <= TOL


def test_transformers_4_layout_and_position_ids(tmp_path):
    """transformers 4.x names a CLIPVisionModel's keys ``vision_model.*`` and may store ``position_ids``."""
    from safetensors.numpy import save_file

    model = _torch_model("CLIPVisionModel")
    model.save_pretrained(tmp_path / "v5", safe_serialization=True)
    state = {f"vision_model.{k}": v.numpy() for k, v in model.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = np.arange(26, dtype=np.int64)[None]
    (tmp_path / "v4").mkdir()
    save_file(state, str(tmp_path / "v4" / "model.safetensors"))
    (tmp_path / "v4" / "config.json").write_text((tmp_path / "v5" / "config.json").read_text())
    a, b = clip_vision.load_clip_vision(tmp_path / "v5"), clip_vision.load_clip_vision(tmp_path / "v4")
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_preprocessing_matches_torch_resize_and_the_processor(tmp_path):
    rng = np.random.default_rng(0)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    processor.save_pretrained(tmp_path)
    pre = clip_vision.CLIPPreprocess.from_file(tmp_path / "preprocessor_config.json")
    assert pre.shortest_edge == 30 and pre.crop_size == (30, 30) and pre.resample == 3
    run = jax.jit(pre.__call__)
    for h, w in ((30, 30), (20, 28), (64, 48), (31, 90), (8, 8)):  # as is, up, down, wide, tiny
        noise = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.round(127.5 + 100 * np.sin(yy / 3.0) * np.cos(xx / 4.0))[None, ..., None].repeat(3, -1)
        for images in (noise, smooth.astype(np.uint8)):
            got = np.asarray(run(images.astype(np.float32) / 127.5 - 1.0))
            assert got.shape == (len(images), 30, 30, 3)
            assert np.max(np.abs(got - _torch_preprocess(images, 30))) <= TOL
            ref = processor(images=list(images), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
            if (h, w) == (30, 30):
                assert np.max(np.abs(got - ref)) <= TOL  # rescale + normalise only: exact
            elif images is not noise:
                # the processor resizes uint8 images (rounding to integers): <= ~2/255 on smooth images
                assert np.max(np.abs(got - ref)) <= 0.02
    # Greyscale is repeated to RGB; the legacy CLIPFeatureExtractor keys (int size / crop) are read.
    grey = rng.uniform(-1, 1, (1, 30, 30, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(run(grey)), np.asarray(run(np.repeat(grey, 3, -1))), atol=1e-6)
    legacy = {"feature_extractor_type": "CLIPFeatureExtractor", "size": 30, "crop_size": 30, "do_center_crop": True,
              "do_normalize": True, "do_resize": True, "resample": 3, "image_mean": [0.5, 0.5, 0.5],
              "image_std": [0.5, 0.5, 0.5]}
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    old = clip_vision.CLIPPreprocess.from_file(tmp_path / "legacy.json")
    x = rng.uniform(-1, 1, (1, 30, 30, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(old(x)), x, atol=1e-6)  # mean = std = 0.5 undoes the [-1, 1] map
    for bad, words in (({**legacy, "resample": 1}, "resample=1 is not supported"),
                       ({**legacy, "size": {"longest_edge": 3}}, "size="),
                       ({**legacy, "image_std": [0.5, 0.5]}, "image_std="),
                       ({**legacy, "crop_pct": 0.9}, "'crop_pct'")):
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="bad.json") as err:
            clip_vision.CLIPPreprocess.from_file(tmp_path / "bad.json")
        assert words in str(err.value)


def _saved(tmp_path, architecture="CLIPVisionModelWithProjection", processor=True):
    model = _torch_model(architecture)
    model.save_pretrained(tmp_path, safe_serialization=True)
    if processor:
        transformers.CLIPImageProcessor(size={"shortest_edge": 30},
                                        crop_size={"height": 30, "width": 30}).save_pretrained(tmp_path)
    return model


def test_embedder_end_to_end_and_refusals(tmp_path):
    model = _saved(tmp_path / "m")
    embed = clip_vision.clip_image_embedder(tmp_path / "m", batch_size=2)
    images = np.random.default_rng(1).integers(0, 256, (3, 12, 16, 3), dtype=np.uint8)
    got = embed(images.astype(np.float32) / 127.5 - 1.0)  # 3 images in chunks of 2: one padded chunk
    _, expected = _torch_outputs(model, _torch_preprocess(images, 30))
    assert got.shape == (3, 16) and np.max(np.abs(got - expected)) <= TOL
    assert embed.info["output"] == "image_embeds" and len(embed.info["weights_digest"]) == 64
    # No preprocessor_config.json: the model's image_size with CLIP's mean and std.
    plain = _saved(tmp_path / "plain", "CLIPVisionModel", processor=False)
    embed = clip_vision.clip_image_embedder(tmp_path / "plain")
    pooled, _ = _torch_outputs(plain, _torch_preprocess(images, 30))
    assert embed.info["output"] == "pooler_output" and np.max(np.abs(embed(images / 127.5 - 1.0) - pooled)) <= TOL
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    cases = [({**config, "model_type": "clip_text_model"}, "model_type is 'clip_text_model'"),
             ({**config, "hidden_act": "xielu"}, "hidden_act='xielu'"),
             ({**config, "image_size": 32}, "image_size=32 is not a multiple of patch_size=6"),
             ({**config, "architectures": ["CLIPVisionModelWithProjection"]}, "needs 'visual_projection.weight'"),
             ({**config, "hidden_size": 16, "num_attention_heads": 1}, "weights do not match")]
    for bad, words in cases:
        (tmp_path / "plain" / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="config.json|model.safetensors") as err:
            clip_vision.load_clip_vision(tmp_path / "plain")
        assert words in str(err.value)
    (tmp_path / "plain" / "config.json").write_text(json.dumps(config))
    transformers.CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24}).save_pretrained(
        tmp_path / "plain")
    with pytest.raises(ValueError, match="preprocessing yields 24x24 images but the model takes image_size=30"):
        clip_vision.load_clip_vision(tmp_path / "plain")


def test_drc_scores_by_clip_cosine(tmp_path, monkeypatch):
    """Members of an analytic denoiser are restored exactly (cosine 1); the score equals a torch re-derivation."""
    rng = np.random.default_rng(0)
    model = _saved(tmp_path / "clip")
    x_star = rng.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    schedule = make_schedule(num_train_timesteps=1000)
    data = np.concatenate([x_star, rng.uniform(-1, 1, (1, 8, 8, 1)).astype(np.float32)])
    write_npz(tmp_path / "data.npz", ["p0", "p1", "u0"], data)
    monkeypatch.setattr(jaxmia.models, "load_denoiser", lambda path, **kw: analytic_denoiser(x_star, schedule))
    result = CliRunner().invoke(main, ["drc", "fake-model", str(tmp_path / "data.npz"), "--out", str(tmp_path / "out"),
                                       "--steps", "2", "--ratios", "0.25", "--kinds", "center", "--evidence", "0",
                                       "--embedder", str(tmp_path / "clip")])
    assert result.exit_code == 0, result.output
    table = load_table(tmp_path / "out" / "drc_scores.npz")
    assert "drc_cos_center_r25" in table.names and "drc_psnr_center_r25" in table.names
    assert table.meta["drc"]["config"]["score_metric"] == "cos"
    assert table.meta["drc"]["embedder"]["architecture"] == "CLIPVisionModelWithProjection"
    cos = table.column("drc_cos_center_r25")
    assert abs(cos[0] - 1) <= 1e-5 and abs(cos[1] - 1) <= 1e-5 and cos[2] < 0.999
    # The library path, with the embedder's inputs recorded and re-embedded by the PyTorch model.
    embedder = clip_vision.clip_image_embedder(tmp_path / "clip")
    seen = []

    def recording(images):
        seen.append(np.asarray(images))
        return embedder(images)

    cfg = with_embedding_metric(DRCConfig(kinds=("center",), ratios=(0.25,), steps=2))
    assert cfg.metrics == ("mse", "psnr", "ssim", "model", "cos") and cfg.score_metric == "cos"  # the defaults + cos
    run_drc(analytic_denoiser(x_star, schedule), Dataset(["p0", "p1", "u0"], data, None, "d"), cfg,
            tmp_path / "lib", evidence=0, progress=False, embed_fn=recording)
    originals, restored = seen

    def torch_embed(images):
        uint = (images + 1.0) * 127.5  # the float 0..255 values; the torch path rescales the same way
        return _torch_outputs(model, _torch_preprocess_float(np.repeat(uint, 3, -1)))[1]

    a, b = torch_embed(originals), torch_embed(restored)
    expected = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    np.testing.assert_allclose(load_table(tmp_path / "lib" / "drc_scores.npz").column("drc_cos_center_r25"), expected,
                               atol=1e-5)
    with pytest.raises(ValueError, match="metric 'cos' needs embed_fn"):
        run_drc(analytic_denoiser(x_star, schedule), Dataset(["p0"], data[:1], None, "d"), cfg, tmp_path / "x",
                evidence=0, progress=False)


def _torch_preprocess_float(values):
    """:func:`_torch_preprocess` on float 0..255 values (restorations are not integers)."""
    x = torch.from_numpy(values.astype(np.float32).transpose(0, 3, 1, 2))
    x = torch.nn.functional.interpolate(x, size=(30, 30), mode="bicubic", antialias=True,
                                        align_corners=False).clamp(0, 255) / 255.0
    mean, std = torch.tensor(clip_vision.OPENAI_CLIP_MEAN), torch.tensor(clip_vision.OPENAI_CLIP_STD)
    return ((x - mean[:, None, None]) / std[:, None, None]).numpy().transpose(0, 2, 3, 1)


def test_audit_drc_stage_uses_the_embedder(tmp_path):
    """``audit.drc_embedder`` (a config field): the audit's DRC stage is scored by CLIP cosine (greyscale → RGB)."""
    from jaxmia.audit import load_config
    from jaxmia.audit.run import _drc_evidence

    _saved(tmp_path / "clip")
    rng = np.random.default_rng(0)
    x_star = rng.uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    denoiser = analytic_denoiser(x_star, make_schedule(num_train_timesteps=1000))
    p_set = Dataset(["p0", "p1", "p2"], x_star, None, "P")
    u_set = Dataset(["u0", "u1"], rng.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32), None, "U")
    cfg = load_config(None, {"audit": {"drc_images": 2, "drc_embedder": str(tmp_path / "clip")},
                             "drc": {"kinds": ["center"], "ratios": [0.25], "steps": 2, "restore": "repaint"}})
    assert cfg.to_dict()["audit"]["drc_embedder"] == str(tmp_path / "clip")
    drc = _drc_evidence(denoiser, p_set, u_set, cfg, tmp_path / "drc", quiet=True).to_json()  # the report's form
    assert drc["metric"] == "cos" and drc["embedder"]["output"] == "image_embeds"
    for side in ("published", "unpublished"):
        table = load_table(tmp_path / "drc" / side / "drc_scores.npz")
        assert table.meta["drc"]["config"]["metrics"] == ["mse", "psnr", "ssim", "model", "cos"]
        assert drc[side]["mean_cos"] == pytest.approx(float(table.column("drc_cos_center_r25").mean()))
    assert drc["published"]["mean_cos"] == pytest.approx(1.0, abs=1e-4)  # members restored (almost) exactly
    assert drc["unpublished"]["mean_cos"] < 0.999
