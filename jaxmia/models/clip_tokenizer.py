"""CLIP's byte-level BPE tokenizer in pure Python: a pipeline's ``tokenizer/`` folder → token ids.

Text-to-image pipelines (Stable Diffusion, U-ViT T2I) turn a caption into CLIP token ids with
transformers' ``CLIPTokenizer`` before the text encoder sees it. jaxmia reproduces that tokenizer
without transformers or tokenizers, from the same files, so captions can be encoded with no PyTorch
stack at run time.

Algorithm (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
arXiv 2103.00020, §2.4 and the released ``simple_tokenizer.py``; Sennrich et al., "Neural Machine
Translation of Rare Words with Subword Units", arXiv 1508.07909, for BPE), as transformers ≥ 5
runs it (``models/clip/tokenization_clip.py``, a *tokenizers* pipeline):

1. added tokens (``<|startoftext|>``, ``<|endoftext|>``, and any others ``tokenizer.json`` lists)
   are cut out of the raw text and map to their ids directly;
2. normalise each remaining span: Unicode NFC, every run of white space → one space, lower case
   (character by character, as Rust's ``char::to_lowercase``: a final Σ becomes σ, not ς);
3. split into pieces with CLIP's pattern ``<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
   \\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+`` (leftmost-first; text matched by nothing, i.e. white space,
   is dropped): letters by Unicode general category L*, numbers by N* (one digit per piece), white
   space by the Unicode ``White_Space`` property. The ByteLevel step's own GPT-2 pattern then cuts
   only a literal ``<|startoftext|>`` / ``<|endoftext|>`` piece again, into ``<|``, the word, ``|>``;
4. map each piece's UTF-8 bytes to GPT-2's printable byte alphabet (:func:`bytes_to_unicode`);
5. BPE: the piece's symbols, the last one suffixed ``</w>``, merged pair by pair in the order of
   ``merges.txt`` (lowest rank first, all non-overlapping occurrences left to right); a symbol not in
   the vocabulary becomes the unknown token;
6. ``[bos] + ids[: max_length − 2] + [eos]``, padded with the pad token to ``max_length`` on the
   tokenizer's padding side: what ``tokenizer(prompt, padding="max_length", max_length=77,
   truncation=True)`` returns in the diffusers pipelines.

Files: ``tokenizer.json`` (what transformers ≥ 5 saves; its BPE model's ``vocab`` and ``merges``,
checked to be CLIP's normaliser and pre-tokeniser) or ``vocab.json`` + ``merges.txt`` (hub
folders; the first line of ``merges.txt`` is the ``#version`` header). ``tokenizer_config.json`` and
``special_tokens_map.json`` give ``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``
(strings or ``{"content": ...}`` objects; CLIPTokenizer's defaults ``<|startoftext|>`` /
``<|endoftext|>`` where both are silent), ``model_max_length`` and ``padding_side``; the two files
must agree where both speak.

Deliberate difference from transformers < 5 (the "slow" tokenizer): that one capped ``merges.txt``
at 48,894 merges and, when ``ftfy`` was installed, ran ``ftfy.fix_text``; the released CLIP files
hold exactly 48,894 merges, and mojibake repair is not reproduced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

TOKENIZER_JSON = "tokenizer.json"
VOCAB_NAME = "vocab.json"
MERGES_NAME = "merges.txt"
CONFIG_NAMES = ("tokenizer_config.json", "special_tokens_map.json")
END_OF_WORD = "</w>"
# CLIPTokenizer's own defaults (transformers models/clip/tokenization_clip.py).
DEFAULT_SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>"}
# transformers' VERY_LARGE_INTEGER: what a tokenizer config without a real model_max_length holds.
_NO_MAX_LENGTH = int(1e20)
# The pre-tokeniser pattern of CLIPTokenizer (tokenizer.json spells it with these escapes).
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_SPECIAL_PIECES = ("<|startoftext|>", "<|endoftext|>")
# The Unicode White_Space property: what \s matches in the tokenizers library's regular expressions.
WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))
# Bumped whenever this module's output could change: part of every cache key.
IMPLEMENTATION_VERSION = "1"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table, in its order (the order of CLIP's first
    256 vocabulary entries): the printable Latin-1 bytes map to themselves, then the other 68 bytes,
    in byte order, to ``chr(256 + n)`` (Radford et al. 2019, ``encoder.py``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(extra)})
    return table


_BYTE_CHARS = bytes_to_unicode()


def normalize(text: str) -> str:
    """NFC, white-space runs → one space, lower case per character (step 2 of the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    out, in_space = [], False
    for ch in text:
        if ch in WHITE_SPACE:
            if not in_space:
                out.append(" ")
            in_space = True
            continue
        in_space = False
        out.append(ch.lower())
    return "".join(out)


def _kind(ch: str) -> str:
    if ch in WHITE_SPACE:
        return "space"
    category = unicodedata.category(ch)[0]
    return "letter" if category == "L" else "number" if category == "N" else "other"


def split_pieces(text: str) -> list[str]:
    """CLIP's pre-tokeniser pattern, leftmost-first (step 3 of the module docstring)."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in _SPECIAL_PIECES if text.startswith(s, i)), None)
        if special is not None:
            # one piece of the CLIP pattern, which the ByteLevel step's GPT-2 pattern cuts again
            pieces += ["<|", special[2:-2], "|>"]
            i += len(special)
            continue
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if contraction is not None:
            pieces.append(contraction)
            i += len(contraction)
            continue
        kind = _kind(text[i])
        if kind == "space":
            i += 1
            continue
        if kind == "number":
            pieces.append(text[i])
            i += 1
            continue
        j = i + 1
        while j < n and _kind(text[j]) == kind:
            j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


def _split_at(text: str, tokens: Mapping[str, int]) -> list[tuple[str, bool]]:
    """``text`` cut at occurrences of ``tokens`` (longest first at each position): [(span, is_token)]."""
    if not tokens:
        return [(text, False)]
    by_length = sorted(tokens, key=len, reverse=True)
    out, start, i = [], 0, 0
    while i < len(text):
        hit = next((t for t in by_length if text.startswith(t, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], False))
        out.append((hit, True))
        i = start = i + len(hit)
    if start < len(text):
        out.append((text[start:], False))
    return out


def bpe(symbols: Sequence[str], ranks: Mapping[tuple, int]) -> list[str]:
    """Byte-pair merging of one word: repeatedly merge the lowest-ranked adjacent pair, every
    non-overlapping occurrence left to right, until no adjacent pair has a rank."""
    word = list(symbols)
    while len(word) > 1:
        best = min(zip(word, word[1:]), key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


@dataclasses.dataclass(frozen=True, eq=False)
class CLIPTokenizer:
    """A loaded CLIP BPE tokenizer (use :func:`load_clip_tokenizer`).

    Attributes:
      vocab: token string → id.
      ranks: merge pair → rank (its line in ``merges.txt``, 0 first).
      added: added-token content → id, cut out of the raw text before normalisation.
      added_normalized: added tokens matched in the normalised text instead (``"normalized": true``).
      bos_id, eos_id, pad_id, unk_id: the special ids.
      model_max_length: the tokenizer config's ``model_max_length`` (None when it gives none).
      padding_side: ``right`` (default) or ``left``.
      digest: SHA-256 of the files read, their names and :data:`IMPLEMENTATION_VERSION`.
      source: the folder, for messages.
    """

    vocab: Mapping[str, int] = dataclasses.field(repr=False)
    ranks: Mapping[tuple, int] = dataclasses.field(repr=False)
    added: Mapping[str, int]
    added_normalized: Mapping[str, int]
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    model_max_length: Optional[int]
    padding_side: str
    digest: str
    source: str

    def __post_init__(self):
        object.__setattr__(self, "_cache", {})

    def _word_ids(self, piece: str) -> list[int]:
        cache = self._cache
        if piece not in cache:
            chars = [_BYTE_CHARS[b] for b in piece.encode("utf-8")]
            chars[-1] += END_OF_WORD
            symbols = bpe(chars, self.ranks)
            cache[piece] = [self.vocab.get(s, self.unk_id) for s in symbols]
        return cache[piece]

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text`` without bos/eos, padding or truncation (steps 1–5)."""
        if not isinstance(text, str):
            raise ValueError(f"{self.source}: a caption must be a string, got {type(text).__name__}")
        ids: list[int] = []
        for span, raw_hit in _split_at(text, self.added):
            if raw_hit:
                ids.append(self.added[span])
                continue
            for piece, hit in _split_at(normalize(span), self.added_normalized):
                if hit:
                    ids.append(self.added_normalized[piece])
                    continue
                for word in split_pieces(piece):
                    ids.extend(self._word_ids(word))
        return ids

    def __call__(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """(B, max_length) int32: ``[bos] + ids[: max_length − 2] + [eos]``, padded with ``pad_id``."""
        if isinstance(texts, str):
            raise ValueError(f"{self.source}: pass a list of captions, not one string")
        if max_length < 2:
            raise ValueError(f"{self.source}: max_length={max_length} leaves no room for the bos and eos tokens")
        out = np.full((len(texts), max_length), self.pad_id, np.int32)
        for row, text in enumerate(texts):
            ids = [self.bos_id, *self.encode(text)[: max_length - 2], self.eos_id]
            if self.padding_side == "right":
                out[row, : len(ids)] = ids
            else:
                out[row, max_length - len(ids):] = ids
        return out


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _token_content(value, path: Path, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"{path}: {key}={value!r} is neither a string nor an object with a 'content' string")


def _read_tokenizer_json(path: Path) -> tuple[dict, dict, dict]:
    """(vocab, merge ranks, added tokens {content: (id, normalized)}) of a transformers ≥ 5 ``tokenizer.json``, checked to be CLIP's."""
    data = _read_json(path, "tokenizer file")
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path}: no 'model' object (not a tokenizers file)")
    model = data["model"]
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD:
        raise ValueError(f"{path}: model type {model.get('type')!r} with end_of_word_suffix "
                         f"{model.get('end_of_word_suffix')!r} is not CLIP's BPE (type 'BPE', suffix '{END_OF_WORD}')")
    for key in ("continuing_subword_prefix", "dropout"):
        if model.get(key) not in (None, ""):
            raise ValueError(f"{path}: model.{key}={model[key]!r} is not supported (CLIP uses none)")
    if model.get("byte_fallback") or model.get("ignore_merges"):
        raise ValueError(f"{path}: byte_fallback / ignore_merges are not CLIP's BPE settings")
    pattern = json.dumps(data.get("pre_tokenizer"))
    if CLIP_PATTERN.replace("\\", "\\\\") not in pattern or "ByteLevel" not in pattern:
        raise ValueError(f"{path}: the pre_tokenizer is not CLIP's (its Split pattern and ByteLevel step)")
    normalizer = json.dumps(data.get("normalizer"))
    if not all(word in normalizer for word in ('"NFC"', '"Lowercase"', "Replace")):
        raise ValueError(f"{path}: the normalizer is not CLIP's (NFC, white space → ' ', Lowercase)")
    vocab = model.get("vocab")
    merges = model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ValueError(f"{path}: model.vocab must be an object and model.merges a list")
    pairs = []
    for n, merge in enumerate(merges):
        pair = tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) if isinstance(merge, list) else ()
        if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise ValueError(f"{path}: model.merges[{n}]={merge!r} is not a pair of symbols")
        pairs.append(pair)
    added = {}
    for n, token in enumerate(data.get("added_tokens") or []):
        if not isinstance(token, dict) or not isinstance(token.get("content"), str) or not isinstance(token.get("id"), int):
            raise ValueError(f"{path}: added_tokens[{n}] needs a 'content' string and an integer 'id'")
        if token.get("lstrip") or token.get("rstrip") or token.get("single_word"):
            raise ValueError(f"{path}: added token {token['content']!r} sets lstrip / rstrip / single_word, which "
                             "jaxmia does not reproduce")
        added[token["content"]] = (token["id"], bool(token.get("normalized")))
    return vocab, _ranks(pairs), added


def _ranks(pairs) -> dict:
    ranks = {}
    for rank, pair in enumerate(pairs):
        ranks.setdefault(pair, rank)  # a repeated merge keeps its first rank, as tokenizers does
    return ranks


def _read_vocab_merges(folder: Path) -> tuple[dict, dict]:
    vocab_path, merges_path = folder / VOCAB_NAME, folder / MERGES_NAME
    vocab = _read_json(vocab_path, "vocabulary")
    if not isinstance(vocab, dict):
        raise ValueError(f"{vocab_path}: expected a JSON object token → id, got {type(vocab).__name__}")
    try:
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ValueError(f"{merges_path}: not UTF-8 text ({err})") from None
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    pairs = []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(f"{merges_path}: line {number} {line!r} is not two symbols separated by a space")
        pairs.append(pair)
    return vocab, _ranks(pairs)


def _special_settings(folder: Path) -> tuple[dict, list[Path]]:
    """Special tokens, model_max_length and padding_side from the two config files (which must agree)."""
    found: dict = {}
    where: dict = {}
    read = []
    for name in CONFIG_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        read.append(path)
        data = _read_json(path, "tokenizer config")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        tokenizer_class = data.get("tokenizer_class")
        if tokenizer_class is not None and tokenizer_class not in ("CLIPTokenizer", "CLIPTokenizerFast"):
            raise ValueError(f"{path}: tokenizer_class={tokenizer_class!r} is not CLIPTokenizer")
        for key in (*DEFAULT_SPECIAL, "model_max_length", "padding_side"):
            if key not in data or data[key] is None:
                continue
            value = _token_content(data[key], path, key) if key in DEFAULT_SPECIAL else data[key]
            if key in DEFAULT_SPECIAL:
                # transformers < 5 wrote AddedToken objects; a plain string is a special token matched raw
                found[f"{key}:normalized"] = isinstance(data[key], Mapping) and bool(data[key].get("normalized", False))
            if key in found and found[key] != value:
                raise ValueError(f"{path}: {key}={value!r} disagrees with {where[key]} ({found[key]!r})")
            found[key], where[key] = value, path
    return found, read


def _digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256(f"jaxmia clip_tokenizer {IMPLEMENTATION_VERSION}\0".encode())
    for path in sorted(paths, key=lambda p: p.name):
        h.update(f"{path.name}\0".encode())
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def load_clip_tokenizer(folder) -> CLIPTokenizer:
    """Loads a CLIP tokenizer folder (a pipeline's ``tokenizer/``): see the module docstring for the files.

    Raises:
      FileNotFoundError / ValueError with one line naming the file and the key or line.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: tokenizer folder not found")
    tokenizer_json = folder / TOKENIZER_JSON
    if tokenizer_json.is_file():
        vocab, ranks, added = _read_tokenizer_json(tokenizer_json)
        files = [tokenizer_json]
    elif (folder / VOCAB_NAME).is_file() and (folder / MERGES_NAME).is_file():
        (vocab, ranks), added = _read_vocab_merges(folder), {}
        files = [folder / VOCAB_NAME, folder / MERGES_NAME]
    else:
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise FileNotFoundError(f"{folder}: no {TOKENIZER_JSON}, nor {VOCAB_NAME} + {MERGES_NAME} (found {present})")
    source = str(files[0])
    bad = next(((k, v) for k, v in vocab.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0), None)
    if bad is not None:
        raise ValueError(f"{source}: vocabulary entry {bad[0]!r} has id {bad[1]!r}, not a non-negative integer")
    settings, config_files = _special_settings(folder)
    ids = {}
    for key, default in DEFAULT_SPECIAL.items():
        token = settings.get(key, default)
        if token in added:
            ids[key] = added[token][0]
        elif token in vocab:
            ids[key] = vocab[token]
        else:
            raise ValueError(f"{source}: {key} {token!r} is not in the vocabulary")
    if not added:
        # vocab.json + merges.txt: the special tokens are the added tokens. Several may share one
        # content (eos = unk = pad); the last declaration, in transformers' order, sets its
        # "normalized" flag (what transformers writes into tokenizer.json when it re-saves the folder).
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            added[settings.get(key, DEFAULT_SPECIAL[key])] = (ids[key], settings.get(f"{key}:normalized", False))
    max_length = settings.get("model_max_length")
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, (int, float)) or max_length < 2:
            raise ValueError(f"{folder}: model_max_length={max_length!r} must be an integer >= 2")
        max_length = None if max_length >= _NO_MAX_LENGTH else int(max_length)
    side = settings.get("padding_side", "right")
    if side not in ("right", "left"):
        raise ValueError(f"{folder}: padding_side={side!r} must be 'right' or 'left'")
    raw = {content: i for content, (i, normalized) in added.items() if not normalized}
    normalized = {content: i for content, (i, normalized) in added.items() if normalized}
    return CLIPTokenizer(vocab=vocab, ranks=ranks, added=raw, added_normalized=normalized, bos_id=ids["bos_token"], eos_id=ids["eos_token"],
                         pad_id=ids["pad_token"], unk_id=ids["unk_token"], model_max_length=max_length,
                         padding_side=side, digest=_digest(files + config_files), source=str(folder))
