"""A stand-in for the SecMI / PIA CIFAR-10 target: a faithful PyTorch re-implementation of
``w86763777/pytorch-ddpm``'s UNet (the oracle) and a builder that writes a small checkpoint in that
repository's format (``ckpt.pt`` with ``net_model`` / ``ema_model`` state dicts, ``module.``-prefixed
EMA keys as DataParallel saves them, plus ``flagfile.txt``).

Shared by ``test_pytorch_ddpm.py`` (conversion parity) and ``test_reproduce_cifar10.py`` (the
docs/reproduce-cifar10.md recipe run end to end). The oracle is written from that repository's
``model.py`` (TimeEmbedding with the frozen interleaved sinusoid table, ResBlock, AttnBlock with 1×1
convs, DownSample/UpSample, the UNet's flat block lists); PyTorch is a test-only dependency.
"""

import math
from pathlib import Path

import numpy as np
import torch

nn = torch.nn
F = torch.nn.functional


# --------------------------------------------------------------------------------------------------
# The oracle: pytorch-ddpm's model.py
# --------------------------------------------------------------------------------------------------


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class TimeEmbedding(nn.Module):
    def __init__(self, T, d_model, dim):
        assert d_model % 2 == 0
        super().__init__()
        emb = torch.arange(0, d_model, step=2) / d_model * math.log(10000)
        emb = torch.exp(-emb)
        pos = torch.arange(T).float()
        emb = pos[:, None] * emb[None, :]
        emb = torch.stack([torch.sin(emb), torch.cos(emb)], dim=-1)
        emb = emb.view(T, d_model)
        self.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(emb), nn.Linear(d_model, dim), Swish(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.timembedding(t)


class DownSample(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.main = nn.Conv2d(in_ch, in_ch, 3, stride=2, padding=1)

    def forward(self, x, temb):
        return self.main(x)


class UpSample(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.main = nn.Conv2d(in_ch, in_ch, 3, stride=1, padding=1)

    def forward(self, x, temb):
        return self.main(F.interpolate(x, scale_factor=2, mode="nearest"))


class AttnBlock(nn.Module):
    def __init__(self, in_ch):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, in_ch)
        self.proj_q = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        self.proj_k = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        self.proj_v = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)
        self.proj = nn.Conv2d(in_ch, in_ch, 1, stride=1, padding=0)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q, k, v = self.proj_q(h), self.proj_k(h), self.proj_v(h)
        q = q.permute(0, 2, 3, 1).view(B, H * W, C)
        k = k.view(B, C, H * W)
        w = torch.bmm(q, k) * (int(C) ** (-0.5))
        w = F.softmax(w, dim=-1)
        v = v.permute(0, 2, 3, 1).view(B, H * W, C)
        h = torch.bmm(w, v)
        h = h.view(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.proj(h)


class ResBlock(nn.Module):
    def __init__(self, in_ch, out_ch, tdim, dropout, attn=False):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(32, in_ch), Swish(), nn.Conv2d(in_ch, out_ch, 3, stride=1, padding=1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, out_ch))
        self.block2 = nn.Sequential(nn.GroupNorm(32, out_ch), Swish(), nn.Dropout(dropout),
                                    nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1))
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=1, padding=0) if in_ch != out_ch else nn.Identity()
        self.attn = AttnBlock(out_ch) if attn else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x)
        h += self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h)
        h = h + self.shortcut(x)
        return self.attn(h)


class UNet(nn.Module):
    def __init__(self, T, ch, ch_mult, attn, num_res_blocks, dropout):
        super().__init__()
        tdim = ch * 4
        self.time_embedding = TimeEmbedding(T, ch, tdim)
        self.head = nn.Conv2d(3, ch, kernel_size=3, stride=1, padding=1)
        self.downblocks = nn.ModuleList()
        chs = [ch]
        now_ch = ch
        for i, mult in enumerate(ch_mult):
            out_ch = ch * mult
            for _ in range(num_res_blocks):
                self.downblocks.append(ResBlock(now_ch, out_ch, tdim, dropout, attn=(i in attn)))
                now_ch = out_ch
                chs.append(now_ch)
            if i != len(ch_mult) - 1:
                self.downblocks.append(DownSample(now_ch))
                chs.append(now_ch)
        self.middleblocks = nn.ModuleList([
            ResBlock(now_ch, now_ch, tdim, dropout, attn=True),
            ResBlock(now_ch, now_ch, tdim, dropout, attn=False),
        ])
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(ch_mult))):
            out_ch = ch * mult
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(ResBlock(chs.pop() + now_ch, out_ch, tdim, dropout, attn=(i in attn)))
                now_ch = out_ch
            if i != 0:
                self.upblocks.append(UpSample(now_ch))
        assert len(chs) == 0
        self.tail = nn.Sequential(nn.GroupNorm(32, now_ch), Swish(), nn.Conv2d(now_ch, 3, 3, stride=1, padding=1))

    def forward(self, x, t):
        temb = self.time_embedding(t)
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb)
            hs.append(h)
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = layer(h, temb)
        h = self.tail(h)
        assert len(hs) == 0
        return h


# --------------------------------------------------------------------------------------------------
# The builder: a small checkpoint in pytorch-ddpm's layout
# --------------------------------------------------------------------------------------------------

SMALL = dict(T=1000, ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.1)
IMG = 16


def flagfile_text(hp=SMALL, img_size=IMG) -> str:
    """The absl flagfile pytorch-ddpm's ``main.py`` writes for a run (``FLAGS.flags_into_string()``
    layout: network and schedule flags mixed with training flags the converter ignores)."""
    lines = [f"--attn={a}" for a in hp["attn"]] + [
        "--batch_size=128", "--beta_1=0.0001", "--beta_T=0.02", f"--ch={hp['ch']}",
        *[f"--ch_mult={m}" for m in hp["ch_mult"]], f"--dropout={hp['dropout']}", "--ema_decay=0.9999", "--noeval",
        f"--img_size={img_size}", "--logdir=./logs/DDPM_CIFAR10_EPS", "--lr=0.0002", "--mean_type=epsilon",
        f"--num_res_blocks={hp['num_res_blocks']}", f"--T={hp['T']}", "--train", "--var_type=fixedlarge",
    ]
    return "\n".join(lines) + "\n"


FLAGFILE = flagfile_text()


def oracle_model(seed, hp=SMALL):
    """The oracle with PyTorch's random init plus random norm scales (1 ± 0.2) and biases, so a
    swapped or dropped weight cannot hide (the frozen sinusoid table is a buffer-like parameter
    without gradient; it is 2-D and stays as built)."""
    torch.manual_seed(seed)
    model = UNet(**hp).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # GroupNorm scales (the only 1-D weights) and every bias
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn_like(p))
    return model


def write_checkpoint(root, *, hp=SMALL, img_size=IMG, net_seed=1, ema_seed=2, name="ckpt.pt") -> dict:
    """Writes ``root/ckpt.pt`` and ``root/flagfile.txt`` as a pytorch-ddpm training run leaves them.

    Returns:
      ``dict(path, root, net, ema)``: the checkpoint path, its folder and the two oracle models
      (``ema`` is what SecMI / PIA evaluate and what ``jaxmia convert`` takes by default).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    net, ema = oracle_model(net_seed, hp), oracle_model(ema_seed, hp)
    ckpt = {
        "net_model": net.state_dict(),
        # DataParallel-saved EMA weights carry a "module." prefix.
        "ema_model": {f"module.{k}": v for k, v in ema.state_dict().items()},
        "sched": {"last_epoch": 3},
        "optim": {"state": {}, "param_groups": [{"lr": 2e-4}]},
        "step": 1234,
        "x_T": torch.randn(2, 3, img_size, img_size),
    }
    path = root / name
    torch.save(ckpt, path)
    (root / "flagfile.txt").write_text(flagfile_text(hp, img_size))
    return dict(path=path, root=root, net=net, ema=ema)


def eps_oracle(model, x_nhwc, t):
    """ε of the oracle on NHWC inputs (NumPy in, NumPy NHWC out)."""
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        return model(x, torch.from_numpy(np.asarray(t, np.int64))).numpy().transpose(0, 2, 3, 1)
