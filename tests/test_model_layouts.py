"""Model folders as people save them: every layout diffusers writes, written by diffusers' own
``save_pretrained``, loads with no flag; a bare model folder loads with --scheduler or --family;
``jaxmia inspect`` says what was found."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from jaxmia import schedule as sched
from jaxmia.cli import main
from jaxmia.models import load_denoiser
from jaxmia.models.summary import describe_model

from unet_oracle import TINY, torch_forward, torch_unet

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def unet():
    return torch_unet(TINY)


@pytest.fixture(scope="module")
def scheduler():
    # not the default schedule, so a fallback to defaults would show
    return diffusers.DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2",
                                   prediction_type="epsilon")


def _assert_uses(den, unet, scheduler):
    np.testing.assert_allclose(np.asarray(den.schedule.alphas_cumprod), scheduler.alphas_cumprod.numpy(),
                               rtol=1e-6, atol=1e-7)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    t = np.array([3, 400], np.int32)
    np.testing.assert_allclose(np.asarray(den.eps_batch(x, t)), torch_forward(unet, x, t), atol=2e-5)


def test_model_folder_with_scheduler_inside(tmp_path, unet, scheduler):
    unet.save_pretrained(tmp_path / "model")
    scheduler.save_pretrained(tmp_path / "model" / "scheduler")
    _assert_uses(load_denoiser(tmp_path / "model"), unet, scheduler)


def test_model_folder_with_scheduler_config_beside_config_json(tmp_path, unet, scheduler):
    unet.save_pretrained(tmp_path / "model")
    scheduler.save_pretrained(tmp_path / "model")  # writes scheduler_config.json next to config.json
    _assert_uses(load_denoiser(tmp_path / "model"), unet, scheduler)


def test_model_folder_with_sibling_scheduler(tmp_path, unet, scheduler):
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    scheduler.save_pretrained(tmp_path / "pipe" / "scheduler")
    _assert_uses(load_denoiser(tmp_path / "pipe" / "unet"), unet, scheduler)  # ../scheduler/
    _assert_uses(load_denoiser(tmp_path / "pipe"), unet, scheduler)  # the folder holding both


def test_pipeline_saved_by_diffusers(tmp_path, unet, scheduler):
    diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "model_index.json").is_file()
    _assert_uses(load_denoiser(tmp_path / "pipe"), unet, scheduler)


def test_pipeline_index_with_its_own_component_names(tmp_path, unet, scheduler):
    root = tmp_path / "pipe"
    unet.save_pretrained(root / "denoiser")
    scheduler.save_pretrained(root / "noise_schedule")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "MyPipeline", "denoiser": ["diffusers", "UNet2DModel"],
        "noise_schedule": ["diffusers", "DDPMScheduler"], "safety_checker": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"]}))
    den = load_denoiser(root)
    _assert_uses(den, unet, scheduler)
    d = describe_model(root)
    assert d["layout"]["model_dir"] == str(root / "denoiser")
    assert "noise_schedule" in d["schedule"]["source"]
    # an index without a denoiser jaxmia knows names its components
    (root / "model_index.json").write_text(json.dumps({"prior": ["diffusers", "PriorTransformer"]}))
    with pytest.raises(ValueError, match=r"declares no denoiser.*prior=PriorTransformer"):
        load_denoiser(root)


def test_bare_model_folder_needs_scheduler_or_family(tmp_path, unet, scheduler):
    unet.save_pretrained(tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match=r"no scheduler config.*--scheduler PATH.*--family NAME"):
        load_denoiser(tmp_path / "bare")
    scheduler.save_pretrained(tmp_path / "sched")
    _assert_uses(load_denoiser(tmp_path / "bare", scheduler=tmp_path / "sched"), unet, scheduler)
    _assert_uses(load_denoiser(tmp_path / "bare", scheduler=tmp_path / "sched" / "scheduler_config.json"),
                 unet, scheduler)
    with pytest.raises(FileNotFoundError, match="--scheduler file not found"):
        load_denoiser(tmp_path / "bare", scheduler=tmp_path)
    den = load_denoiser(tmp_path / "bare", family="ddpm_pixel")
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    np.testing.assert_allclose(np.asarray(den.schedule.alphas_cumprod), reference.alphas_cumprod.numpy(), rtol=1e-6)


def test_explicit_scheduler_overrides_the_folders(tmp_path, unet, scheduler):
    unet.save_pretrained(tmp_path / "model")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "model")  # the default linear schedule
    scheduler.save_pretrained(tmp_path / "other")
    _assert_uses(load_denoiser(tmp_path / "model", scheduler=tmp_path / "other"), unet, scheduler)
    assert describe_model(tmp_path / "model", scheduler=tmp_path / "other")["schedule"]["source"].endswith(
        "(--scheduler)")


def test_cli_flags_and_inspect(tmp_path, unet, scheduler):
    unet.save_pretrained(tmp_path / "bare")
    scheduler.save_pretrained(tmp_path / "sched")
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(tmp_path / "bare")])
    assert result.exit_code == 2 and "--scheduler PATH" in result.output and "--family NAME" in result.output
    assert len(result.output.strip().splitlines()) == 1  # one clean line, no traceback
    result = runner.invoke(main, ["inspect", str(tmp_path / "bare"), "--scheduler", str(tmp_path / "sched")])
    assert result.exit_code == 0, result.output
    n_params = sum(p.numel() for p in unet.parameters())
    assert f"UNet2DModel: {n_params:,} parameters" in result.output
    assert "T = 500" in result.output and str(tmp_path / "sched" / "scheduler_config.json") in result.output
    result = runner.invoke(main, ["inspect", str(tmp_path / "bare"), "--family", "ddpm_pixel", "--json"])
    d = json.loads(result.output)
    assert d["layout"]["family"] == "ddpm_pixel" and d["denoiser"]["parameters"] == n_params
    assert d["denoiser"]["sample_shape"] == [16, 16, 3] and d["latent"] is None
    assert d["schedule"]["num_train_timesteps"] == 1000 and d["schedule"]["source"].startswith("model family")
    # features on the bare folder: --family fills the schedule; the table records its digest
    images = np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "data.npz", images=images, ids=np.array(["a", "b", "c"]))
    out = tmp_path / "f.npz"
    result = runner.invoke(main, ["features", str(tmp_path / "bare"), str(tmp_path / "data.npz"), "--features",
                                  "loss", "--out", str(out), "--family", "ddpm_pixel"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "f.npz.json").read_text())
    assert meta["identity"]["schedule_digest"] == sched.schedule_digest(
        load_denoiser(tmp_path / "bare", family="ddpm_pixel").schedule)
    # the 500-step schedule is refused for a timestep the requested signal queries beyond it, naming the problem
    # (only the requested signals' timesteps count: loss at its default t = 100 fits)
    result = runner.invoke(main, ["features", str(tmp_path / "bare"), str(tmp_path / "data.npz"), "--features",
                                  "loss", "--set", "features.dl_timestep=600", "--out", str(tmp_path / "g.npz"),
                                  "--scheduler", str(tmp_path / "sched")])
    assert result.exit_code == 2 and "outside the model's schedule (0..499)" in result.output
