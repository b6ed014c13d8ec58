"""How per-image conditioning reaches the attacks: class labels, text embeddings, or none.

Attacks call ``denoiser.eps(x, t, cond)`` with ``cond`` the image's own condition: an int label for
class-conditional models (DiT, class-conditional UNets), a text embedding (L, D) for text-conditional
ones (Stable Diffusion's UNet, U-ViT T2I), nothing for unconditional ones. The condition travels in
``Dataset.cond``, row-aligned with the images; :func:`attach_conditioning` puts it there and checks it
against the model.

Sources of conditions:

* class labels: an int for every image, an (N,) array in dataset order, an ``.npz`` with ``ids`` and
  ``labels`` (matched by id), or labels already carried by the data set (an ``.npz`` data set's
  ``labels``);
* text embeddings: an ``.npz`` with ``ids`` and ``text_embeddings`` (N, L, D) matched by id (one
  caption per image, as CDI's U-ViT T2I uses, docs/methods/cdi.md §9), one (L, D) embedding for the whole
  data set (an ``.npz`` or ``.npy`` file or an array; broadcast to every image), an (N, L, D) array
  in dataset order, or embeddings already carried by the data set;
* ``null=True``: the unconditional input: the null class label of the model (DiT: label
  ``num_classes``, the extra row of its label table used for classifier-free guidance), or, for text
  models, the embedding of the empty prompt passed as one (L, D) ``text_embeddings``.

What the model accepts (:class:`ConditionSpec`) is read from the denoiser's parameter tree by small
registered probes (:func:`register_condition_probe`): the width D of the cross-attention keys
(``.../attn2/to_k``), the rows of a class table. With ``family=`` the model family's
``[conditioning]`` declaration (label count, null class, (L, D) context shape) is the spec, checked
against what the probes find; ``spec=`` states it outright.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from flax import traverse_util

from jaxmia.data import Dataset
from jaxmia.fileio import load_npz
from jaxmia.models.denoiser import COND_KINDS


@dataclasses.dataclass(frozen=True)
class ConditionSpec:
    """What conditioning a denoiser takes.

    Attributes:
      kind: ``none``, ``class`` or ``text`` (the denoiser's ``cond_kind``).
      num_labels: valid labels are 0..num_labels−1 (the null class included, when there is one);
        None: not known, only non-negativity is checked.
      null_label: the unconditional class label, or None when the model has none.
      context_dim: the width D of text embeddings (B, L, D); None: not known.
      context_length: the token count L the model requires; None: any L (cross-attention takes any).
    """

    kind: str
    num_labels: Optional[int] = None
    null_label: Optional[int] = None
    context_dim: Optional[int] = None
    context_length: Optional[int] = None

    def __post_init__(self):
        if self.kind not in COND_KINDS:
            raise ValueError(f"condition kind {self.kind!r} is not one of {', '.join(COND_KINDS)}")
        if self.null_label is not None and self.num_labels is not None and not 0 <= self.null_label < self.num_labels:
            raise ValueError(f"null_label={self.null_label} is outside the labels 0..{self.num_labels - 1}")


# A probe reads the flattened parameter shapes {path: shape} and returns ConditionSpec fields it
# recognises (or an empty dict).
Probe = Callable[[dict], dict]
CONDITION_PROBES: dict[str, Probe] = {}


def register_condition_probe(name: str):
    """Registers ``probe(shapes: {path tuple: shape}) -> dict of ConditionSpec fields``."""

    def decorate(fn):
        CONDITION_PROBES[name] = fn
        return fn

    return decorate


@register_condition_probe("cross_attention")
def _cross_attention_probe(shapes: dict) -> dict:
    """diffusers Transformer2DModel / BasicTransformerBlock: ``attn2/to_k`` maps D → inner width."""
    widths = {shape[0] for path, shape in shapes.items() if path[-3:] == ("attn2", "to_k", "kernel")}
    if len(widths) > 1:
        raise ValueError(f"the model's cross-attention layers read different widths {sorted(widths)}; "
                         "pass spec=ConditionSpec(...) explicitly")
    return {"context_dim": widths.pop()} if widths else {}


@register_condition_probe("label_embedding")
def _label_embedding_probe(shapes: dict) -> dict:
    """diffusers LabelEmbedding (DiT): num_classes + 1 rows, the last one the null class."""
    rows = {shape[0] for path, shape in shapes.items()
            if path[-3:] == ("class_embedder", "embedding_table", "embedding")}
    if not rows:
        return {}
    if len(rows) > 1:
        raise ValueError(f"the model's label tables differ in size {sorted(rows)}; pass spec=ConditionSpec(...)")
    n = rows.pop()
    return {"num_labels": n, "null_label": n - 1}


@register_condition_probe("class_embedding")
def _class_embedding_probe(shapes: dict) -> dict:
    """diffusers UNet ``class_embedding`` (``num_class_embeds`` rows, no null class)."""
    shape = shapes.get(("class_embedding", "embedding"))
    return {} if shape is None else {"num_labels": shape[0]}


def spec_from_family(family) -> ConditionSpec:
    """The :class:`ConditionSpec` a model family declares (``[conditioning]`` of
    ``configs/families/<name>.toml``): ``num_classes`` real classes plus the ``null_class`` label when
    it lies past them (DiT, U-ViT: null = num_classes), ``context_shape`` = (L, D) for text."""
    from jaxmia.models.families import load_family

    cond = load_family(family).conditioning
    if cond.kind == "class":
        n = cond.num_classes if cond.null_class is None else max(cond.num_classes, cond.null_class + 1)
        return ConditionSpec("class", num_labels=n, null_label=cond.null_class)
    if cond.kind == "text":
        length, width = cond.context_shape
        return ConditionSpec("text", context_dim=width, context_length=length)
    return ConditionSpec(cond.kind)


def condition_spec(denoiser, *, family=None) -> ConditionSpec:
    """The :class:`ConditionSpec` of a denoiser: its ``cond_kind`` plus what the probes find in its params.

    With ``family`` (a family name, path or ``Family``), the family's declaration is the spec, and
    anything the probes find must agree with it (a disagreement is refused, naming both values).
    """
    kind = getattr(denoiser, "cond_kind", None)
    if kind not in COND_KINDS:
        raise ValueError(f"denoiser cond_kind {kind!r} is not one of {', '.join(COND_KINDS)}")
    params = denoiser.params
    flat = traverse_util.flatten_dict(params) if isinstance(params, dict) else {}
    shapes = {tuple(map(str, path)): tuple(np.shape(leaf)) for path, leaf in flat.items()}
    found: dict = {}
    for probe in CONDITION_PROBES.values():
        found.update(probe(shapes))
    if kind != "class":
        found = {k: v for k, v in found.items() if k not in ("num_labels", "null_label")}
    if kind != "text":
        found = {k: v for k, v in found.items() if k not in ("context_dim", "context_length")}
    if family is None:
        return ConditionSpec(kind=kind, **found)
    declared = spec_from_family(family)
    family = getattr(family, "name", family)  # a Family's name, for messages
    if declared.kind != kind:
        raise ValueError(f"family {family!r} declares {declared.kind!r} conditioning but the model is {kind!r}-conditional")
    for key, value in found.items():
        if getattr(declared, key) is not None and getattr(declared, key) != value:
            raise ValueError(f"family {family!r} declares {key}={getattr(declared, key)} but the model's "
                             f"parameters give {key}={value}")
    return declared


# ==================================================================================================
# Files
# ==================================================================================================


def save_text_embeddings(path, ids, embeddings) -> Path:
    """Writes ``.npz`` with ``ids`` (N,) and ``text_embeddings`` (N, L, D) float32 (no pickles).

    ``ids`` are the data set's image ids; each row is that image's caption embedding (e.g. CLIP's
    last hidden state, :func:`jaxmia.models.clip_text.embed_token_ids`).
    """
    ids = [str(i) for i in ids]
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 3 or emb.shape[0] != len(ids):
        raise ValueError(f"text embeddings must be (N={len(ids)}, L, D), got shape {emb.shape}")
    if len(set(ids)) != len(ids):
        raise ValueError("text embedding ids must be unique")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, ids=np.asarray(ids, dtype=str), text_embeddings=emb)
    return path


def _read_arrays(path: Path) -> dict:
    return load_npz(path, what="conditioning file")


def _by_id(path: Path, file_ids, values: np.ndarray, dataset: Dataset, key: str) -> np.ndarray:
    """Rows of ``values`` reordered to the data set's ids (extra ids in the file are fine)."""
    file_ids = [str(i) for i in np.asarray(file_ids).astype(str).tolist()]
    if len(file_ids) != len(values):
        raise ValueError(f"{path}: {len(file_ids)} ids for {len(values)} rows of {key!r}")
    where: dict[str, int] = {}
    for row, sid in enumerate(file_ids):
        if sid in where:
            raise ValueError(f"{path}: id {sid!r} appears twice")
        where[sid] = row
    missing = [sid for sid in dataset.ids if sid not in where]
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{path}: no {key!r} for {len(missing)} image(s) of {dataset.source or 'the data set'}: {shown}")
    return values[np.array([where[sid] for sid in dataset.ids], dtype=np.int64)]


def _text_from(value, dataset: Dataset) -> tuple[np.ndarray, str]:
    """(embeddings (N, L, D) — possibly a broadcast view —, description for messages)."""
    if isinstance(value, (str, Path)):
        path = Path(value)
        arrays = _read_arrays(path)
        if "array" in arrays:  # .npy: one embedding for the whole data set
            emb, what = arrays["array"], str(path)
            if emb.ndim != 2:
                raise ValueError(f"{path}: a .npy text embedding must be one (L, D) array for every image, got "
                                 f"shape {emb.shape}; per-image embeddings go in an .npz with 'ids'")
        else:
            if "text_embeddings" not in arrays:
                raise ValueError(f"{path}: no 'text_embeddings' array (has {', '.join(sorted(arrays)) or 'nothing'})")
            emb, what = arrays["text_embeddings"], str(path)
            if "ids" in arrays:
                if emb.ndim != 3:
                    raise ValueError(f"{path}: per-image 'text_embeddings' must be (N, L, D), got shape {emb.shape}")
                emb = _by_id(path, arrays["ids"], emb, dataset, "text_embeddings")
            elif emb.ndim != 2:
                raise ValueError(f"{path}: 'text_embeddings' of shape {emb.shape} without 'ids'; store 'ids' with "
                                 "(N, L, D) embeddings, or one (L, D) embedding for every image")
    else:
        emb, what = np.asarray(value), "text_embeddings"
    if not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"{what}: text embeddings must be floating point, got dtype {emb.dtype}")
    emb = emb.astype(np.float32, copy=False)
    if emb.ndim == 2:
        emb = np.broadcast_to(emb, (len(dataset), *emb.shape))  # one for all: a view, no copy per image
    elif emb.ndim != 3 or emb.shape[0] != len(dataset):
        raise ValueError(f"{what}: text embeddings must be (L, D) or (N={len(dataset)}, L, D), got shape {emb.shape}")
    return emb, what


def _labels_from(value, dataset: Dataset) -> tuple[np.ndarray, str]:
    if isinstance(value, (str, Path)):
        path = Path(value)
        arrays = _read_arrays(path)
        if "labels" not in arrays or "ids" not in arrays:
            raise ValueError(f"{path}: a label file needs 'ids' and 'labels' arrays (has "
                             f"{', '.join(sorted(arrays)) or 'nothing'})")
        labels = np.asarray(arrays["labels"])
        if labels.ndim != 1:
            raise ValueError(f"{path}: 'labels' must be (N,), got shape {labels.shape}")
        return _by_id(path, arrays["ids"], labels, dataset, "labels"), str(path)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return np.full(len(dataset), int(value), np.int64), "labels"
    labels = np.asarray(value)
    if labels.ndim != 1 or labels.shape[0] != len(dataset):
        raise ValueError(f"labels must be one int or an (N={len(dataset)},) array, got shape {labels.shape}")
    return labels, "labels"


def _check_labels(labels: np.ndarray, spec: ConditionSpec, what: str) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(f"{what}: class labels must be (N,), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: class labels must be integers, got dtype {labels.dtype}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        top = None if spec.num_labels is None else spec.num_labels - 1
        if lo < 0 or (top is not None and hi > top):
            allowed = "non-negative" if top is None else f"in 0..{top}"
            null = "" if spec.null_label is None else f" ({spec.null_label} is the null class)"
            raise ValueError(f"{what}: class labels must be {allowed}{null}, found {lo}..{hi}")
    return labels.astype(np.int32)


def _check_text(emb: np.ndarray, spec: ConditionSpec, what: str) -> np.ndarray:
    if emb.ndim != 3:
        raise ValueError(f"{what}: text embeddings must be (N, L, D), got shape {emb.shape}")
    if spec.context_dim is not None and emb.shape[-1] != spec.context_dim:
        raise ValueError(f"{what}: text embeddings have width D={emb.shape[-1]} (shape {emb.shape[1:]} per image) "
                         f"but the model's cross-attention reads D={spec.context_dim}")
    if spec.context_length is not None and emb.shape[1] != spec.context_length:
        raise ValueError(f"{what}: text embeddings have L={emb.shape[1]} tokens but the model takes "
                         f"L={spec.context_length}")
    if emb.shape[1] < 1:
        raise ValueError(f"{what}: text embeddings hold no tokens (shape {emb.shape})")
    # A broadcast (L, D) is checked once, not N times.
    sample = emb[:1] if emb.strides[0] == 0 else emb
    if not np.all(np.isfinite(sample)):
        raise ValueError(f"{what}: text embeddings hold NaN or inf")
    return emb.astype(np.float32, copy=False)


def attach_conditioning(dataset: Dataset, denoiser, *, labels=None, text_embeddings=None, null: bool = False,
                        family=None, spec: Optional[ConditionSpec] = None) -> Dataset:
    """The data set with each image's condition in ``cond``, checked against the denoiser.

    Args:
      dataset: a :class:`jaxmia.data.Dataset`; conditions it already carries (an ``.npz`` data set's
        ``labels`` / ``text_embeddings``) are used when no other source is given.
      denoiser: the model the conditions are for (its ``cond_kind`` and parameter shapes).
      labels: class labels: one int, an (N,) array in dataset order, or an ``.npz`` path with ``ids``
        and ``labels``.
      text_embeddings: an ``.npz`` path with ``ids`` + ``text_embeddings`` (N, L, D); an ``.npz`` or
        ``.npy`` path, or an array, holding one (L, D) embedding for every image; or an (N, L, D)
        array in dataset order.
      null: condition every image on the model's null input: the null class label, or (text models)
        the one (L, D) ``text_embeddings`` given, which should be the empty prompt's embedding.
      family: a model family (name, path or ``Family``) whose ``[conditioning]`` declares the label
        range, the null class and the (L, D) context shape; checked against the model's parameters.
      spec: what the model accepts, given explicitly (overrides ``family`` and the probes); default
        :func:`condition_spec` of ``denoiser``.

    Returns:
      A new Dataset (same ids and images) whose ``cond`` is (N,) int32 labels, (N, L, D) float32
      embeddings, or None for unconditional models.

    Raises:
      ValueError / FileNotFoundError naming the file or argument and the shape: a condition of the
      wrong kind, width D, label range or id coverage; a conditional model with no condition.
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"attach_conditioning: expected a jaxmia.data.Dataset, got {type(dataset).__name__}")
    spec = condition_spec(denoiser, family=family) if spec is None else spec
    name = dataset.source or "the data set"
    if spec.kind == "none":
        if labels is not None or text_embeddings is not None:
            given = "labels" if labels is not None else "text embeddings"
            raise ValueError(f"the model is unconditional: it takes no {given}")
        return Dataset(dataset.ids, dataset.images, None, dataset.source)

    if spec.kind == "class":
        if text_embeddings is not None:
            raise ValueError("the model is class-conditional: it takes labels, not text embeddings")
        if null:
            if labels is not None:
                raise ValueError("give either labels or null=True, not both")
            if spec.null_label is None:
                raise ValueError("the model has no null class (its label table has no unconditional row); "
                                 "pass spec=ConditionSpec(kind='class', null_label=...) if it has one")
            cond, what = np.full(len(dataset), spec.null_label, np.int64), "null label"
        elif labels is not None:
            cond, what = _labels_from(labels, dataset)
        elif dataset.cond is not None:
            cond, what = np.asarray(dataset.cond), f"labels of {name}"
        else:
            raise ValueError(f"{name}: the model is class-conditional and the data set carries no labels; "
                             "pass labels=... or null=True")
        cond = _check_labels(cond, spec, what)
    else:
        if labels is not None:
            raise ValueError("the model is text-conditional: it takes text embeddings, not labels")
        if null:
            if text_embeddings is None:
                raise ValueError("null=True for a text-conditional model needs the empty prompt's embedding: "
                                 "pass text_embeddings=<one (L, D) array or file>")
            cond, what = _text_from(text_embeddings, dataset)
            if cond.strides[0] != 0:
                raise ValueError(f"{what}: null=True takes one (L, D) embedding (the empty prompt's), got "
                                 f"per-image embeddings of shape {cond.shape}")
        elif text_embeddings is not None:
            cond, what = _text_from(text_embeddings, dataset)
        elif dataset.cond is not None:
            cond, what = np.asarray(dataset.cond), f"text embeddings of {name}"
            if not np.issubdtype(cond.dtype, np.floating):
                raise ValueError(f"{what}: the model is text-conditional but the data set carries "
                                 f"{cond.dtype} conditions of shape {cond.shape} (labels?)")
        else:
            raise ValueError(f"{name}: the model is text-conditional and the data set carries no text embeddings; "
                             "pass text_embeddings=... (an .npz with ids and (N, L, D) text_embeddings)")
        cond = _check_text(cond, spec, what)
    return Dataset(dataset.ids, dataset.images, cond, dataset.source)
