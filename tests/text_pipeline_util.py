"""Test helpers: a CLIP BPE vocabulary trained offline, and a tiny text-to-image pipeline saved by diffusers.

PyTorch, diffusers and transformers are test-only dependencies (docs/methods/models.md §2).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from jaxmia.models.clip_tokenizer import bytes_to_unicode

# Words from several scripts, with case, digits and punctuation, so the learned merges cover them.
CORPUS = """a photo of a cat sitting on the mat . the quick brown fox jumps over the lazy dog ! photos of
cats and dogs , two cats , three dogs ; hello world ? it's the dog's bone , they'll see . a painting of a
red car on a street at night . café naïve résumé straße . 東京 タワー . οδος σισυφος . हिन्दी .
123 456 7890 3.14 the the the photo photo painting street street night night"""


def train_bpe(folder, n_merges: int = 300, corpus: str = CORPUS) -> dict:
    """Writes a CLIP-style ``vocab.json`` + ``merges.txt`` learned on ``corpus`` (greedy pair counts).

    Vocabulary order as CLIP's: the 256 byte symbols, their ``</w>`` forms, one token per merge,
    then ``<|startoftext|>`` and ``<|endoftext|>``. Returns the vocabulary.
    """
    table = bytes_to_unicode()
    words = collections.Counter(corpus.lower().split())
    vocab = list(table.values())
    vocab += [v + "</w>" for v in vocab]
    seqs = {}
    for w in words:
        chars = ["".join(table[b] for b in ch.encode("utf-8")) for ch in w]
        symbols = list("".join(chars))
        symbols[-1] += "</w>"
        seqs[w] = tuple(symbols)
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i < len(s) - 1 and (s[i], s[i + 1]) == (a, b):
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = tuple(out)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mapping = {tok: i for i, tok in enumerate(vocab)}
    (folder / "vocab.json").write_text(json.dumps(mapping), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    return mapping


def added_token(content: str) -> dict:
    """transformers < 5's serialised AddedToken (hub tokenizer folders, e.g. Stable Diffusion 1.5's)."""
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def hub_style_configs(folder, *, pad_token="<|endoftext|>", model_max_length=77, padding_side=None) -> None:
    """``tokenizer_config.json`` + ``special_tokens_map.json`` as the Stable Diffusion hub folders have them."""
    folder = Path(folder)
    specials = {"bos_token": added_token("<|startoftext|>"), "eos_token": added_token("<|endoftext|>"),
                "pad_token": pad_token, "unk_token": added_token("<|endoftext|>")}
    config = {"add_prefix_space": False, "do_lower_case": True, "errors": "replace",
              "model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer", **specials}
    if padding_side is not None:
        config["padding_side"] = padding_side
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials))


# The tiny pipeline: a UNet2DConditionModel on 4x8x8 latents with text width 32, a 2-level KL VAE
# (images 16x16x3), a 2-layer CLIP text encoder over the trained vocabulary.
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
VAE = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
           up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, latent_channels=4,
           sample_size=16, layers_per_block=1)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77)


def tiny_text_pipeline(folder, seed: int = 0) -> Path:
    """A StableDiffusionPipeline with random tiny components, written by ``save_pretrained``."""
    import diffusers
    import torch
    import transformers

    from cond_oracle import quiet, randomise_vectors

    quiet()
    folder = Path(folder)
    tok_dir = folder.parent / f"{folder.name}-tokenizer-src"
    vocab = train_bpe(tok_dir)
    hub_style_configs(tok_dir)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    torch.manual_seed(seed)
    unet = randomise_vectors(diffusers.UNet2DConditionModel(**UNET), seed + 1)
    vae = diffusers.AutoencoderKL(**VAE).eval()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], **CLIP)).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                        beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
