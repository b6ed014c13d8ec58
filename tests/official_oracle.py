"""NumPy re-implementations of the official DiT and U-ViT forwards (NCHW, official state-dict names),
random official-layout state dicts, and where the shared fixtures live.

Written from the upstream code (facebookresearch/DiT ``models.py``; baofff/U-ViT ``libs/uvit.py``,
``libs/uvit_t2i.py``), independently of jaxmia's Flax modules: the oracle for sizes the shared
fixtures do not cover.
"""

import math
import os
from pathlib import Path

import numpy as np
from scipy.special import erf

# CI keeps shared/ beside the clone; JAXMIA_OFFICIAL_FIXTURES points elsewhere (e.g. from a worktree).
OFFICIAL = Path(os.environ.get("JAXMIA_OFFICIAL_FIXTURES",
                               Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"))


def _linear(sd, name, x):
    out = x @ sd[f"{name}.weight"].T
    return out + sd[f"{name}.bias"] if f"{name}.bias" in sd else out


def _layer_norm(x, eps, weight=None, bias=None):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y if weight is None else y * weight + bias


def _gelu(x, tanh):
    if tanh:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _silu(x):
    return x / (1 + np.exp(-x))


def _attention(sd, name, x, heads):
    b, length, width = x.shape
    qkv = _linear(sd, f"{name}.qkv", x).reshape(b, length, 3, heads, width // heads).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(width // heads)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return _linear(sd, f"{name}.proj", (w @ v).transpose(0, 2, 1, 3).reshape(b, length, width))


def _sinusoid(t, dim):
    half = dim // 2
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    args = np.asarray(t, np.float64)[:, None] * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], -1)


def _patchify(sd, name, x, p):
    b, c, h, w = x.shape
    patches = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), -1)
    weight = sd[f"{name}.weight"]
    return patches @ weight.reshape(weight.shape[0], -1).T + sd[f"{name}.bias"]


def _unpatchify(x, p, c):
    b, n, _ = x.shape
    g = math.isqrt(n)
    return x.reshape(b, g, g, p, p, c).transpose(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)


def _conv3x3(x, weight, bias):
    b, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((b, weight.shape[0], h, w))
    for i in range(3):
        for j in range(3):
            out += np.einsum("bchw,oc->bohw", xp[:, :, i:i + h, j:j + w], weight[:, :, i, j])
    return out + bias[None, :, None, None]


def dit_forward(sd, x, t, y, *, heads, patch):
    """Official DiT ``forward(x, t, y)`` in float64."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    h = _patchify(sd, "x_embedder.proj", x, patch) + sd["pos_embed"]
    c = _linear(sd, "t_embedder.mlp.2", _silu(_linear(sd, "t_embedder.mlp.0", _sinusoid(t, 256))))
    c = c + sd["y_embedder.embedding_table.weight"][y]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        mods = np.split(_linear(sd, f"blocks.{i}.adaLN_modulation.1", _silu(c))[:, None], 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = h + gate_msa * _attention(sd, f"blocks.{i}.attn", _layer_norm(h, 1e-6) * (1 + scale_msa) + shift_msa, heads)
        z = _layer_norm(h, 1e-6) * (1 + scale_mlp) + shift_mlp
        h = h + gate_mlp * _linear(sd, f"blocks.{i}.mlp.fc2", _gelu(_linear(sd, f"blocks.{i}.mlp.fc1", z), True))
    shift, scale = np.split(_linear(sd, "final_layer.adaLN_modulation.1", _silu(c))[:, None], 2, -1)
    h = _linear(sd, "final_layer.linear", _layer_norm(h, 1e-6) * (1 + scale) + shift)
    return _unpatchify(h, patch, h.shape[-1] // patch**2)


def _uvit_block(sd, name, x, heads, skip=None):
    if skip is not None and f"{name}.skip_linear.weight" in sd:
        x = _linear(sd, f"{name}.skip_linear", np.concatenate([x, skip], -1))
    ln = lambda z, n: _layer_norm(z, 1e-5, sd[f"{name}.{n}.weight"], sd[f"{name}.{n}.bias"])  # noqa: E731
    x = x + _attention(sd, f"{name}.attn", ln(x, "norm1"), heads)
    return x + _linear(sd, f"{name}.mlp.fc2", _gelu(_linear(sd, f"{name}.mlp.fc1", ln(x, "norm2")), False))


def uvit_forward(sd, x, timesteps, cond=None, *, heads, patch):
    """Official U-ViT forward in float64: ``libs/uvit.py`` (cond = labels or None) or, when the state
    dict has ``context_embed``, ``libs/uvit_t2i.py`` (cond = context)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    c, width = x.shape[1], sd["patch_embed.proj.weight"].shape[0]
    h = _patchify(sd, "patch_embed.proj", x, patch)
    time = _sinusoid(timesteps, width)
    if "time_embed.0.weight" in sd:
        time = _linear(sd, "time_embed.2", _silu(_linear(sd, "time_embed.0", time)))
    if "context_embed.weight" in sd:
        tokens = [time[:, None], _linear(sd, "context_embed", cond)]
    elif "label_emb.weight" in sd:
        tokens = [sd["label_emb.weight"][cond][:, None], time[:, None]]
    else:
        tokens = [time[:, None]]
    extras = sum(t.shape[1] for t in tokens)
    h = np.concatenate(tokens + [h], 1) + sd["pos_embed"]
    n = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    skips = []
    for i in range(n):
        h = _uvit_block(sd, f"in_blocks.{i}", h, heads)
        skips.append(h)
    h = _uvit_block(sd, "mid_block", h, heads)
    for i in range(n):
        h = _uvit_block(sd, f"out_blocks.{i}", h, heads, skips.pop())
    h = _linear(sd, "decoder_pred", _layer_norm(h, 1e-5, sd["norm.weight"], sd["norm.bias"]))[:, extras:]
    out = _unpatchify(h, patch, c)
    if "final_layer.weight" in sd:
        out = _conv3x3(out, sd["final_layer.weight"], sd["final_layer.bias"])
    return out


def random_state_dict(shapes: dict, seed: int, std: float = 0.05) -> dict:
    """Random float32 tensors of the given shapes (norm weights around 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        value = rng.normal(0, std, shape)
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            value += 1.0
        out[name] = value.astype(np.float32)
    return out


def dit_shapes(*, hidden, depth, patch, channels, grid, classes_rows, mlp, out_channels) -> dict:
    s = {"pos_embed": (1, grid * grid, hidden), "x_embedder.proj.weight": (hidden, channels, patch, patch),
         "x_embedder.proj.bias": (hidden,), "t_embedder.mlp.0.weight": (hidden, 256),
         "t_embedder.mlp.0.bias": (hidden,),
         "t_embedder.mlp.2.weight": (hidden, hidden), "t_embedder.mlp.2.bias": (hidden,),
         "y_embedder.embedding_table.weight": (classes_rows, hidden),
         "final_layer.linear.weight": (patch * patch * out_channels, hidden),
         "final_layer.linear.bias": (patch * patch * out_channels,),
         "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
         "final_layer.adaLN_modulation.1.bias": (2 * hidden,)}
    for i in range(depth):
        b = f"blocks.{i}"
        s.update({f"{b}.attn.qkv.weight": (3 * hidden, hidden), f"{b}.attn.qkv.bias": (3 * hidden,),
                  f"{b}.attn.proj.weight": (hidden, hidden), f"{b}.attn.proj.bias": (hidden,),
                  f"{b}.mlp.fc1.weight": (mlp, hidden), f"{b}.mlp.fc1.bias": (mlp,),
                  f"{b}.mlp.fc2.weight": (hidden, mlp), f"{b}.mlp.fc2.bias": (hidden,),
                  f"{b}.adaLN_modulation.1.weight": (6 * hidden, hidden),
                  f"{b}.adaLN_modulation.1.bias": (6 * hidden,)})
    return s


def uvit_shapes(*, width, depth, patch, channels, tokens, mlp, qkv_bias=False, time_mlp=False, conv=False,
                num_classes=-1, clip=None) -> dict:
    """Official ``UViT`` keys; ``tokens`` = pos_embed length; ``clip`` = clip_dim for the T2I form."""
    s = {"pos_embed": (1, tokens, width), "patch_embed.proj.weight": (width, channels, patch, patch),
         "patch_embed.proj.bias": (width,), "norm.weight": (width,), "norm.bias": (width,),
         "decoder_pred.weight": (patch * patch * channels, width), "decoder_pred.bias": (patch * patch * channels,)}
    if time_mlp:
        s.update({"time_embed.0.weight": (4 * width, width), "time_embed.0.bias": (4 * width,),
                  "time_embed.2.weight": (width, 4 * width), "time_embed.2.bias": (width,)})
    if clip is not None:
        s.update({"context_embed.weight": (width, clip), "context_embed.bias": (width,)})
    elif num_classes > 0:
        s["label_emb.weight"] = (num_classes, width)
    if conv:
        s.update({"final_layer.weight": (channels, channels, 3, 3), "final_layer.bias": (channels,)})
    half = range(depth // 2)
    names = [f"in_blocks.{i}" for i in half] + ["mid_block"] + [f"out_blocks.{i}" for i in half]
    for b in names:
        s.update({f"{b}.norm1.weight": (width,), f"{b}.norm1.bias": (width,), f"{b}.norm2.weight": (width,),
                  f"{b}.norm2.bias": (width,), f"{b}.attn.qkv.weight": (3 * width, width),
                  f"{b}.attn.proj.weight": (width, width), f"{b}.attn.proj.bias": (width,),
                  f"{b}.mlp.fc1.weight": (mlp, width), f"{b}.mlp.fc1.bias": (mlp,),
                  f"{b}.mlp.fc2.weight": (width, mlp), f"{b}.mlp.fc2.bias": (width,)})
        if qkv_bias:
            s[f"{b}.attn.qkv.bias"] = (3 * width,)
        if b.startswith("out_blocks"):
            s.update({f"{b}.skip_linear.weight": (width, 2 * width), f"{b}.skip_linear.bias": (width,)})
    return s
