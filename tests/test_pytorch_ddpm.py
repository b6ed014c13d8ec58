"""pytorch-ddpm checkpoints → jaxmia (docs/methods/models.md §7): ε parity against a faithful PyTorch
re-implementation of ``w86763777/pytorch-ddpm``'s UNet, through ``jaxmia convert``.

The oracle and the checkpoint builder live in ``tests/ddpm_standin.py`` (shared with
``test_reproduce_cifar10.py``); PyTorch is a test-only dependency.
"""

import json

import jax
import numpy as np
import pytest
from click.testing import CliRunner

from jaxmia.cli import main
from jaxmia.models import load_denoiser
from jaxmia.models import pytorch_ddpm as pd

torch = pytest.importorskip("torch")

from ddpm_standin import FLAGFILE, IMG, TimeEmbedding, UNet, eps_oracle, write_checkpoint  # noqa: E402


# --------------------------------------------------------------------------------------------------
# Fixtures: a small checkpoint in pytorch-ddpm's layout (built by tests/ddpm_standin.py)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("pytorch_ddpm"))


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "ddpm"
    result = CliRunner().invoke(main, ["convert", str(checkpoint["path"]), "--to", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


# --------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------


def test_eps_matches_pytorch_ddpm(checkpoint, converted):
    out, output = converted
    assert "ema_model" in output and "pytorch-ddpm" in output
    denoiser = load_denoiser(out)
    assert denoiser.sample_shape == (IMG, IMG, 3) and denoiser.x0_clip == 1.0 and not denoiser.is_latent
    np.testing.assert_allclose(denoiser.schedule.alphas_cumprod,
                               np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-5)
    x = np.random.default_rng(0).standard_normal((3, IMG, IMG, 3)).astype(np.float32)
    t = np.array([0, 100, 999], np.int32)
    ours = np.asarray(jax.jit(denoiser.eps_batch)(x, t))
    ref = eps_oracle(checkpoint["ema"], x, t)
    err = np.abs(ours - ref).max()
    print(f"pytorch-ddpm eps parity: max abs diff {err:.3g} (|eps| max {np.abs(ref).max():.3g})")
    assert err <= 1e-4
    # The net weights differ from the EMA weights, so the default choice is visible.
    assert np.abs(eps_oracle(checkpoint["net"], x, t) - ref).max() > 1e-2


def test_no_ema_takes_net_model(checkpoint, tmp_path):
    """--no-ema converts net_model: the written weights are exactly the net weights' conversion
    (ε parity of the conversion itself is the test above)."""
    from jaxmia.models import convert, weights_digest
    from jaxmia.models.unet2d import UNet2DModel, abstract_params

    out = tmp_path / "net"
    result = CliRunner().invoke(main, ["convert", str(checkpoint["path"]), "--to", str(out), "--no-ema",
                                       "--format", "pytorch-ddpm"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "jaxmia_conversion.json").read_text())
    assert record["weights"] == "net_model" and record["hyperparameters"]["ch_mult"] == [1, 2]
    hp = pd.hyperparameters(pd.read_flagfile(checkpoint["root"] / "flagfile.txt"), source="flags")
    target = abstract_params(UNet2DModel(hp.unet_config()))

    def digest_of(model):
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        return weights_digest(convert.torch_to_flax(pd.to_diffusers_state_dict(state, hp), target))

    assert record["weights_digest"] == digest_of(checkpoint["net"]) != digest_of(checkpoint["ema"])
    assert load_denoiser(out).digest == record["weights_digest"]


def _eps_variants(checkpoint, changes):
    """max |ε − oracle| for the converted weights under the right config and under each change."""
    import dataclasses

    from jaxmia.models import convert
    from jaxmia.models.unet2d import UNet2DModel, abstract_params

    hp = pd.hyperparameters(pd.read_flagfile(checkpoint["root"] / "flagfile.txt"), source="flags")
    renamed = pd.to_diffusers_state_dict(pd.load_checkpoint(checkpoint["path"]), hp)
    x = np.random.default_rng(2).standard_normal((1, IMG, IMG, 3)).astype(np.float32)
    t = np.array([300], np.int32)
    ref = eps_oracle(checkpoint["ema"], x, t)
    errors, compiled = {}, {}
    for name, (change, state) in changes(renamed, hp).items():
        config = dataclasses.replace(hp.unet_config(), **change)
        apply = compiled.setdefault(config, jax.jit(UNet2DModel(config).apply))  # one compile per config
        params = convert.torch_to_flax(state, abstract_params(UNet2DModel(config)))
        errors[name] = np.abs(np.asarray(apply({"params": params}, x, t)) - ref).max()
    return errors


def test_the_permutation_matters(checkpoint):
    """Without the column permutation (a plain rename) ε is silently wrong (§7 table, row 1)."""

    def changes(renamed, hp):
        unpermuted = dict(renamed)
        back = np.argsort(pd.interleave_permutation(hp.ch))
        unpermuted["time_embedding.linear_1.weight"] = renamed["time_embedding.linear_1.weight"][:, back]
        return {"converted": ({}, renamed), "unpermuted": ({}, unpermuted)}

    errors = _eps_variants(checkpoint, changes)
    assert errors["converted"] <= 1e-4 < 1e-3 < errors["unpermuted"]


@pytest.mark.slow
def test_each_config_difference_matters(checkpoint):
    """freq_shift, norm_eps and downsample_padding each change ε (§7 table, rows 2-4)."""

    def changes(renamed, hp):
        return {str(c): (c, renamed) for c in (dict(freq_shift=1), dict(norm_eps=1e-6), dict(downsample_padding=0))}

    for name, err in _eps_variants(checkpoint, changes).items():
        assert err > 1e-5, name


def test_permutation_and_table():
    ch = 8
    perm = pd.interleave_permutation(ch)
    np.testing.assert_array_equal(perm, [0, 2, 4, 6, 1, 3, 5, 7])
    table = pd.sinusoid_table(50, ch)
    # Interleaved table, reordered by π, is diffusers' concatenated [sin, cos] with freq_shift 0.
    from jaxmia.models.blocks import timestep_sinusoid

    concatenated = np.asarray(timestep_sinusoid(np.arange(50), ch, flip_sin_to_cos=False, freq_shift=0))
    np.testing.assert_allclose(table[:, perm], concatenated, atol=2e-5)
    oracle = TimeEmbedding(50, ch, 4 * ch).timembedding[0].weight.detach().numpy()
    np.testing.assert_allclose(table, oracle, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Flags and refusals
# --------------------------------------------------------------------------------------------------


def test_flagfile_parsing(tmp_path):
    path = tmp_path / "flags.txt"
    path.write_text("# comment\n--ch=64\n--ch_mult=1,2\n--ch_mult=4\n--attn=0\n--attn=2\n--train\n\n--ch=96\n")
    flags = pd.read_flagfile(path)
    assert flags["ch_mult"] == ["1,2", "4"] and flags["train"] == ["true"]
    hp = pd.hyperparameters(flags, source=str(path), assume_cifar10_defaults=True)
    assert hp.ch == 96 and hp.ch_mult == (1, 2, 4) and hp.attn == (0, 2) and hp.T == 1000
    cfg = hp.unet_config()
    assert cfg.down_block_types == ("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert cfg.up_block_types == ("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D")
    assert (cfg.freq_shift, cfg.flip_sin_to_cos, cfg.norm_eps, cfg.downsample_padding, cfg.attention_head_dim) == \
        (0, False, 1e-5, 1, None)
    with pytest.raises(ValueError, match=r"flag\(s\) --num_res_blocks, --dropout, --T.* missing.*cifar10-defaults"):
        pd.hyperparameters(flags, source=str(path))
    path.write_text("--ch=abc\n")
    with pytest.raises(ValueError, match="--ch=abc is not a int"):
        pd.hyperparameters(pd.read_flagfile(path), source=str(path), assume_cifar10_defaults=True)
    path.write_text("ch=3\n")
    with pytest.raises(ValueError, match=r"flags.txt:1: not an absl flag line"):
        pd.read_flagfile(path)
    path.write_text("--attn=5\n")
    with pytest.raises(ValueError, match="--attn=5 is not a level index"):
        pd.hyperparameters(pd.read_flagfile(path), source=str(path), assume_cifar10_defaults=True)
    path.write_text("--mean_type=xprev\n")
    with pytest.raises(ValueError, match="--mean_type=xprev is not supported"):
        pd.hyperparameters(pd.read_flagfile(path), source=str(path), assume_cifar10_defaults=True)


def test_missing_flagfile_refused_unless_assumed(checkpoint, tmp_path):
    lone = tmp_path / "lone" / "ckpt.pt"
    lone.parent.mkdir()
    lone.write_bytes(checkpoint["path"].read_bytes())
    result = CliRunner().invoke(main, ["convert", str(lone), "--to", str(tmp_path / "a")])
    assert result.exit_code == 2 and "no flagfile beside the checkpoint" in result.output
    # The CIFAR-10 defaults do not fit this small model: refused by key, nothing silently wrong.
    result = CliRunner().invoke(main, ["convert", str(lone), "--to", str(tmp_path / "b"), "--assume-cifar10-defaults"])
    assert result.exit_code == 2 and "does not match the flags (ch=128" in result.output
    # An explicit flagfile elsewhere works.
    result = CliRunner().invoke(main, ["convert", str(lone), "--to", str(tmp_path / "c"), "--flagfile",
                                       str(checkpoint["root"] / "flagfile.txt")])
    assert result.exit_code == 0, result.output


def test_wrong_T_caught_by_the_table(checkpoint, tmp_path):
    flags = tmp_path / "flags.txt"
    flags.write_text(FLAGFILE.replace("--T=1000", "--T=500"))
    with pytest.raises(ValueError, match="not pytorch-ddpm's sinusoid table for T=500"):
        pd.convert_pytorch_ddpm(checkpoint["path"], tmp_path / "out", flagfile=flags)


def test_non_tensor_checkpoint_refused(tmp_path):
    import fractions

    path = tmp_path / "evil.pt"
    torch.save({"ema_model": {"head.weight": torch.zeros(1)}, "extra": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError, match=r"weights_only=True\): the file holds a fractions.Fraction object.*never unpickles"):
        pd.load_checkpoint(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        pd.load_checkpoint(path)
    torch.save({"net_model": {}}, path)
    with pytest.raises(ValueError, match="no 'ema_model' entry.*'net_model'"):
        pd.load_checkpoint(path)


def test_destination_must_be_new(checkpoint, converted):
    out, _ = converted
    result = CliRunner().invoke(main, ["convert", str(checkpoint["path"]), "--to", str(out)])
    assert result.exit_code == 2 and "not an empty folder" in result.output


def test_convert_diffusers_folder(tmp_path, converted):
    """--format diffusers: a PyTorch safetensors pipeline → Flax folders, same ε."""
    from safetensors.numpy import save_file

    from jaxmia.models import flax_to_torch, load_unet

    out, _ = converted
    module, config, params = load_unet(out / "unet")
    src = tmp_path / "pt"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "config.json").write_text(json.dumps(config.to_diffusers()))
    save_file(flax_to_torch(params), str(src / "unet" / "diffusion_pytorch_model.safetensors"))
    (src / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    (src / "scheduler").mkdir()
    (src / "scheduler" / "scheduler_config.json").write_text((out / "scheduler" / "scheduler_config.json").read_text())
    dst = tmp_path / "flax"
    result = CliRunner().invoke(main, ["convert", str(src), "--to", str(dst)])
    assert result.exit_code == 0, result.output
    assert "left out pickle file(s)" not in result.output  # the model folder's .bin is not copied either
    assert (dst / "unet" / "diffusion_flax_model.msgpack").is_file()
    assert not (dst / "unet" / "diffusion_pytorch_model.bin").exists()
    assert load_denoiser(dst).digest == load_denoiser(out).digest
    result = CliRunner().invoke(main, ["convert", str(src), "--to", str(tmp_path / "x"), "--no-ema"])
    assert result.exit_code == 2 and "apply to --format pytorch-ddpm only" in result.output


@pytest.mark.slow
def test_cifar10_shape_parity(tmp_path):
    """The SecMI/PIA CIFAR-10 architecture (35.7M parameters, random weights) converted with
    --assume-cifar10-defaults and no flagfile: ε within 1e-5 (docs/methods/models.md §7, acceptance 1)."""
    torch.manual_seed(0)
    model = UNet(T=1000, ch=128, ch_mult=[1, 2, 2, 2], attn=[1], num_res_blocks=2, dropout=0.1).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    torch.save({"ema_model": model.state_dict(), "net_model": model.state_dict()}, tmp_path / "ckpt.pt")
    out = tmp_path / "cifar"
    result = CliRunner().invoke(main, ["convert", str(tmp_path / "ckpt.pt"), "--to", str(out),
                                       "--assume-cifar10-defaults"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "jaxmia_conversion.json").read_text())["n_params"] == 35_746_307
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3)).astype(np.float32)
    t = np.array([0, 100, 999], np.int32)
    err = np.abs(np.asarray(jax.jit(load_denoiser(out).eps_batch)(x, t)) - eps_oracle(model, x, t)).max()
    print(f"pytorch-ddpm CIFAR-10 shape eps parity: max abs diff {err:.3g}")
    assert err <= 1e-5
