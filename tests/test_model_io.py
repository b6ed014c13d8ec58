"""Weight loading, conversion, writing and load_denoiser (no network forward passes: the parity of
the forward pass is tested in test_unet2d_parity.py)."""

import dataclasses
import inspect
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from jaxmia import schedule as sched
from jaxmia.models import (
    UNet2DConfig, UNet2DModel, build_model, flax_to_torch, init_params, load_denoiser, load_unet,
    register_model, save_unet, torch_to_flax, unregister_model, weights_digest,
)
from jaxmia.models.convert import check_params
from jaxmia.models.unet2d import abstract_params
from jaxmia.models import layout as model_layout
from unet_oracle import TINY, saved, torch_unet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ST = "diffusion_pytorch_model.safetensors"


def flat(params):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def assert_trees_equal(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


@pytest.fixture(scope="module")
def tiny_torch():
    return torch_unet(TINY)


@pytest.fixture
def tiny_folder(tmp_path, tiny_torch):
    return saved(tiny_torch, tmp_path / "tiny")


def torch_state(model):
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_config_defaults_mirror_diffusers():
    signature = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    fields = {f.name: f.default for f in dataclasses.fields(UNet2DConfig)}
    assert set(fields) == set(signature) - {"self"}
    for name, default in fields.items():
        expected = signature[name].default
        assert default == (tuple(expected) if isinstance(expected, (list, tuple)) else expected), name


def test_absent_attention_head_dim_is_diffusers_default_and_null_is_one_head():
    assert UNet2DConfig.from_diffusers({}).attention_head_dim == 8
    assert UNet2DConfig.from_diffusers({"attention_head_dim": None}).attention_head_dim is None


def test_written_config_is_accepted_by_diffusers(tmp_path, tiny_folder):
    module, config, params = load_unet(tiny_folder)
    save_unet(tmp_path / "flax", config, params)
    written = json.loads((tmp_path / "flax" / "config.json").read_text())
    assert written["_class_name"] == "UNet2DModel" and "_diffusers_version" in written
    rebuilt = diffusers.UNet2DModel.from_config(written)
    original = json.loads((tiny_folder / "config.json").read_text())
    for key, value in rebuilt.config.items():
        if not key.startswith("_"):
            expected = original[key]
            assert (list(value) if isinstance(value, tuple) else value) == expected, key


@pytest.mark.parametrize("change,culprit", [
    ({"resnet_groups": 8}, "'resnet_groups'"),
    ({"down_block_types": ["SkipDownBlock2D", "AttnDownBlock2D"]}, "SkipDownBlock2D"),
    ({"up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"]}, "CrossAttnUpBlock2D"),
    ({"time_embedding_type": "fourier"}, "fourier"),
    ({"act_fn": "tanh"}, "tanh"),
    ({"resnet_time_scale_shift": "spatial"}, "spatial"),
    ({"class_embed_type": "projection"}, "projection"),
    ({"norm_num_groups": 6}, "norm_num_groups"),
    ({"layers_per_block": "2"}, "layers_per_block"),
    ({"sample_size": 15}, "sample_size"),
    ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel"),
])
def test_bad_config_is_refused_by_key_and_file(tmp_path, tiny_folder, change, culprit):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        load_unet(folder)
    assert culprit in str(err.value) and "config.json" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_and_invalid_json(tmp_path, tiny_folder):
    folder = tmp_path / "noconfig"
    shutil.copytree(tiny_folder, folder)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_unet(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_unet(folder)
    (folder / "config.json").write_text(json.dumps({"block_out_channels": [16, 32]}))
    with pytest.raises(ValueError, match="no _class_name"):
        load_unet(folder)


def test_registry_dispatches_on_class_name():
    calls = []

    @register_model("TestOnlyModel")
    def build(config, *, source):
        calls.append((config["width"], source))
        return "spec"

    try:
        assert build_model({"_class_name": "TestOnlyModel", "width": 3}, source="x.json") == "spec"
        assert calls == [(3, "x.json")]
    finally:
        unregister_model("TestOnlyModel")
    with pytest.raises(ValueError, match="'TestOnlyModel' is not supported"):
        build_model({"_class_name": "TestOnlyModel"})


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def test_safetensors_conversion_and_inverse(tiny_folder, tiny_torch):
    _, _, params = load_unet(tiny_folder)
    kernel = np.asarray(params["down_blocks_1"]["attentions_0"]["to_q"]["kernel"])
    np.testing.assert_array_equal(kernel, tiny_torch.down_blocks[1].attentions[0].to_q.weight.detach().numpy().T)
    conv = np.asarray(params["conv_in"]["kernel"])
    np.testing.assert_array_equal(conv, np.transpose(tiny_torch.conv_in.weight.detach().numpy(), (2, 3, 1, 0)))
    back = flax_to_torch(params)
    expected = torch_state(tiny_torch)
    assert back.keys() == expected.keys()
    for k in back:
        np.testing.assert_array_equal(back[k], expected[k], err_msg=k)
    old = flax_to_torch(params, old_attention_names=True)
    assert "down_blocks.1.attentions.0.query.weight" in old and "mid_block.attentions.0.proj_attn.bias" in old


def test_old_attention_names_load_identically(tmp_path, tiny_folder):
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    tensors = load_file(tiny_folder / ST)
    old = {}
    for key, value in tensors.items():
        for new, legacy in renames.items():
            key = key.replace(new, legacy)
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    folder = tmp_path / "old_names"
    folder.mkdir()
    shutil.copy(tiny_folder / "config.json", folder)
    save_file(old, folder / ST, metadata={"format": "pt"})
    assert_trees_equal(load_unet(folder)[2], load_unet(tiny_folder)[2])
    # Both spellings of one weight in one file: refused by name.
    save_file({**old, "mid_block.attentions.0.to_q.weight": old["mid_block.attentions.0.query.weight"]},
              folder / ST, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="both map to mid_block/attentions_0/to_q/kernel"):
        load_unet(folder)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_weights_are_cast_to_float32(tmp_path, dtype):
    model = torch_unet(TINY).to(getattr(torch, dtype))
    _, _, params = load_unet(saved(model, tmp_path / dtype))
    assert {np.asarray(v).dtype for v in flat(params).values()} == {np.dtype("float32")}
    back = flax_to_torch(params)
    for k, v in torch_state(model).items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_sharded_safetensors(tmp_path, tiny_torch, tiny_folder):
    tiny_torch.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="40KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_trees_equal(load_unet(tmp_path / "sharded")[2], load_unet(tiny_folder)[2])


def test_mid_block_none_and_one_channel_convert(tmp_path):
    config = {**TINY, "mid_block_type": None, "in_channels": 1, "out_channels": 1}
    model = torch_unet(config)
    _, cfg, params = load_unet(saved(model, tmp_path / "nomid"))
    assert "mid_block" not in params and cfg.sample_shape == (16, 16, 1)
    assert params["conv_in"]["kernel"].shape == (3, 3, 1, 16)


def test_squeezed_1x1_conv_feeds_a_linear_layer():
    abstract = {"proj": {"kernel": jax.ShapeDtypeStruct((4, 3), jnp.float32),
                         "bias": jax.ShapeDtypeStruct((3,), jnp.float32)}}
    weight = np.arange(12, dtype=np.float32).reshape(3, 4, 1, 1)
    out = torch_to_flax({"proj.weight": weight, "proj.bias": np.zeros(3, np.float32)}, abstract)
    np.testing.assert_array_equal(out["proj"]["kernel"], weight[:, :, 0, 0].T)


def _rewrite(folder, edit):
    tensors = dict(load_file(folder / ST))
    edit(tensors)
    save_file(tensors, folder / ST, metadata={"format": "pt"})


def test_weight_mismatches_are_refused_by_key(tmp_path, tiny_folder):
    folder = tmp_path / "bad"
    shutil.copytree(tiny_folder, folder)
    key = "down_blocks.0.resnets.0.conv1.weight"
    _rewrite(folder, lambda t: t.update({key: np.zeros((16, 3, 3, 3), np.float32)}))
    with pytest.raises(ValueError) as err:
        load_unet(folder)
    message = str(err.value)
    assert key in message and "down_blocks_0/resnets_0/conv1/kernel" in message and ST in message
    shutil.copy(tiny_folder / ST, folder / ST)
    _rewrite(folder, lambda t: t.update({"mid_block.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match="unexpected weight 'mid_block.extra.weight'"):
        load_unet(folder)
    shutil.copy(tiny_folder / ST, folder / ST)
    _rewrite(folder, lambda t: t.pop("up_blocks.0.attentions.1.to_out.0.bias"))
    with pytest.raises(ValueError, match="missing weight 'up_blocks.0.attentions.1.to_out.0.bias'"):
        load_unet(folder)


def test_corrupt_safetensors_is_refused_by_file(tmp_path, tiny_folder):
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_folder, folder)
    (folder / ST).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match=f"{ST}: not a readable safetensors file"):
        load_unet(folder)


def test_init_params_fit_the_model_with_pytorch_default_ranges():
    module = UNet2DModel(UNet2DConfig(**{**TINY, "num_class_embeds": 4}))
    params = init_params(module, seed=3)
    check_params(params, abstract_params(module))
    assert_trees_equal(params, init_params(module, seed=3))
    assert weights_digest(params) != weights_digest(init_params(module, seed=4))
    np.testing.assert_array_equal(params["conv_norm_out"]["scale"], 1.0)
    np.testing.assert_array_equal(params["conv_norm_out"]["bias"], 0.0)
    kernel = params["down_blocks_0"]["resnets_0"]["conv1"]["kernel"]  # 3x3x16 fan-in
    assert np.abs(kernel).max() <= 1 / np.sqrt(3 * 3 * 16) and np.abs(kernel).max() > 0.9 / np.sqrt(3 * 3 * 16)
    assert abs(np.std(params["class_embedding"]["embedding"]) - 1.0) < 0.1


def test_pickle_only_folder_is_refused(tmp_path, tiny_torch):
    tiny_torch.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    assert (tmp_path / "pickle" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError) as err:
        load_unet(tmp_path / "pickle")
    assert "pickle" in str(err.value) and "diffusion_pytorch_model.bin" in str(err.value)
    (tmp_path / "pickle" / "diffusion_pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_unet(tmp_path / "pickle")


# --------------------------------------------------------------------------------------------------
# Flax msgpack and the digest
# --------------------------------------------------------------------------------------------------


def test_msgpack_round_trip_is_exact(tmp_path, tiny_folder):
    module, config, params = load_unet(tiny_folder)
    save_unet(tmp_path / "flax", config.to_diffusers(), params)
    assert not (tmp_path / "flax" / ST).exists()
    module2, config2, params2 = load_unet(tmp_path / "flax")
    assert config2 == config and module2 == module
    assert_trees_equal(params2, params)
    assert weights_digest(params2) == weights_digest(params)


def test_msgpack_errors_name_the_file_and_key(tmp_path, tiny_folder):
    _, config, params = load_unet(tiny_folder)
    folder = save_unet(tmp_path / "flax", config, params)
    (folder / "diffusion_flax_model.msgpack").write_bytes(b"\x93corrupt")
    with pytest.raises(ValueError, match="diffusion_flax_model.msgpack: not a valid Flax msgpack"):
        load_unet(folder)
    other = dataclasses.replace(config, block_out_channels=(16, 48))
    with pytest.raises(ValueError, match="down_blocks_1/attentions_0/group_norm/bias' has shape"):
        save_unet(folder, other, params)
    (folder / "config.json").write_text(json.dumps(other.to_diffusers()))
    save_unet(tmp_path / "flax_ok", config, params)
    shutil.copy(tmp_path / "flax_ok" / "diffusion_flax_model.msgpack", folder)
    with pytest.raises(ValueError, match="msgpack: parameters do not match.*down_blocks_1/attentions_0/group_norm/bias"):
        load_unet(folder)


def test_weights_digest_sees_names_values_and_dtypes():
    a = {"x": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": {"bias": np.ones(2, np.float32)}}
    reordered = {"b": {"bias": np.ones(2, np.float32)}, "x": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    assert weights_digest(a) == weights_digest(reordered) == weights_digest(jax.tree_util.tree_map(jnp.asarray, a))
    changed = {"x": {"kernel": a["x"]["kernel"].copy()}, "b": a["b"]}
    changed["x"]["kernel"][1, 2] += 1e-6
    renamed = {"y": a["x"], "b": a["b"]}
    reshaped = {"x": {"kernel": a["x"]["kernel"].reshape(3, 2)}, "b": a["b"]}
    as_f64 = {"x": {"kernel": a["x"]["kernel"].astype(np.float64)}, "b": a["b"]}
    digests = {weights_digest(t) for t in (a, changed, renamed, reshaped, as_f64)}
    assert len(digests) == 5 and all(len(d) == 64 for d in digests)


# --------------------------------------------------------------------------------------------------
# load_denoiser
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def pipeline(tmp_path, tiny_torch):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    diffusers.DDPMPipeline(unet=tiny_torch, scheduler=scheduler).save_pretrained(tmp_path / "pipe",
                                                                                safe_serialization=True)
    return tmp_path / "pipe"


def test_load_denoiser_from_pipeline_and_model_folders(pipeline):
    den = load_denoiser(pipeline)
    _, _, params = load_unet(pipeline / "unet")
    assert den.digest == weights_digest(params) and den.sample_shape == (16, 16, 3)
    assert den.cond_kind == "none" and den.x0_clip == 1.0 and not den.learned_sigma
    expected = sched.make_schedule("scaled_linear", 1000, 1e-4, 0.02).alphas_cumprod
    np.testing.assert_array_equal(den.schedule.alphas_cumprod, expected)
    # A model folder finds ../scheduler/scheduler_config.json.
    by_model = load_denoiser(pipeline / "unet")
    assert by_model.digest == den.digest
    np.testing.assert_array_equal(by_model.schedule.alphas_cumprod, expected)
    # An explicit schedule wins over the file.
    linear = sched.make_schedule("linear", 1000)
    assert load_denoiser(pipeline, schedule=linear).schedule is linear


def test_load_denoiser_demo(tmp_path, pipeline, monkeypatch):
    # "demo" resolves through layout.BUNDLED_TARGETS (the RGB target joined it), so patch that table.
    monkeypatch.setitem(model_layout.BUNDLED_TARGETS, "demo", pipeline)
    assert load_denoiser("demo").digest == load_denoiser(pipeline).digest
    monkeypatch.setitem(model_layout.BUNDLED_TARGETS, "demo", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="demo target"):
        load_denoiser("demo")


def test_load_denoiser_refusals(tmp_path, pipeline, tiny_folder):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json.*--scheduler PATH.*--family NAME"):
        load_denoiser(tiny_folder)
    (pipeline / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        load_denoiser(pipeline)
    with pytest.raises(FileNotFoundError, match="neither a pipeline folder"):
        load_denoiser(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_denoiser(tmp_path / "nowhere")
    index = json.loads((pipeline / "model_index.json").read_text())
    (pipeline / "model_index.json").write_text(json.dumps({**index, "vqvae": ["diffusers", "VQModel"]}))
    with pytest.raises(FileNotFoundError, match="'vqvae' component \\(VQModel\\) is missing"):
        load_denoiser(pipeline, schedule=sched.make_schedule())
    config = json.loads((tiny_folder / "config.json").read_text())
    (tiny_folder / "config.json").write_text(json.dumps({**config, "sample_size": None}))
    with pytest.raises(ValueError, match="sample_size is null"):
        load_denoiser(tiny_folder, schedule=sched.make_schedule())
    (tiny_folder / "config.json").write_text(json.dumps({**config, "class_embed_type": "identity"}))
    with pytest.raises(ValueError, match="'embedding' conditioning"):
        load_denoiser(tiny_folder, schedule=sched.make_schedule())
