"""The CompVis/U-ViT KL autoencoder (``FrozenAutoencoderKL``, ``autoencoder_kl*.pth``) as diffusers'
``AutoencoderKL`` (:mod:`jaxmia.models.vae`).

U-ViT's ``libs/autoencoder.py`` is a copy of CompVis' ``ldm/modules/diffusionmodules/model.py``
``Encoder``/``Decoder`` plus ``quant_conv``/``post_quant_conv``: the network Stable Diffusion's VAE
is, which diffusers' ``AutoencoderKL`` reproduces exactly. The mapping (diffusers
``scripts/convert_original_stable_diffusion_to_diffusers.py``, ``convert_ldm_vae_checkpoint``):

* ``{encoder,decoder}.mid.block_{1,2}`` → ``mid_block.resnets.{0,1}``; ``mid.attn_1.{norm,q,k,v,
  proj_out}`` → ``mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}`` (1×1 convs squeezed
  to linear layers); ``norm_out`` → ``conv_norm_out``;
* ``encoder.down.<i>.block.<j>`` → ``encoder.down_blocks.<i>.resnets.<j>`` (``nin_shortcut`` →
  ``conv_shortcut``), ``encoder.down.<i>.attn.<j>`` → ``.attentions.<j>``,
  ``encoder.down.<i>.downsample.conv`` → ``.downsamplers.0.conv``;
* ``decoder.up.<i>`` is indexed by level (``up.0`` full resolution, run last): it becomes
  ``decoder.up_blocks.<L−1−i>`` (``upsample.conv`` → ``upsamplers.0.conv``).

The maths agree: down-sampling pads right and bottom by one and runs a 3×3 stride-2 conv with no
padding (diffusers' ``downsample_padding=0``); up-sampling is nearest ×2 + 3×3 conv; GroupNorm 32
groups, eps 1e-6; the mid attention is one head as wide as the channels, scale C^−½. The
posterior is the same (mean, log-variance clamped to [−30, 20]). The latent scale (U-ViT 0.18215,
its COCO config 0.23010) is not in the file: the caller states it (``scaling_factor`` of the
written config).

Architecture from the shapes: ``ch`` and levels from ``encoder.down.<i>``, ``ch_mult`` from each
level's output width, ``num_res_blocks`` from ``encoder.down.0.block``, attention per level from
``attn`` keys, ``z_channels`` from ``decoder.conv_in``; ``double_z`` and ``embed_dim = z_channels``
are required (diffusers has one latent width).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import numpy as np
from flax import traverse_util

from jaxmia.models import convert
from jaxmia.models.official.output import check_keys, count_indexed, require
from jaxmia.models.vae import AutoencoderKLConfig, abstract_params, AutoencoderKL

GROUPS = 32  # CompVis' Normalize: GroupNorm(32, eps=1e-6)

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET_INV = {v: k for k, v in _RESNET.items()}
_ATTN_INV = {v: k for k, v in _ATTN.items()}


def ldm_to_diffusers_key(key: str, levels: int) -> Optional[str]:
    """The diffusers name of an official autoencoder key, or None when it has no place."""
    m = re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key)
    if m and m.group(3) in _RESNET:
        return f"{m.group(1)}.mid_block.resnets.{int(m.group(2)) - 1}.{_RESNET[m.group(3)]}.{m.group(4)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)", key)
    if m and m.group(2) in _ATTN:
        return f"{m.group(1)}.mid_block.attentions.0.{_ATTN[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.conv_norm_out.{m.group(2)}"
    m = re.fullmatch(r"(encoder\.down|decoder\.up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", key)
    if m:
        side, level, kind, j, layer, leaf = m.groups()
        names = _RESNET if kind == "block" else _ATTN
        if layer not in names:
            return None
        level = int(level) if side == "encoder.down" else levels - 1 - int(level)
        group = "encoder.down_blocks" if side == "encoder.down" else "decoder.up_blocks"
        return f"{group}.{level}.{'resnets' if kind == 'block' else 'attentions'}.{j}.{names[layer]}.{leaf}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    if re.fullmatch(r"(encoder\.conv_(in|out)|decoder\.conv_(in|out)|quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key
    return None


def diffusers_to_ldm_key(key: str, levels: int) -> str:
    """The inverse of :func:`ldm_to_diffusers_key` (for naming what a file lacks)."""
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{_RESNET_INV[m.group(3)]}.{m.group(4)}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.mid.attn_1.{_ATTN_INV[m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", key)
    if m:
        return f"{m.group(1)}.norm_out.{m.group(2)}"
    m = re.fullmatch(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(\w+(?:\.0)?)\."
                     r"(weight|bias)", key)
    if m:
        group, level, kind, j, layer, leaf = m.groups()
        names = _RESNET_INV if kind == "resnets" else _ATTN_INV
        if group == "encoder.down_blocks":
            return f"encoder.down.{level}.{'block' if kind == 'resnets' else 'attn'}.{j}.{names[layer]}.{leaf}"
        block = "block" if kind == "resnets" else "attn"
        return f"decoder.up.{levels - 1 - int(level)}.{block}.{j}.{names[layer]}.{leaf}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
    return key


def read_config(state: Mapping[str, np.ndarray], *, source: str, scaling_factor: float,
                sample_size: int) -> AutoencoderKLConfig:
    """The ``AutoencoderKLConfig`` of an official KL autoencoder state dict, from its shapes."""
    ch, in_channels = require(state, "encoder.conv_in.weight", source, 4)[:2]
    levels = count_indexed(state, "encoder.down.", ".block.0.conv1.weight", source)
    if levels == 0:
        raise ValueError(f"{source}: no encoder.down.<i>.block.0.conv1.weight keys: not a CompVis KL autoencoder")
    widths = [require(state, f"encoder.down.{i}.block.0.conv2.weight", source, 4)[0] for i in range(levels)]
    num_res_blocks = count_indexed(state, "encoder.down.0.block.", ".conv1.weight", source)
    z_channels = require(state, "decoder.conv_in.weight", source, 4)[1]
    enc_out = require(state, "encoder.conv_out.weight", source, 4)[0]
    if enc_out != 2 * z_channels:
        raise ValueError(f"{source}: encoder.conv_out makes {enc_out} channels for z_channels={z_channels}: not a "
                         f"KL autoencoder with double_z (a VQ first stage has z_channels outputs)")
    embed_dim = require(state, "post_quant_conv.weight", source, 4)[1]
    if embed_dim != z_channels:
        raise ValueError(f"{source}: embed_dim={embed_dim} differs from z_channels={z_channels}; diffusers' "
                         f"AutoencoderKL has one latent width, so this file has no exact mapping")
    out_channels = require(state, "decoder.conv_out.weight", source, 4)[0]
    down = tuple("AttnDownEncoderBlock2D" if f"encoder.down.{i}.attn.0.q.weight" in state else "DownEncoderBlock2D"
                 for i in range(levels))
    up = tuple("AttnUpDecoderBlock2D" if f"decoder.up.{levels - 1 - i}.attn.0.q.weight" in state
               else "UpDecoderBlock2D" for i in range(levels))
    return AutoencoderKLConfig(
        in_channels=int(in_channels), out_channels=int(out_channels), down_block_types=down, up_block_types=up,
        block_out_channels=tuple(int(w) for w in widths), layers_per_block=int(num_res_blocks),
        latent_channels=int(z_channels), norm_num_groups=GROUPS, sample_size=int(sample_size),
        scaling_factor=float(scaling_factor), mid_block_add_attention="encoder.mid.attn_1.q.weight" in state)


def convert_state_dict(state: Mapping[str, np.ndarray], *, source: str, scaling_factor: float,
                       sample_size: int) -> tuple[AutoencoderKLConfig, dict]:
    """(config, Flax params) of an official KL autoencoder state dict (``autoencoder_kl.pth``).

    Every missing and unexpected key is refused by its official name; shapes are checked against
    the architecture read from the file.
    """
    config = read_config(state, source=source, scaling_factor=scaling_factor, sample_size=sample_size)
    levels = len(config.block_out_channels)
    target = abstract_params(AutoencoderKL(config))
    expected = {diffusers_to_ldm_key(convert.torch_key_of(path), levels) for path in traverse_util.flatten_dict(target)}
    check_keys(state, expected, source)
    renamed = {ldm_to_diffusers_key(key, levels): value for key, value in state.items()}
    return config, convert.torch_to_flax(renamed, target, source=source)
