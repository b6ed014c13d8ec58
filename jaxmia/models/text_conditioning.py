"""Captions → the text conditioning of a text-to-image pipeline, with its own tokenizer and text encoder.

CDI conditions a text-to-image denoiser on each image's own caption (docs/methods/cdi.md §9: U-ViT T2I on
a CLIP ViT-L/14 embedding of one caption; docs/methods/mia.md §4.2: DRC "as in CDI"). A pipeline folder
(``model_index.json`` naming a ``CLIPTokenizer`` and a ``CLIPTextModel``, or the conventional
``tokenizer/`` and ``text_encoder/`` folders) holds everything needed to turn a caption into the
(L, D) embedding the denoiser cross-attends to, as the diffusers pipelines do::

    ids = tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    context = text_encoder(ids)[0]          # the last hidden state, no attention mask

jaxmia runs both steps itself: :mod:`jaxmia.models.clip_tokenizer` (pure Python) and
:mod:`jaxmia.models.clip_text` (Flax). No download, no torch.

Cache: one ``.npz`` per (text encoder digest, tokenizer digest, token length) in ``cache_dir``
(``text-<key>.npz``: ``caption_sha256`` (M,), ``input_ids`` (M, L), ``text_embeddings`` (M, L, D));
an image's row is found through the SHA-256 of its caption, so a changed caption is re-encoded and
an unchanged one never is, whichever data set it belongs to. The text encoder digest is the SHA-256
of its ``config.json`` and weight files; the tokenizer digest that of its files
(:attr:`~jaxmia.models.clip_tokenizer.CLIPTokenizer.digest`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmia.fileio import file_sha256, load_npz, read_json
from jaxmia.models import clip_text
from jaxmia.models.clip_tokenizer import CLIPTokenizer, load_clip_tokenizer

TEXT_ENCODER_CLASSES = ("CLIPTextModel",)
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
CONVENTIONAL = {"text_encoder": "text_encoder", "tokenizer": "tokenizer"}
DEFAULT_BATCH = 16


def find_text_components(path) -> tuple[Path, Path]:
    """(text encoder folder, tokenizer folder) of a pipeline folder, or of the pipeline around a model folder.

    Looks in ``path`` and then its parent (a ``unet/`` folder inside a pipeline): the components that
    ``model_index.json`` declares with a CLIP text encoder / tokenizer class, or else ``text_encoder/``
    and ``tokenizer/``.

    Raises:
      FileNotFoundError / ValueError naming the folders looked at.
    """
    root = Path(path)
    looked = []
    for folder in (root, root.parent):
        index_path = folder / "model_index.json"
        if index_path.is_file():
            index = read_json(index_path, what="pipeline index")
            found = {}
            for role, classes in (("text_encoder", TEXT_ENCODER_CLASSES), ("tokenizer", TOKENIZER_CLASSES)):
                names = [n for n, v in index.items() if not n.startswith("_") and isinstance(v, list)
                         and len(v) == 2 and v[1] in classes]
                if len(names) > 1:
                    raise ValueError(f"{index_path}: declares two {role}s ({', '.join(map(repr, names))}); keep one")
                if names:
                    found[role] = folder / names[0]
            if len(found) == 2:
                for role, sub in found.items():
                    if not sub.is_dir():
                        raise FileNotFoundError(f"{sub}: the {role} that {index_path} declares is missing")
                return found["text_encoder"], found["tokenizer"]
            looked.append(f"{index_path} (declares no {' or '.join(r for r in ('text_encoder', 'tokenizer') if r not in found)})")
            continue
        te, tok = folder / CONVENTIONAL["text_encoder"], folder / CONVENTIONAL["tokenizer"]
        if te.is_dir() and tok.is_dir():
            return te, tok
        looked.append(f"{folder}/{{text_encoder,tokenizer}}/")
    raise FileNotFoundError(f"{root}: no CLIP text encoder + tokenizer to encode captions with (looked at "
                            f"{'; '.join(looked)}); give the pipeline that holds them, or per-image text "
                            "embeddings in an .npz (ids, text_embeddings)")


def encoder_digest(folder) -> str:
    """SHA-256 over the text encoder's ``config.json`` and weight files (names and bytes)."""
    folder = Path(folder)
    names = [clip_text.CONFIG_NAME]
    if (folder / clip_text.WEIGHTS_NAME).is_file():
        names.append(clip_text.WEIGHTS_NAME)
    elif (folder / clip_text.WEIGHTS_INDEX_NAME).is_file():
        index = read_json(folder / clip_text.WEIGHTS_INDEX_NAME, what="safetensors index")
        names += [clip_text.WEIGHTS_INDEX_NAME, *sorted(set((index.get("weight_map") or {}).values()))]
    h = hashlib.sha256()
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text encoder file not found")
        h.update(f"{name}\0{file_sha256(path)}\0".encode())
    return h.hexdigest()


def _max_length(tokenizer: CLIPTokenizer, config: clip_text.CLIPTextConfig, encoder_dir: Path) -> int:
    """The pipeline's token length: the tokenizer's ``model_max_length`` (the encoder's position count
    when the tokenizer config gives none); more than the encoder has positions for is refused."""
    length = tokenizer.model_max_length or config.max_position_embeddings
    if length > config.max_position_embeddings:
        raise ValueError(f"{tokenizer.source}: model_max_length={length} exceeds the text encoder's "
                         f"max_position_embeddings={config.max_position_embeddings} ({encoder_dir})")
    return length


def _caption_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_atomic(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_cache(path: Path, length: int, width: int) -> dict:
    """caption hash → (input_ids row, embedding row) of a cache file (empty if there is none)."""
    if not path.is_file():
        return {}
    arrays = load_npz(path, what="text embedding cache")
    keys = ("caption_sha256", "input_ids", "text_embeddings")
    if any(k not in arrays for k in keys):
        raise ValueError(f"{path}: not a jaxmia text embedding cache (needs {', '.join(keys)}); delete it")
    hashes, ids, emb = arrays["caption_sha256"].astype(str), arrays["input_ids"], arrays["text_embeddings"]
    if ids.shape != (len(hashes), length) or emb.shape != (len(hashes), length, width):
        raise ValueError(f"{path}: cache arrays of shapes {ids.shape} / {emb.shape} do not fit "
                         f"{len(hashes)} captions of {length} tokens x {width}; delete it")
    return {h: (ids[k], emb[k]) for k, h in enumerate(hashes.tolist())}


def caption_embeddings(encoder_dir, tokenizer_dir, captions: Sequence[str], *, cache_dir=None,
                       batch_size: int = DEFAULT_BATCH) -> tuple[np.ndarray, dict]:
    """The last hidden states (N, L, D) float32 of the text encoder for ``captions``, cached.

    Args:
      encoder_dir: a transformers ``CLIPTextModel`` folder (``config.json`` + ``model.safetensors``).
      tokenizer_dir: its CLIP tokenizer folder.
      captions: one caption per image.
      cache_dir: where the cache file lives (module docstring); None: no cache.
      batch_size: captions per encoder call (a fixed shape: one compilation).

    Returns:
      (embeddings, info): info records the two digests, the token length, the cache file and how
      many captions were encoded now (``encoded``) or found in the cache (``cached``).
    """
    encoder_dir, tokenizer_dir = Path(encoder_dir), Path(tokenizer_dir)
    tokenizer = load_clip_tokenizer(tokenizer_dir)
    config = clip_text.CLIPTextConfig.from_transformers(
        read_json(encoder_dir / clip_text.CONFIG_NAME, what="text encoder config"),
        source=str(encoder_dir / clip_text.CONFIG_NAME))
    length, width = _max_length(tokenizer, config, encoder_dir), config.hidden_size
    enc_digest = encoder_digest(encoder_dir)
    key = hashlib.sha256(f"{enc_digest}\0{tokenizer.digest}\0{length}".encode()).hexdigest()[:16]
    cache_path = None if cache_dir is None else Path(cache_dir) / f"text-{key}.npz"
    cache = {} if cache_path is None else _read_cache(cache_path, length, width)

    hashes = [_caption_hash(c) for c in captions]
    todo = sorted({h: c for h, c in zip(hashes, captions) if h not in cache}.items())
    if todo:
        ids = tokenizer([c for _, c in todo], length)
        if ids.size and ids.max() >= config.vocab_size:
            raise ValueError(f"{tokenizer.source}: token id {int(ids.max())} is outside the text encoder's vocabulary "
                             f"(vocab_size={config.vocab_size}, {encoder_dir}); the tokenizer and encoder do not match")
        emb = clip_text.embed_token_ids(encoder_dir, ids, batch_size=batch_size)
        for (h, _), row_ids, row in zip(todo, ids, emb):
            cache[h] = (row_ids, row)
        if cache_path is not None:
            order = sorted(cache)
            _write_atomic(cache_path, {"caption_sha256": np.asarray(order, dtype=str),
                                       "input_ids": np.stack([cache[h][0] for h in order]).astype(np.int32),
                                       "text_embeddings": np.stack([cache[h][1] for h in order]).astype(np.float32)})
    out = np.stack([cache[h][1] for h in hashes]).astype(np.float32) if hashes else np.zeros((0, length, width),
                                                                                           np.float32)
    info = {"text_encoder": str(encoder_dir), "text_encoder_digest": enc_digest, "tokenizer": str(tokenizer_dir),
            "tokenizer_digest": tokenizer.digest, "max_length": length, "pad_id": tokenizer.pad_id,
            "padding_side": tokenizer.padding_side, "cache": None if cache_path is None else str(cache_path),
            "encoded": len(todo), "cached": len(set(hashes)) - len(todo),
            "embeddings_digest": hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()}
    return out, info


def attach_captions(model, denoiser, dataset, *, captions=None, folder=None, cache_dir=None, text_pipeline=None,
                    family=None):
    """``dataset`` with each image's caption embedding as its condition, checked against ``denoiser``.

    Args:
      model: the model path the denoiser was loaded from (its pipeline holds the text encoder).
      denoiser: a text-conditional :class:`~jaxmia.models.Denoiser`.
      dataset: a :class:`~jaxmia.data.Dataset`.
      captions: a captions file or a mapping id → caption; None reads the imagefolder metadata of
        ``folder`` (default: the data set's source, when it is a folder). See :mod:`jaxmia.data.captions`.
      cache_dir: the embedding cache folder (None: no cache).
      text_pipeline: a folder holding the text encoder and tokenizer, used instead of ``model``'s.
      family: passed to :func:`~jaxmia.models.conditioning.attach_conditioning`.

    Returns:
      (dataset with ``cond`` (N, L, D), info): info adds the caption source to
      :func:`caption_embeddings`'s.
    """
    from jaxmia.data.captions import captions_for
    from jaxmia.models.conditioning import attach_conditioning

    if denoiser.cond_kind != "text":
        raise ValueError(f"captions are for text-conditional models; {model} is {denoiser.cond_kind!r}-conditional")
    folder = dataset.source if folder is None and dataset.source and Path(dataset.source).is_dir() else folder
    if captions is None and folder is None:
        raise ValueError(f"{dataset.source or 'the data set'}: the model is text-conditional and the data carry no "
                         "text embeddings; captions come from an image folder's metadata.jsonl / metadata.csv or a "
                         "captions file (--captions FILE)")
    texts, source = captions_for(dataset.ids, captions=captions, folder=folder)
    encoder_dir, tokenizer_dir = find_text_components(model if text_pipeline is None else text_pipeline)
    emb, info = caption_embeddings(encoder_dir, tokenizer_dir, texts, cache_dir=cache_dir)
    info = {"captions": source, "n": len(texts), **info}
    return attach_conditioning(dataset, denoiser, text_embeddings=emb, family=family), info


def maybe_attach_captions(model, denoiser, dataset, *, captions=None, cache_dir=None, family=None,
                          quiet: bool = False):
    """What the CLI and the audit do: caption a text-conditional model's data set unless it carries
    embeddings already (an ``.npz`` with ``text_embeddings``) and no captions were given.

    Returns:
      (dataset, info or None).
    """
    import sys

    if denoiser.cond_kind != "text":
        if captions is not None:
            raise ValueError(f"--captions / audit.captions: {model} is {denoiser.cond_kind!r}-conditional; captions "
                             "are for text-conditional models")
        return dataset, None
    if dataset.cond is not None and captions is None:
        return dataset, None
    out, info = attach_captions(model, denoiser, dataset, captions=captions, cache_dir=cache_dir, family=family)
    if not quiet:
        print(f"jaxmia: captions of {info['n']} images from {info['captions']}: {info['encoded']} encoded, "
              f"{info['cached']} from the cache", file=sys.stderr)
    return out, info
