"""Shared helpers of the model-layer tests: diffusers' PyTorch UNet2DModel as the oracle.

PyTorch and diffusers are test-only dependencies (docs/methods/models.md §2).
"""

from __future__ import annotations

import numpy as np

TINY = dict(  # one attention level, multi-head (head_dim 8), downsample_padding 1
    sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=8,
)
CLASS_COND = dict(  # attention at two levels, class embeddings, mish, separate mid-attention groups
    sample_size=16, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, num_class_embeds=10, act_fn="mish", attn_norm_num_groups=4,
)
CIFAR_SHAPE = dict(  # google/ddpm-cifar10-32 at reduced width
    sample_size=32, block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=16,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, attention_head_dim=None,
    act_fn="silu", center_input_sample=False, time_embedding_type="positional", mid_block_scale_factor=1,
)
VARIANTS = dict(  # the rarer options: 1 input channel, learned σ (2 outputs), non-square, FiLM, ...
    sample_size=(16, 8), in_channels=1, out_channels=2, block_out_channels=(16, 32), layers_per_block=1,
    norm_num_groups=4, down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"), downsample_type="resnet", upsample_type="resnet",
    resnet_time_scale_shift="scale_shift", act_fn="gelu", time_embedding_type="learned",
    num_train_timesteps=1000, class_embed_type="timestep", center_input_sample=True,
    mid_block_scale_factor=1.414, attention_head_dim=4, time_embedding_dim=48, downsample_padding=0,
)


def torch_unet(config, seed=0):
    """diffusers' UNet2DModel with seeded weights; norm scales ~ 1 ± 0.2 and every bias random, so a
    swapped scale/bias or a dropped bias cannot hide."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn_like(p))
    return model


def torch_forward(model, x_nhwc, t, labels=None):
    """The PyTorch output for NHWC inputs, returned NHWC."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2))))
    labels = None if labels is None else torch.from_numpy(np.asarray(labels))
    with torch.no_grad():
        out = model(x, torch.from_numpy(np.asarray(t)), class_labels=labels).sample.numpy()
    return np.transpose(out, (0, 2, 3, 1))


def saved(model, folder):
    """``save_pretrained`` as safetensors; returns the folder."""
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def inputs(config, batch, seed=1):
    """Standard-normal NHWC inputs for a config."""
    size = config["sample_size"]
    h, w = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(seed).standard_normal((batch, h, w, config.get("in_channels", 3)))
    return x.astype(np.float32)
