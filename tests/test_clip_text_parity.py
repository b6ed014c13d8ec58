"""The Flax CLIP text encoder against transformers' PyTorch CLIPTextModel (the oracle), float32 CPU.

A tiny CLIPTextConfig (width 32, 2 layers, 2 heads, vocabulary 100, 16 positions) with seeded random
weights, saved with ``save_pretrained(safe_serialization=True)`` and loaded by
:func:`jaxmia.models.clip_text.load_clip_text`. Tolerance 1e-4 on the last hidden state and the pooled
(end-of-text) output.
"""

import json

import jax
import numpy as np
import pytest

from jaxmia.models import clip_text

from cond_oracle import quiet, torch_clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
BOS, EOS, PAD = 98, 99, 0
# Two prompts: a short one padded with PAD, a longer one padded with EOS (both layouts occur).
IDS = np.array([[BOS, 5, 7, EOS] + [PAD] * 12, [BOS, 13, 40, 41, 42, EOS] + [EOS] * 10])


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    quiet()
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


# eos_token_id 2 is the legacy setting (SD's text encoder): pool at argmax(ids); else at the first EOS.
@pytest.mark.parametrize("hidden_act, eos", [("quick_gelu", 2), ("gelu", EOS)])
def test_matches_transformers_with_and_without_padding_mask(tmp_path, hidden_act, eos):
    model = torch_clip(hidden_act=hidden_act, eos_token_id=eos, bos_token_id=BOS, pad_token_id=PAD)
    model.save_pretrained(tmp_path, safe_serialization=True)
    module, config, params = clip_text.load_clip_text(tmp_path)
    assert config.hidden_act == hidden_act and config.legacy_eos == (eos == 2)
    run = jax.jit(lambda p, ids, mask: clip_text.encode(module, p, ids, mask))
    mask = (IDS != PAD).astype(np.int32)
    for attention_mask in (None, mask):
        with torch.no_grad():
            ref = model(torch.from_numpy(IDS), attention_mask=None if attention_mask is None else torch.from_numpy(mask))
        hidden, pooled = run(params, IDS, attention_mask)
        assert np.max(np.abs(np.asarray(hidden) - ref.last_hidden_state.numpy())) <= TOL
        assert np.max(np.abs(np.asarray(pooled) - ref.pooler_output.numpy())) <= TOL
    # Causal: the first prompt's first 5 states do not depend on the tokens after them.
    hidden, _ = run(params, IDS, None)
    changed = IDS.copy()
    changed[0, 5] = 17
    hidden2, _ = run(params, changed, None)
    np.testing.assert_allclose(np.asarray(hidden2)[0, :5], np.asarray(hidden)[0, :5], atol=1e-6)
    assert np.max(np.abs(np.asarray(hidden2)[0, 5:] - np.asarray(hidden)[0, 5:])) > 1e-3


def test_hub_layout_with_text_model_prefix_and_position_ids_buffer(tmp_path):
    """transformers 4.x / hub files name keys ``text_model.*`` and may carry ``position_ids``."""
    from safetensors.numpy import save_file

    model = torch_clip()
    model.save_pretrained(tmp_path / "v5", safe_serialization=True)
    state = {f"text_model.{k}": v.numpy() for k, v in model.state_dict().items()}
    state["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    (tmp_path / "hub").mkdir()
    save_file(state, str(tmp_path / "hub" / "model.safetensors"))
    config = json.loads((tmp_path / "v5" / "config.json").read_text())
    (tmp_path / "hub" / "config.json").write_text(json.dumps({**config, "torch_dtype": "float32", "use_cache": True}))
    _, _, a = clip_text.load_clip_text(tmp_path / "v5")
    _, _, b = clip_text.load_clip_text(tmp_path / "hub")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # embed_token_ids: fixed-size chunks (the last one padded), the last hidden state of every row.
    ids = np.concatenate([IDS, IDS[:1]])
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).last_hidden_state.numpy()
    got = clip_text.embed_token_ids(tmp_path / "hub", ids, batch_size=2)
    assert got.shape == (3, 16, 32) and np.max(np.abs(got - expected)) <= TOL
    with pytest.raises(ValueError, match=r"input_ids must lie in 0\.\.99"):
        clip_text.embed_token_ids(tmp_path / "hub", ids + 50)


def test_bad_folders_are_refused_by_name(tmp_path):
    model = torch_clip()
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    cases = [
        ({**config, "model_type": "clip_vision_model"}, "model_type is 'clip_vision_model'"),
        ({**config, "hidden_act": "xielu"}, "hidden_act='xielu'"),
        ({**config, "rope_theta": 10000}, "'rope_theta'"),
        ({**config, "hidden_size": 64}, "weights do not match"),
    ]
    for bad, words in cases:
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="config.json|model.safetensors") as err:
            clip_text.load_clip_text(tmp_path)
        assert words in str(err.value)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="never"):
        clip_text.load_clip_text(tmp_path)


def _tiny_tokenizer(folder):
    """A CLIP BPE tokenizer built offline: the byte-level alphabet, its end-of-word forms, 2 specials."""
    # GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to chr(256 + n).
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    letters = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = letters + [c + "</w>" for c in letters] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return len(vocab)


def test_tokenize_pads_to_77_like_stable_diffusion(tmp_path):
    vocab_size = _tiny_tokenizer(tmp_path / "tokenizer")
    ids = clip_text.tokenize(["ab", "a cat"], tmp_path / "tokenizer")
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    bos, eos = vocab_size - 2, vocab_size - 1
    letter = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    assert ids[0, :4].tolist() == [bos, letter["a"], letter["b</w>"], eos]
    assert np.all(ids[0, 4:] == eos)  # padded with the end-of-text token
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        clip_text.tokenize(["a"], tmp_path / "missing")
