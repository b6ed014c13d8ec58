"""jaxmia's pure-Python CLIP tokenizer against transformers' CLIPTokenizer (the oracle), on tricky strings.

The vocabulary is learned offline on a small multilingual corpus (tests/text_pipeline_util.py), so
real merges fire (across letters, the ``</w>`` suffix, multi-byte characters). Both folder layouts
are checked: the hub's ``vocab.json`` + ``merges.txt`` with transformers < 5 AddedToken configs, and
the ``tokenizer.json`` transformers ≥ 5 writes when it re-saves the folder. Where the ``open_clip``
package is installed, the released CLIP vocabulary (49,408 tokens) is checked too.
"""

import gzip
import json

import numpy as np
import pytest

from jaxmia.models import clip_tokenizer
from jaxmia.models.clip_tokenizer import load_clip_tokenizer

from text_pipeline_util import hub_style_configs, train_bpe

transformers = pytest.importorskip("transformers")

TRICKY = [
    "a photo of a cat", "A PHOTO Of A Cat!!", "It's the dog's bone; they'll've", "''s 'Sun 'RE", "Hello,world...(ok)?",
    "café naïve résumé Ångström", "cafe\u0301 decomposed (NFC)", "ΟΔΟΣ Σίσυφος", "İstanbul STRASSE straße ǅ",
    "東京タワー and 北京", "emoji 😀🎉 ok", "numbers 12345 3.14 1,000 ½ Ⅻ ٣", "tabs\tand\nnew lines  \u00a0nbsp\u3000x\u2003y",
    "ctrl\x1cchar\x07bell \x00nul", "<|endoftext|> inside <|startoftext|>", "<|ENDOFTEXT|>! upper", "a<|startoftext|>b", "ok!?<|endoftext|>.",
    "", "   ", "don't DON'T", "#hashtag @user http://x.com/a?b=c", "हिन्दी मानक", "zero\u200bwidth", "ﬁ ligature",
    "‘curly’ “quotes” — dash – en", "photo " * 100, "x" * 200,
]


def _hf(folder):
    return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def _oracle(tokenizer, texts, length=77):
    return np.array([tokenizer(t, padding="max_length", max_length=length, truncation=True)["input_ids"] for t in texts])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{layout: folder}: the hub layout, and the same tokenizer re-saved by transformers (tokenizer.json)."""
    root = tmp_path_factory.mktemp("tok")
    train_bpe(root / "hub")
    hub_style_configs(root / "hub")
    _hf(root / "hub").save_pretrained(str(root / "saved"))
    assert (root / "saved" / "tokenizer.json").is_file() and not (root / "saved" / "merges.txt").exists()
    return {"hub": root / "hub", "saved": root / "saved"}


@pytest.mark.parametrize("layout", ["hub", "saved"])
def test_ids_match_transformers_on_tricky_strings(folders, layout):
    ours = load_clip_tokenizer(folders[layout])
    expected = _oracle(_hf(folders[layout]), TRICKY)
    got = ours(TRICKY, 77)
    assert got.shape == (len(TRICKY), 77) and got.dtype == np.int32
    for text, a, b in zip(TRICKY, got, expected):
        assert a.tolist() == b.tolist(), repr(text)
    # The trained merges really fire: "photo" is one token, not five letters.
    vocab = json.loads((folders["hub"] / "vocab.json").read_text())
    assert ours.encode("photo") == [vocab["photo</w>"]]
    # Truncation keeps 75 tokens between bos and eos; padding uses the pad token (eos here).
    long_row, empty_row = got[TRICKY.index("photo " * 100)], got[TRICKY.index("")]
    assert long_row[0] == ours.bos_id and long_row[-1] == ours.eos_id and np.all(long_row[1:-1] == vocab["photo</w>"])
    assert empty_row[:2].tolist() == [ours.bos_id, ours.eos_id] and np.all(empty_row[2:] == ours.pad_id)


def test_pad_token_and_side_and_length_follow_the_config(folders, tmp_path):
    """Stable Diffusion 2's tokenizer pads with "!" (id 0); a left padding side and a shorter length are honoured."""
    folder = tmp_path / "sd2"
    train_bpe(folder)
    hub_style_configs(folder, pad_token="!", model_max_length=20, padding_side="left")
    ours, hf = load_clip_tokenizer(folder), _hf(folder)
    assert ours.pad_id == 0 == hf.pad_token_id and ours.model_max_length == 20 and ours.padding_side == "left"
    texts = ["a cat", "a photo of a red car on a street at night , two dogs and three cats"]
    expected = np.array([hf(t, padding="max_length", max_length=20, truncation=True)["input_ids"] for t in texts])
    got = ours(texts, 20)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0] == 0 and got[0, -1] == ours.eos_id  # padded on the left


def test_digest_and_refusals(folders, tmp_path):
    a, b = load_clip_tokenizer(folders["hub"]), load_clip_tokenizer(folders["saved"])
    assert a.digest != b.digest and len(a.digest) == 64
    assert load_clip_tokenizer(folders["hub"]).digest == a.digest
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        load_clip_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json, nor vocab.json"):
        load_clip_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad"
    train_bpe(bad)
    (bad / "merges.txt").write_text("#version: 0.2\na b\nc d e\n")
    with pytest.raises(ValueError, match=r"merges.txt: line 3 'c d e' is not two symbols"):
        load_clip_tokenizer(bad)
    train_bpe(bad)
    (bad / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|endoftext|>"}))
    (bad / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!"}))
    with pytest.raises(ValueError, match=r"special_tokens_map.json: pad_token='!' disagrees with .*tokenizer_config"):
        load_clip_tokenizer(bad)
    (bad / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|pad|>"}))
    (bad / "tokenizer_config.json").unlink()
    with pytest.raises(ValueError, match=r"pad_token '<\|pad\|>' is not in the vocabulary"):
        load_clip_tokenizer(bad)
    saved = json.loads((folders["saved"] / "tokenizer.json").read_text())
    saved["model"]["end_of_word_suffix"] = ""
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "tokenizer.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="not CLIP's BPE"):
        load_clip_tokenizer(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="a caption must be a string"):
        a([None], 77)


def test_pieces_and_normalisation_rules():
    """The pre-tokeniser's leftmost-first alternatives and the per-character lower case, stated directly."""
    assert clip_tokenizer.split_pieces("it's a''s 12ab!?<|endoftext|>.") == \
        ["it", "'s", "a", "''", "s", "1", "2", "ab", "!?<|", "endoftext", "|>."]  # punctuation runs are greedy
    assert clip_tokenizer.split_pieces("a<|startoftext|>b") == ["a", "<|", "startoftext", "|>", "b"]
    assert clip_tokenizer.normalize("ΟΔΟΣ\t\n  X\u3000") == "οδοσ x "  # final sigma not contextual, runs of space → one
    assert clip_tokenizer.normalize("e\u0301") == "é"
    assert clip_tokenizer.bpe(["a", "a", "a", "b</w>"], {("a", "a"): 0, ("aa", "a"): 1}) == ["aaa", "b</w>"]
    table = clip_tokenizer.bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord("a")] == "a" and table[0] == chr(256) and table[32] == "Ġ"
    assert list(table.values())[0] == "!"  # CLIP's vocabulary starts with the printable bytes


def _open_clip_bpe():
    open_clip = pytest.importorskip("open_clip")
    from pathlib import Path

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.skip("open_clip ships no bpe_simple_vocab_16e6.txt.gz")
    return path


def test_released_clip_vocabulary_when_available(tmp_path):
    """The released vocabulary, as transformers' conversion builds vocab.json / merges.txt from it."""
    lines = gzip.open(_open_clip_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    alphabet = list(clip_tokenizer.bytes_to_unicode().values())
    vocab = alphabet + [v + "</w>" for v in alphabet] + ["".join(m) for m in merges] + ["<|startoftext|>",
                                                                                       "<|endoftext|>"]
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    hub_style_configs(folder)
    ours = load_clip_tokenizer(folder)
    assert len(vocab) == 49408 and ours.bos_id == 49406 and ours.eos_id == 49407
    np.testing.assert_array_equal(ours(TRICKY, 77), _oracle(_hf(folder), TRICKY))
