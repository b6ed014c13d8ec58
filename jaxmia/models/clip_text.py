"""The CLIP text encoder (transformers' ``CLIPTextModel``) in Flax, and its loader.

Text-to-image denoisers (Stable Diffusion, U-ViT T2I) cross-attend to the last hidden state of a CLIP
text encoder, (B, 77, 768) for CLIP ViT-L/14. jaxmia's attacks only need those embeddings, given per
image (:mod:`jaxmia.models.conditioning`); this module computes them from token ids, so a user can
build the embedding file from captions without PyTorch.

Structure (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
arXiv 2103.00020, §2.4; transformers ``models/clip/modeling_clip.py``): token + learned position
embeddings; ``num_hidden_layers`` pre-LN blocks (x += out_proj(causal MHA(layer_norm1(x)));
x += fc2(act(fc1(layer_norm2(x))))); ``final_layer_norm``. The pooled output is the final hidden
state at the end-of-text token: the position of the largest token id when the config's
``eos_token_id`` is 2 (old configs, including Stable Diffusion's; the EOS token has the largest id in
CLIP's vocabulary), else the first position holding ``eos_token_id``, as transformers does.

Files: a transformers model folder, ``config.json`` + ``model.safetensors`` (or a sharded
``model.safetensors.index.json``). Keys with or without the ``text_model.`` prefix (transformers 4.x
and hub checkpoints use it; 5.x does not) map to the Flax tree ``embeddings/token_embedding``,
``embeddings/position_embedding``, ``encoder/layers_<i>/{self_attn/{q,k,v,out}_proj, layer_norm1,
layer_norm2, mlp/fc1, mlp/fc2}``, ``final_layer_norm``.

Tokenisation: jaxmia ships no tokenizer; :func:`encode` takes token ids (B, L). :func:`tokenize` is
an optional helper that needs ``transformers`` and a local tokenizer folder (``vocab.json`` +
``merges.txt``, e.g. a pipeline's ``tokenizer/``); it never downloads.

Deliberate differences from transformers: inference only (no dropout), attention in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import config as typed
from jaxmia.models import convert
from jaxmia.models.attention import dot_product_attention, layer_norm
from jaxmia.models.registry import register_module_lists

register_module_lists("layers")  # encoder.layers.<i> (the vision tower reuses these layers)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")
PREFIX = "text_model."
# A non-persistent buffer that transformers < 4.31 wrote into checkpoints: the positions 0..L-1.
POSITION_IDS_KEY = "embeddings.position_ids"

HIDDEN_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}

# transformers' generic PretrainedConfig fields (bookkeeping, training, generation): they do not change
# the text encoder's forward pass and are ignored. Any other key outside CLIPTextConfig is refused.
_GENERIC_KEYS = frozenset("""
architectures model_type transformers_version torch_dtype dtype name_or_path initializer_range initializer_factor
attention_dropout dropout projection_dim pad_token_id bos_token_id sep_token_id decoder_start_token_id
return_dict output_hidden_states output_attentions torchscript use_bfloat16 tf_legacy_loss pruned_heads
tie_word_embeddings chunk_size_feed_forward is_encoder_decoder is_decoder cross_attention_hidden_size
add_cross_attention tie_encoder_decoder max_length min_length do_sample early_stopping num_beams num_beam_groups
diversity_penalty temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores return_dict_in_generate
forced_bos_token_id forced_eos_token_id remove_invalid_values exponential_decay_length_penalty suppress_tokens
begin_suppress_tokens finetuning_task id2label label2id tokenizer_class prefix task_specific_params problem_type
gradient_checkpointing use_cache
""".split())


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of transformers' ``CLIPTextConfig`` that shape the forward pass (transformers defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    @classmethod
    def from_transformers(cls, config: Mapping[str, Any], *, source: str = "config") -> "CLIPTextConfig":
        """Builds the config from a transformers ``config.json`` dictionary of a ``CLIPTextModel``.

        Raises:
          ValueError naming ``source`` and the key: another model type, an unknown key, a wrong type,
          an unsupported activation.
        """
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: a model config must be a JSON object, got {type(config).__name__}")
        model_type = config.get("model_type", "clip_text_model")
        if model_type != "clip_text_model":
            raise ValueError(f"{source}: model_type is {model_type!r}, not 'clip_text_model' (a CLIPTextModel folder)")
        return typed.from_class_config(cls, config, None, what="CLIPTextModel", source=source, ignore=_GENERIC_KEYS)

    def validate(self, *, source: str = "config") -> None:
        if self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"{source}: hidden_act={self.hidden_act!r} is not supported "
                             f"(supported: {', '.join(HIDDEN_ACTIVATIONS)})")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{source}: {name}={getattr(self, name)!r} must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{source}: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"{source}: layer_norm_eps={self.layer_norm_eps!r} must be > 0")

    @property
    def legacy_eos(self) -> bool:
        """``eos_token_id == 2`` (configs before transformers PR #24773): pool at argmax(input_ids)."""
        return self.eos_token_id == 2


# ==================================================================================================
# Modules
# ==================================================================================================


class CLIPAttention(nn.Module):
    heads: int
    precision: Any = None

    @nn.compact
    def __call__(self, x, mask):
        b, length, width = x.shape
        head_dim = width // self.heads

        def project(name):
            out = nn.Dense(width, precision=self.precision, name=name)(x)
            return out.reshape(b, length, self.heads, head_dim)

        out = dot_product_attention(project("q_proj"), project("k_proj"), project("v_proj"), mask=mask,
                                    precision=self.precision)
        return nn.Dense(width, precision=self.precision, name="out_proj")(out.reshape(b, length, width))


class CLIPMLP(nn.Module):
    intermediate_size: int
    hidden_act: str
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.intermediate_size, precision=self.precision, name="fc1")(x)
        h = HIDDEN_ACTIVATIONS[self.hidden_act](h)
        return nn.Dense(x.shape[-1], precision=self.precision, name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    config: CLIPTextConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, mask):
        cfg = self.config
        x = x + CLIPAttention(cfg.num_attention_heads, self.precision, name="self_attn")(
            layer_norm(cfg.layer_norm_eps, "layer_norm1")(x), mask)
        return x + CLIPMLP(cfg.intermediate_size, cfg.hidden_act, self.precision, name="mlp")(
            layer_norm(cfg.layer_norm_eps, "layer_norm2")(x))


class _Embeddings(nn.Module):
    config: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.config
        tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding")(input_ids)
        positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding")(
            jnp.arange(input_ids.shape[-1]))
        return tokens + positions[None]


class _Encoder(nn.Module):
    config: CLIPTextConfig
    precision: Any = None

    @nn.compact
    def __call__(self, x, mask):
        for i in range(self.config.num_hidden_layers):
            x = CLIPEncoderLayer(self.config, self.precision, name=f"layers_{i}")(x, mask)
        return x


class CLIPTextModel(nn.Module):
    """``(input_ids[B,L] int, attention_mask[B,L] | None) -> (last_hidden_state[B,L,D], pooled[B,D])``.

    Attention is causal; ``attention_mask`` (1 = token, 0 = padding), when given, also hides padded
    keys, as in transformers. Stable Diffusion pipelines pass no mask (pad tokens attend causally).
    """

    config: CLIPTextConfig
    precision: Any = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None):
        cfg = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"CLIP text encoder: input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"CLIP text encoder: {length} tokens exceed max_position_embeddings="
                             f"{cfg.max_position_embeddings}")
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]  # (1, 1, Lq, Lk)
        if attention_mask is not None:
            mask = mask & (jnp.asarray(attention_mask) > 0)[:, None, None, :]
        h = _Embeddings(cfg, name="embeddings")(input_ids)
        h = _Encoder(cfg, self.precision, name="encoder")(h, mask)
        h = layer_norm(cfg.layer_norm_eps, "final_layer_norm")(h)
        if cfg.legacy_eos:
            eos_position = jnp.argmax(input_ids, axis=-1)
        else:
            eos_position = jnp.argmax((input_ids == cfg.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = jnp.take_along_axis(h, eos_position[:, None, None], axis=1)[:, 0]
        return h, pooled


# ==================================================================================================
# Loading and running
# ==================================================================================================


@functools.lru_cache(maxsize=16)
def abstract_params(config: CLIPTextConfig) -> dict:
    module = CLIPTextModel(config)
    ids = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
    return jax.eval_shape(lambda: module.init(jax.random.key(0), ids))["params"]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP text encoder config not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_state_dict(folder: Path) -> tuple[dict, str]:
    from jaxmia.models.formats import read_safetensors

    single, index = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return read_safetensors(single), str(single)
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        out = {}
        for shard in sorted(set(weight_map.values())):
            out.update(read_safetensors(folder / shard))
        return out, str(index)
    others = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if others:
        raise ValueError(f"{folder / others[0]}: jaxmia reads CLIP weights from {WEIGHTS_NAME} only (never "
                         f"pickles); re-save with model.save_pretrained(dir, safe_serialization=True)")
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME}")


def text_state_dict_to_flax(state_dict: Mapping[str, Any], config: CLIPTextConfig, *, source: str = "state dict") -> dict:
    """transformers ``CLIPTextModel`` weights (with or without ``text_model.``) → the Flax parameter tree.

    Raises:
      ValueError naming ``source`` and the key on a missing, unexpected or mis-shaped weight.
    """
    renamed = {}
    for key, value in state_dict.items():
        name = key[len(PREFIX):] if key.startswith(PREFIX) else key
        if name == POSITION_IDS_KEY:
            continue  # a buffer (0..L-1), recomputed here
        renamed[name] = value
    return convert.torch_to_flax(renamed, abstract_params(config), source=source)


def load_clip_text(folder) -> tuple[CLIPTextModel, CLIPTextConfig, dict]:
    """Loads a transformers ``CLIPTextModel`` folder (``config.json`` + ``model.safetensors``).

    Returns:
      (module, config, params): params are float32 JAX arrays; run with :func:`encode`.

    Raises:
      FileNotFoundError / ValueError with one line naming the file (and key).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: CLIP text encoder folder not found")
    config = CLIPTextConfig.from_transformers(_read_json(folder / CONFIG_NAME), source=str(folder / CONFIG_NAME))
    state_dict, source = _read_state_dict(folder)
    params = text_state_dict_to_flax(state_dict, config, source=source)
    return CLIPTextModel(config), config, jax.tree_util.tree_map(jnp.asarray, params)


def encode(module: CLIPTextModel, params, input_ids, attention_mask=None):
    """(last_hidden_state (B, L, D), pooled (B, D)) for token ids (B, L). Jittable; not jitted here."""
    ids = jnp.asarray(input_ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"CLIP text encoder: input_ids must be integers, got dtype {ids.dtype}")
    return module.apply({"params": params}, ids, attention_mask)


@functools.lru_cache(maxsize=8)
def _jit_encode(module: CLIPTextModel):
    return jax.jit(lambda params, ids: module.apply({"params": params}, ids)[0])


def tokenize(prompts: Sequence[str], tokenizer_dir, *, max_length: Optional[int] = None) -> np.ndarray:
    """Token ids (B, max_length) int32 of ``prompts``, padded and truncated as Stable Diffusion does.

    Optional: needs the ``transformers`` package and a local tokenizer folder (``vocab.json``,
    ``merges.txt``, usually ``tokenizer_config.json``); nothing is downloaded. ``max_length`` defaults
    to the tokenizer's ``model_max_length`` (77 for CLIP).
    """
    try:
        from transformers import CLIPTokenizer
    except ImportError:
        raise ImportError("jaxmia.models.clip_text.tokenize needs the optional 'transformers' package "
                          "(pip install transformers); or pass token ids directly") from None
    folder = Path(tokenizer_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: tokenizer folder not found")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    length = int(max_length or tokenizer.model_max_length)
    out = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="np")
    return np.asarray(out["input_ids"], np.int32)


def embed_token_ids(folder, input_ids, *, batch_size: int = 16) -> np.ndarray:
    """The last hidden states (N, L, D) float32 of token ids (N, L), with the encoder in ``folder``.

    The usual way to build per-image text conditioning for :func:`jaxmia.models.conditioning.
    save_text_embeddings` (one caption's ids per image).
    """
    module, _, params = load_clip_text(folder)
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an (N, L) integer array, got shape {ids.shape} dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= module.config.vocab_size):
        raise ValueError(f"input_ids must lie in 0..{module.config.vocab_size - 1} (the vocabulary), "
                         f"found {ids.min()}..{ids.max()}")
    run = _jit_encode(module)
    chunks = []
    for lo in range(0, len(ids), batch_size):
        chunk = ids[lo:lo + batch_size]
        pad = batch_size - len(chunk)  # fixed shape: one compilation
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        chunks.append(np.asarray(run(params, jnp.asarray(padded, jnp.int32)))[: len(chunk)])
    width = module.config.hidden_size
    return np.concatenate(chunks) if chunks else np.zeros((0, ids.shape[1], width), np.float32)
