"""Converting ``w86763777/pytorch-ddpm`` checkpoints (the SecMI / PIA CIFAR-10 targets) into a
diffusers-format pipeline folder that jaxmia loads: ``unet/`` (``UNet2DModel`` config + Flax
msgpack), ``scheduler/scheduler_config.json``, ``model_index.json`` and ``jaxmia_conversion.json``
(provenance: source file and SHA-256, which weights, the hyperparameters, the weights digest).

The network is diffusers' UNet2DModel topology, but a rename alone gives silently wrong ε
(docs/methods/models.md §7). The differences and what this converter does about them:

* sinusoid layout: pytorch-ddpm interleaves [sin f₀, cos f₀, sin f₁, …]; diffusers concatenates
  [sin…, cos…]. The columns of the first time-MLP weight are permuted, new j = old π(j) with
  π(j) = 2j for j < h and 2(j − h) + 1 for j ≥ h (h = ch / 2), so both see the same features;
* frequencies 10000^(−2i/ch): ``freq_shift = 0``, ``flip_sin_to_cos = false``;
* GroupNorm(32) with PyTorch's eps: ``norm_eps = 1e-5``, ``norm_num_groups = 32``;
* DownSample is a stride-2 3×3 conv with symmetric padding 1: ``downsample_padding = 1``;
* attention is one head with q, k, v, proj as 1×1 convs and scale 1/√C: the kernels are squeezed
  into linear weights (:mod:`jaxmia.models.convert`), ``attention_head_dim = null``.

The key map is positional: pytorch-ddpm names flat block lists (``downblocks.N``,
``middleblocks.N``, ``upblocks.N``); the walk below rebuilds its constructor's order. The frozen
sinusoid table (``time_embedding.timembedding.0.weight``) is not a parameter of the Flax model; it is
checked against the table implied by the hyperparameters, which catches a wrong ``T`` or ``ch``.

Safety: the ``.pt`` is read with ``torch.load(weights_only=True, map_location="cpu")`` only
(docs/methods/design.md: jaxmia never unpickles arbitrary objects); torch is imported lazily and needed for
this conversion only.

References: Ho et al., arXiv 2006.11239, App. B; ``w86763777/pytorch-ddpm`` ``model.py``
(``TimeEmbedding``, ``ResBlock``, ``AttnBlock``, ``UNet``) and ``main.py`` (flags).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from jaxmia.fileio import file_sha256
from jaxmia.models import convert
from jaxmia.models.formats import require_empty_folder, weights_digest
from jaxmia.models.loading import save_unet
from jaxmia.models.unet2d import UNet2DConfig, UNet2DModel, abstract_params

FLAGFILE_NAME = "flagfile.txt"
CONVERSION_RECORD_NAME = "jaxmia_conversion.json"
GROUPS = 32  # pytorch-ddpm's GroupNorm(32, ·) everywhere

# The flags that shape the network or the forward process, and their types.
_FLAG_TYPES = {
    "ch": "int", "ch_mult": "ints", "attn": "ints", "num_res_blocks": "int", "dropout": "float",
    "T": "int", "beta_1": "float", "beta_T": "float", "img_size": "int", "mean_type": "str", "var_type": "str",
}
# pytorch-ddpm's config/CIFAR10.txt, used only with assume_cifar10_defaults=True.
CIFAR10_DEFAULTS = {
    "ch": 128, "ch_mult": (1, 2, 2, 2), "attn": (1,), "num_res_blocks": 2, "dropout": 0.1,
    "T": 1000, "beta_1": 1e-4, "beta_T": 0.02, "img_size": 32, "mean_type": "epsilon", "var_type": "fixedlarge",
}
PREDICTION_TYPES = {"epsilon": "epsilon", "xstart": "sample"}  # pytorch-ddpm mean_type → diffusers
VARIANCE_TYPES = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small"}


# ==================================================================================================
# Hyperparameters
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class DDPMHyperparameters:
    """The pytorch-ddpm flags that matter for inference (``main.py`` of that repository)."""

    ch: int
    ch_mult: tuple[int, ...]
    attn: tuple[int, ...]
    num_res_blocks: int
    dropout: float
    T: int
    beta_1: float
    beta_T: float
    img_size: int
    mean_type: str
    var_type: str

    def validate(self, source: str) -> None:
        def bad(flag, value, why):
            raise ValueError(f"{source}: --{flag}={value} {why}")

        for flag in ("ch", "num_res_blocks", "T", "img_size"):
            if getattr(self, flag) < 1:
                bad(flag, getattr(self, flag), "must be a positive integer")
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            bad("ch_mult", ",".join(map(str, self.ch_mult)), "must list positive multipliers")
        if self.ch % 2:
            bad("ch", self.ch, "must be even (sinusoid pairs)")
        for mult in (1, *self.ch_mult):
            if (self.ch * mult) % GROUPS:
                bad("ch", self.ch, f"× {mult} is not a multiple of GroupNorm's {GROUPS} groups")
        for a in self.attn:
            if not 0 <= a < len(self.ch_mult):
                bad("attn", a, f"is not a level index (0..{len(self.ch_mult) - 1})")
        if not 0 < self.beta_1 <= self.beta_T < 1:
            raise ValueError(f"{source}: --beta_1={self.beta_1}, --beta_T={self.beta_T} must satisfy "
                             "0 < beta_1 <= beta_T < 1")
        if self.mean_type not in PREDICTION_TYPES:
            bad("mean_type", self.mean_type, f"is not supported (supported: {', '.join(PREDICTION_TYPES)})")
        if self.var_type not in VARIANCE_TYPES:
            bad("var_type", self.var_type, f"is not supported (supported: {', '.join(VARIANCE_TYPES)})")
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.img_size % factor:
            bad("img_size", self.img_size, f"must be a multiple of 2**(levels-1)={factor}")

    def unet_config(self) -> UNet2DConfig:
        """The diffusers UNet2DModel config with pytorch-ddpm's numerics (module docstring)."""
        levels = len(self.ch_mult)
        return UNet2DConfig(
            sample_size=self.img_size, in_channels=3, out_channels=3, center_input_sample=False,
            time_embedding_type="positional", freq_shift=0, flip_sin_to_cos=False,
            down_block_types=tuple("AttnDownBlock2D" if i in self.attn else "DownBlock2D" for i in range(levels)),
            up_block_types=tuple("AttnUpBlock2D" if levels - 1 - i in self.attn else "UpBlock2D"
                                 for i in range(levels)),
            block_out_channels=tuple(self.ch * m for m in self.ch_mult), layers_per_block=self.num_res_blocks,
            mid_block_scale_factor=1.0, downsample_padding=1, dropout=float(self.dropout), act_fn="silu",
            attention_head_dim=None, norm_num_groups=GROUPS, norm_eps=1e-5, resnet_time_scale_shift="default",
            add_attention=True,
        )

    def scheduler_config(self) -> dict:
        """A diffusers DDPMScheduler config: linear β from beta_1 to beta_T over T steps."""
        return {
            "_class_name": "DDPMScheduler", "_diffusers_version": "0.39.0",
            "num_train_timesteps": self.T, "beta_schedule": "linear", "beta_start": self.beta_1,
            "beta_end": self.beta_T, "prediction_type": PREDICTION_TYPES[self.mean_type],
            "variance_type": VARIANCE_TYPES[self.var_type], "clip_sample": True,  # its sampler clips x̂0 to [-1, 1]
        }


def read_flagfile(path) -> dict[str, list[str]]:
    """An absl flagfile as ``{flag: [values in order]}`` (``--name=value`` lines; a bare ``--name``
    boolean reads "true"; blank lines and ``#`` or ``//`` comments are skipped).

    Raises:
      FileNotFoundError, or ValueError naming the file and line: a line that is not a flag, or a
      nested ``--flagfile`` (not followed, so the record stays complete).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: flagfile not found")
    flags: dict[str, list[str]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("//"):
            continue
        if not line.startswith("--") or len(line) == 2:
            raise ValueError(f"{path}:{number}: not an absl flag line: {raw!r}")
        name, sep, value = line[2:].partition("=")
        if not sep:  # a boolean flag; none of them shapes the network
            value = "true"
        if name == "flagfile":
            raise ValueError(f"{path}:{number}: nested --flagfile is not supported; inline its flags")
        flags.setdefault(name, []).append(value)
    return flags


def _flag_value(name: str, values: list[str], source: str):
    kind = _FLAG_TYPES[name]
    try:
        if kind == "ints":  # repeated flags and/or comma lists, in order (absl multi_integer)
            return tuple(int(v) for value in values for v in value.split(",") if v.strip())
        value = values[-1]  # a repeated scalar flag: the last one wins, as in absl
        return {"int": int, "float": float, "str": str}[kind](value)
    except ValueError:
        expected = "a list of integers" if kind == "ints" else f"a {kind}"
        raise ValueError(f"{source}: --{name}={','.join(values)} is not {expected}") from None


def hyperparameters(flags: Mapping[str, list[str]] | None, *, source: str,
                    assume_cifar10_defaults: bool = False) -> DDPMHyperparameters:
    """:class:`DDPMHyperparameters` from parsed flags; flags that do not shape the network (lr,
    batch size, logdir, ...) are ignored. A missing flag is refused by name unless
    ``assume_cifar10_defaults`` (then :data:`CIFAR10_DEFAULTS` fill the gaps)."""
    flags = dict(flags or {})
    missing = [name for name in _FLAG_TYPES if name not in flags]
    if missing and not assume_cifar10_defaults:
        raise ValueError(f"{source}: flag(s) {', '.join('--' + n for n in missing)} missing (pass "
                         f"--assume-cifar10-defaults to use pytorch-ddpm's CIFAR-10 values "
                         f"{', '.join(f'{n}={CIFAR10_DEFAULTS[n]!r}' for n in missing)})")
    values = {name: _flag_value(name, flags[name], source) if name in flags else CIFAR10_DEFAULTS[name]
              for name in _FLAG_TYPES}
    out = DDPMHyperparameters(**values)
    out.validate(source)
    return out


# ==================================================================================================
# Checkpoint → diffusers state dict
# ==================================================================================================


def load_checkpoint(path, *, ema: bool = True) -> dict[str, np.ndarray]:
    """The ``ema_model`` (or ``net_model``) state dict of a pytorch-ddpm ``.pt``, as float32 NumPy
    arrays with any ``module.`` (DataParallel) prefix stripped.

    Reads with ``torch.load(weights_only=True, map_location="cpu")``: a file holding anything but
    tensors and plain containers is refused, never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading a PyTorch checkpoint needs torch (pip install torch); "
                         "jaxmia itself does not") from None
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        # torch's message names the offending global ("Unsupported global: GLOBAL pkg.Class ...");
        # its advice to retry with weights_only=False is deliberately not passed on.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint (torch.load(weights_only=True) failed: "
                             f"{' '.join(str(err).split()[-12:])[:200]})") from None
        raise ValueError(f"{path}: refused by torch.load(weights_only=True): the file holds a {found.group(1)} "
                         f"object, not only tensors and plain containers, and jaxmia never unpickles "
                         f"arbitrary objects") from None
    except Exception as err:  # torch raises RuntimeError / EOFError / ... for files it cannot read
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from None
    key = "ema_model" if ema else "net_model"
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict with {key!r}, got {type(checkpoint).__name__}")
    if key not in checkpoint:
        raise ValueError(f"{path}: no {key!r} entry (has {', '.join(map(repr, sorted(map(str, checkpoint))))})")
    state = checkpoint[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: {key!r} is a {type(state).__name__}, not a state dict")
    out = {}
    for name, tensor in state.items():
        clean = name[len("module."):] if name.startswith("module.") else name
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: {key}[{name!r}] is a {type(tensor).__name__}, not a tensor")
        if not tensor.is_floating_point():
            raise ValueError(f"{path}: {key}[{name!r}] has dtype {tensor.dtype}, expected floating point")
        if clean in out:
            raise ValueError(f"{path}: {key} holds {clean!r} both with and without the 'module.' prefix")
        out[clean] = tensor.detach().to(torch.float32).cpu().numpy()
    return out


def sinusoid_table(T: int, ch: int) -> np.ndarray:
    """pytorch-ddpm's frozen time-embedding table (T, ch): interleaved [sin(t·f_i), cos(t·f_i)] with
    f_i = exp(−(2i/ch)·ln 10000), computed in float32 as that code does."""
    freqs = np.exp(-(np.arange(0, ch, 2, dtype=np.float32) / np.float32(ch)) * np.float32(math.log(10000)))
    args = np.arange(T, dtype=np.float32)[:, None] * freqs[None, :].astype(np.float32)
    return np.stack([np.sin(args), np.cos(args)], axis=-1).reshape(T, ch).astype(np.float32)


def interleave_permutation(ch: int) -> np.ndarray:
    """π with concatenated[j] = interleaved[π(j)]: π(j) = 2j (j < ch/2), 2(j − ch/2) + 1 (j ≥ ch/2)."""
    return np.concatenate([np.arange(0, ch, 2), np.arange(1, ch, 2)])


def module_map(hp: DDPMHyperparameters) -> dict[str, str]:
    """pytorch-ddpm module names → diffusers module names, walking the constructor's order."""
    names = {
        "time_embedding.timembedding.1": "time_embedding.linear_1",
        "time_embedding.timembedding.3": "time_embedding.linear_2",
        "head": "conv_in",
        "tail.0": "conv_norm_out",
        "tail.2": "conv_out",
    }

    def resblock(src: str, dst: str, in_ch: int, out_ch: int, attn_dst: Optional[str]) -> None:
        names.update({f"{src}.block1.0": f"{dst}.norm1", f"{src}.block1.2": f"{dst}.conv1",
                      f"{src}.temb_proj.1": f"{dst}.time_emb_proj", f"{src}.block2.0": f"{dst}.norm2",
                      f"{src}.block2.3": f"{dst}.conv2"})
        if in_ch != out_ch:
            names[f"{src}.shortcut"] = f"{dst}.conv_shortcut"
        if attn_dst is not None:
            names.update({f"{src}.attn.group_norm": f"{attn_dst}.group_norm", f"{src}.attn.proj_q": f"{attn_dst}.to_q",
                          f"{src}.attn.proj_k": f"{attn_dst}.to_k", f"{src}.attn.proj_v": f"{attn_dst}.to_v",
                          f"{src}.attn.proj": f"{attn_dst}.to_out.0"})

    levels = len(hp.ch_mult)
    chs, now, k = [hp.ch], hp.ch, 0
    for i, mult in enumerate(hp.ch_mult):
        out = hp.ch * mult
        for j in range(hp.num_res_blocks):
            attn = f"down_blocks.{i}.attentions.{j}" if i in hp.attn else None
            resblock(f"downblocks.{k}", f"down_blocks.{i}.resnets.{j}", now, out, attn)
            now, k = out, k + 1
            chs.append(now)
        if i != levels - 1:
            names[f"downblocks.{k}.main"] = f"down_blocks.{i}.downsamplers.0.conv"
            k += 1
            chs.append(now)
    resblock("middleblocks.0", "mid_block.resnets.0", now, now, "mid_block.attentions.0")
    resblock("middleblocks.1", "mid_block.resnets.1", now, now, None)
    k = 0
    for i in reversed(range(levels)):
        up = levels - 1 - i
        out = hp.ch * hp.ch_mult[i]
        for j in range(hp.num_res_blocks + 1):
            attn = f"up_blocks.{up}.attentions.{j}" if i in hp.attn else None
            resblock(f"upblocks.{k}", f"up_blocks.{up}.resnets.{j}", chs.pop() + now, out, attn)
            now, k = out, k + 1
        if i != 0:
            names[f"upblocks.{k}.main"] = f"up_blocks.{up}.upsamplers.0.conv"
            k += 1
    return names


TABLE_KEY = "time_embedding.timembedding.0.weight"


def to_diffusers_state_dict(state: Mapping[str, np.ndarray], hp: DDPMHyperparameters, *,
                            source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Renames a pytorch-ddpm state dict to diffusers' UNet2DModel names and permutes the first
    time-MLP weight from the interleaved to the concatenated sinusoid layout.

    Raises:
      ValueError naming ``source`` and the keys: a key the hyperparameters do not explain, a
      missing weight, or a sinusoid table that is not the one ``T`` and ``ch`` imply.
    """
    names = module_map(hp)
    expected = {f"{m}.{leaf}" for m in names for leaf in ("weight", "bias")} | {TABLE_KEY}
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state))
    if unexpected or missing:
        problems = [f"unexpected key {k!r}" for k in unexpected] + [f"missing key {k!r}" for k in missing]
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{source}: the state dict does not match the flags (ch={hp.ch}, ch_mult="
                         f"{list(hp.ch_mult)}, attn={list(hp.attn)}, num_res_blocks={hp.num_res_blocks}): {shown}")
    table = np.asarray(state[TABLE_KEY], np.float32)
    reference = sinusoid_table(hp.T, hp.ch)
    if table.shape != reference.shape or not np.allclose(table, reference, rtol=0, atol=1e-3):
        raise ValueError(f"{source}: {TABLE_KEY} of shape {table.shape} is not pytorch-ddpm's sinusoid table for "
                         f"T={hp.T}, ch={hp.ch} (check --T and --ch)")
    out = {}
    for key, value in state.items():
        if key == TABLE_KEY:
            continue
        module, leaf = key.rsplit(".", 1)
        out[f"{names[module]}.{leaf}"] = np.asarray(value, np.float32)
    w = out["time_embedding.linear_1.weight"]  # (4ch, ch): permute its input columns
    out["time_embedding.linear_1.weight"] = np.ascontiguousarray(w[:, interleave_permutation(hp.ch)])
    return out


# ==================================================================================================
# The conversion
# ==================================================================================================


def convert_pytorch_ddpm(src, dst, *, ema: bool = True, flagfile=None, assume_cifar10_defaults: bool = False) -> dict:
    """Converts a pytorch-ddpm ``.pt`` into a pipeline folder ``dst`` that
    :func:`jaxmia.models.load_denoiser` loads.

    Args:
      src: the checkpoint (``ckpt.pt``; a dict with ``net_model`` and ``ema_model``).
      dst: a new (or empty) folder.
      ema: take ``ema_model`` (default, as SecMI and PIA evaluate) or ``net_model``.
      flagfile: the absl flagfile of the run; default ``flagfile.txt`` beside ``src``.
      assume_cifar10_defaults: with no flagfile (or missing flags), use pytorch-ddpm's CIFAR-10
        hyperparameters instead of refusing.

    Returns:
      The conversion record written to ``dst/jaxmia_conversion.json``.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: checkpoint not found")
    require_empty_folder(dst)
    flag_path = Path(flagfile) if flagfile is not None else src.parent / FLAGFILE_NAME
    if flag_path.is_file():
        flags, flag_source = read_flagfile(flag_path), str(flag_path)
    elif flagfile is not None:
        raise FileNotFoundError(f"{flag_path}: flagfile not found")
    elif assume_cifar10_defaults:
        flags, flag_source = {}, "pytorch-ddpm CIFAR-10 defaults (--assume-cifar10-defaults)"
    else:
        raise FileNotFoundError(f"{flag_path}: no flagfile beside the checkpoint; pass --flagfile FILE, or "
                                f"--assume-cifar10-defaults to use pytorch-ddpm's CIFAR-10 hyperparameters")
    hp = hyperparameters(flags, source=flag_source, assume_cifar10_defaults=assume_cifar10_defaults)
    which = "ema_model" if ema else "net_model"
    state = to_diffusers_state_dict(load_checkpoint(src, ema=ema), hp, source=f"{src} [{which}]")
    config = hp.unet_config()
    params = convert.torch_to_flax(state, abstract_params(UNet2DModel(config)), source=f"{src} [{which}]")

    save_unet(dst / "unet", config, params)
    scheduler = dst / "scheduler"
    scheduler.mkdir(parents=True, exist_ok=True)
    (scheduler / "scheduler_config.json").write_text(json.dumps(hp.scheduler_config(), indent=2, sort_keys=True) + "\n")
    index = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.39.0",
             "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    (dst / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    record = {
        "format": "pytorch-ddpm",
        "source": str(src),
        "source_sha256": file_sha256(src),
        "weights": which,
        "flags": flag_source,
        "hyperparameters": dataclasses.asdict(hp),
        "weights_digest": weights_digest(params),
        "n_params": int(sum(np.size(v) for v in _leaves(params))),
        "notes": "sinusoid columns permuted interleaved->concatenated; freq_shift=0; norm_eps=1e-5; "
                 "downsample_padding=1; 1x1-conv attention squeezed to linear (docs/methods/models.md §7)",
    }
    (dst / CONVERSION_RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def _leaves(tree):
    if isinstance(tree, Mapping):
        for value in tree.values():
            yield from _leaves(value)
    else:
        yield tree
