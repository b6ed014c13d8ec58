"""Writes a randomly initialised diffusers ``UNet2DModel`` folder, saved by diffusers' PyTorch code.

The benchmarks take any such folder (``--target PATH``); this makes the one issue 15 measured
(16x16x1, channels 32/64/64, one layer per block, attention at the middle level, 8 norm groups,
1.11M parameters) or any other shape, so every figure in docs/benchmarks.md §10 can be rerun:

    python scripts/make_bench_unet.py --out /tmp/unet16
    python scripts/bench_features.py --target /tmp/unet16 --batch 128 --rows unet_forward,unet_vjp

Benchmark-only: it needs torch and diffusers (jaxmia itself does not).
"""

from __future__ import annotations

from pathlib import Path

import click


def make_unet_folder(out, *, size: int = 16, channels: int = 1, blocks=(32, 64, 64), layers_per_block: int = 1,
                     attention_levels=(1,), norm_groups: int = 8, seed: int = 0) -> int:
    """Saves ``UNet2DModel`` (random weights, ``torch.manual_seed(seed)``) and a 1000-step DDPM
    scheduler under ``out`` with ``save_pretrained``; returns the parameter count."""
    import diffusers
    import torch

    blocks = tuple(int(b) for b in blocks)
    bad = [a for a in attention_levels if not 0 <= a < len(blocks)]
    if bad:
        raise ValueError(f"attention level(s) {bad}: the UNet has levels 0..{len(blocks) - 1}")
    torch.manual_seed(int(seed))
    model = diffusers.UNet2DModel(
        sample_size=int(size), in_channels=int(channels), out_channels=int(channels), block_out_channels=blocks,
        layers_per_block=int(layers_per_block), norm_num_groups=int(norm_groups),
        down_block_types=tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(len(blocks))),
        up_block_types=tuple("AttnUpBlock2D" if len(blocks) - 1 - i in attention_levels else "UpBlock2D"
                             for i in range(len(blocks))),
    )
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(out / "scheduler")
    return sum(p.numel() for p in model.parameters())


def _ints(text: str) -> tuple:
    return tuple(int(v) for v in str(text).split(",") if v.strip())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to write")
@click.option("--size", default=16, show_default=True, help="sample height and width")
@click.option("--channels", default=1, show_default=True, help="image channels (in and out)")
@click.option("--blocks", default="32,64,64", show_default=True, help="block_out_channels")
@click.option("--layers-per-block", default=1, show_default=True)
@click.option("--attention", default="1", show_default=True, help="levels (0 = outermost) with attention blocks")
@click.option("--norm-groups", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
def main(out, size, channels, blocks, layers_per_block, attention, norm_groups, seed):
    n = make_unet_folder(out, size=size, channels=channels, blocks=_ints(blocks), layers_per_block=layers_per_block,
                         attention_levels=_ints(attention), norm_groups=norm_groups, seed=seed)
    print(f"{out}: UNet2DModel {size}x{size}x{channels}, blocks {blocks}, {n / 1e6:.2f}M parameters")


if __name__ == "__main__":
    main()
