"""Shared helpers of the conditional-model tests: diffusers' / transformers' PyTorch models as oracles.

PyTorch, diffusers and transformers are test-only dependencies (docs/methods/models.md §2).
"""

from __future__ import annotations

import numpy as np

# The brief's tiny text-conditional UNet: cross-attention at the full-resolution level and in the
# middle, 8 heads (diffusers' attention_head_dim), text width 32.
UNET_TEXT = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
# SD 2.x-style variant: linear projections, per-level head counts and transformer depths (two blocks
# per attention at level 1 and in the middle), cross-attention at every level, 3 channels, TF-style
# downsample padding.
UNET_TEXT_LINEAR = dict(
    UNET_TEXT, use_linear_projection=True, attention_head_dim=(4, 8), transformer_layers_per_block=(1, 2),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), in_channels=3, out_channels=3, downsample_padding=0,
)
# The brief's tiny DiT: 10 classes (+ the null class 10), learned sigma (8 = 2 x 4 output channels).
DIT_TINY = dict(
    sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
    attention_head_dim=16, num_embeds_ada_norm=10,
)
CLIP_TINY = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=16)


def randomise_vectors(model, seed: int = 0):
    """Norm scales ~ 1 ± 0.2 and every bias random, so a swapped scale/bias or a dropped bias cannot hide."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    return model.eval()


def torch_unet(config, seed=0):
    import diffusers
    import torch

    torch.manual_seed(seed)
    return randomise_vectors(diffusers.UNet2DConditionModel(**config), seed + 1)


def torch_dit(config, seed=0):
    import diffusers
    import torch

    torch.manual_seed(seed)
    return randomise_vectors(diffusers.DiTTransformer2DModel(**config), seed + 1)


def torch_clip(seed=0, **overrides):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    model = CLIPTextModel(CLIPTextConfig(**{**CLIP_TINY, **overrides}))
    return randomise_vectors(model, seed + 1)


def nchw(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def nhwc(t):
    return np.transpose(t.numpy(), (0, 2, 3, 1))


def unet_forward(model, x, t, context):
    import torch

    with torch.no_grad():
        return nhwc(model(nchw(x), torch.from_numpy(np.asarray(t)), encoder_hidden_states=torch.from_numpy(context)).sample)


def dit_forward(model, x, t, labels):
    import torch

    with torch.no_grad():
        labels = torch.from_numpy(np.asarray(labels))
        return nhwc(model(nchw(x), torch.from_numpy(np.asarray(t)), class_labels=labels).sample)


def saved(model, folder):
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def quiet():
    """Silence diffusers' / transformers' loggers (deprecation and init chatter)."""
    import logging

    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
