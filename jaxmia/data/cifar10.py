"""CIFAR-10 for the SecMI / PIA membership protocol, read without pickles.

The SecMI and PIA CIFAR-10 targets (pytorch-ddpm checkpoints) were trained on half of CIFAR-10's
50,000 training images; the split is SecMI's ``CIFAR10_train_ratio0.5.npz``, with ``mia_train_idxs``
(members) and ``mia_eval_idxs`` (non-members), indices into the training set; the test set is not
used (docs/methods/mia.md §2.1). This module reads

* the **binary** CIFAR-10 release (``cifar-10-batches-bin``): ``data_batch_1.bin`` …
  ``data_batch_5.bin`` and ``test_batch.bin``, each a run of 3,073-byte records: 1 label byte
  (0–9), then the 1,024 red, 1,024 green and 1,024 blue bytes of a 32×32 image, row-major. The
  training index of an image is its position in ``data_batch_1`` … ``data_batch_5`` concatenated,
  the order torchvision's ``CIFAR10(train=True)`` uses (its python batches hold the same records in
  the same order). The python (pickle) release is never read: jaxmia does not unpickle;
* the split ``.npz`` with ``np.load(allow_pickle=False)``;

and writes the member and non-member sets as jaxmia ``.npz`` datasets (``images`` uint8
(N, 32, 32, 3), ``ids``; :func:`jaxmia.data.read_npz` maps uint8 to [-1, 1] as x/127.5 − 1, the
same values as the attacks' ``ToTensor()`` then ``×2 − 1``; no flip). Ids are the training indices
as decimal strings (``"10365"``), so every score can be joined with the upstream codes' outputs.

Every refusal is one line naming the file and the culprit: a missing file, a size that is not a
whole number of records, a label byte above 9, batches of unequal length, a split key that is
missing or not a 1-D integer array, an index outside the training set, a duplicated index, or an
index that is both member and non-member.

References: Krizhevsky 2009, the CIFAR-10 binary format (cs.toronto.edu/~kriz/cifar.html);
``jinhaoduan/SecMI`` ``mia_evals/dataset_utils.py`` (``load_member_data``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from jaxmia.fileio import file_sha256, load_npz

IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3  # 3073: label byte, then the R, G and B planes
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
BIN_FOLDER = "cifar-10-batches-bin"
MEMBER_KEY, NONMEMBER_KEY = "mia_train_idxs", "mia_eval_idxs"
# docs/methods/mia.md §2.1: the first indices of SecMI's CIFAR-10 split, a checksum of the right file.
SECMI_FIRST_MEMBERS = (10365, 25853, 41222, 7409, 17080)
SECMI_FIRST_NONMEMBERS = (6640, 7423, 45313, 9057, 42931)
OUTPUT_FILES = ("members.npz", "nonmembers.npz", "all.npz", "labels.json", "manifest.json")


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: (labels (N,) uint8, images (N, 32, 32, 3) uint8, HWC, RGB)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CIFAR-10 binary batch not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-10 records "
                         f"(1 label byte + 3072 pixel bytes): truncated, or not the binary release")
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{path}: record {bad[0]} has label byte {labels[bad[0]]}; CIFAR-10 labels are 0..9 "
                         "(not a CIFAR-10 binary batch, or CIFAR-100's two-label records)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return labels.copy(), np.ascontiguousarray(images)


def batches_folder(cifar_dir) -> Path:
    """``cifar_dir`` itself if it holds the batches, else its ``cifar-10-batches-bin`` subfolder."""
    cifar_dir = Path(cifar_dir)
    if not cifar_dir.is_dir():
        raise FileNotFoundError(f"{cifar_dir}: CIFAR-10 folder not found")
    if not (cifar_dir / TRAIN_FILES[0]).exists() and (cifar_dir / BIN_FOLDER).is_dir():
        return cifar_dir / BIN_FOLDER
    return cifar_dir


def read_train(cifar_dir) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """The training set in index order: (labels (N,), images (N, 32, 32, 3) uint8, batch files).

    The five batches must have the same number of records (10,000 each in the real release); a
    shorter one is named, since it would shift every later index.
    """
    folder = batches_folder(cifar_dir)
    paths = [folder / name for name in TRAIN_FILES]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        py = " (found the python/pickle release: jaxmia reads the binary one, cifar-10-binary.tar.gz)" \
            if (folder / "data_batch_1").is_file() or (folder.parent / "cifar-10-batches-py").is_dir() else ""
        raise FileNotFoundError(f"{missing[0]}: CIFAR-10 binary training batch not found{py}")
    parts = [read_batch(p) for p in paths]
    counts = [len(labels) for labels, _ in parts]
    for path, count in zip(paths[1:], counts[1:]):
        if count != counts[0]:
            raise ValueError(f"{path}: {count} records, but {paths[0].name} has {counts[0]}; the five training "
                             "batches must be the same length (10000 records each in the real release)")
    labels = np.concatenate([p[0] for p in parts])
    images = np.concatenate([p[1] for p in parts])
    return labels, images, paths


def read_split(path, n_train: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """SecMI's split file: (member indices, non-member indices), int64, in file order.

    Args:
      n_train: the number of training images; an index outside 0..n_train-1 is refused.
    """
    path = Path(path)
    arrays = load_npz(path, what="split file")
    sides = []
    for key in (MEMBER_KEY, NONMEMBER_KEY):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (has {', '.join(sorted(arrays)) or 'nothing'}); "
                             f"expected SecMI's split with {MEMBER_KEY!r} (members) and {NONMEMBER_KEY!r}")
        idx = arrays[key]
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{path}: {key!r} must be a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
        idx = idx.astype(np.int64)
        if idx.size == 0:
            raise ValueError(f"{path}: {key!r} is empty")
        outside = (idx < 0) if n_train is None else (idx < 0) | (idx >= n_train)
        out_of_range = idx[outside]
        if out_of_range.size:
            where = f"0..{n_train - 1}" if n_train is not None else "non-negative"
            raise ValueError(f"{path}: {key!r} holds index {out_of_range[0]}, outside the training set "
                             f"(indices {where})")
        values, counts = np.unique(idx, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{path}: {key!r} lists index {values[counts > 1][0]} {counts.max()} times")
        sides.append(idx)
    both = np.intersect1d(sides[0], sides[1])
    if both.size:
        raise ValueError(f"{path}: {both.size} index(es) are both members ({MEMBER_KEY}) and non-members "
                         f"({NONMEMBER_KEY}), e.g. {both[0]}; the split must be disjoint")
    return sides[0], sides[1]


@dataclass(frozen=True)
class PreparedCifar10:
    """What :func:`prepare_cifar10` wrote (paths) and its manifest."""

    members: Path
    nonmembers: Path
    all: Path
    labels: Path
    manifest_path: Path
    manifest: dict


def _write_set(path: Path, index: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
    np.savez(path, ids=np.array([str(int(i)) for i in index], dtype=str), images=images[index],
             train_index=index, cifar10_class=labels[index].astype(np.int64))


def prepare_cifar10(cifar_dir, split, out_dir, *, n: Optional[int] = None, overwrite: bool = False) -> PreparedCifar10:
    """Writes the SecMI-split member and non-member sets of CIFAR-10 as jaxmia datasets.

    Args:
      cifar_dir: the binary release (``cifar-10-batches-bin`` or the folder holding it).
      split: SecMI's ``CIFAR10_train_ratio0.5.npz`` (or any split with the same two keys).
      out_dir: where ``members.npz``, ``nonmembers.npz``, ``all.npz`` (members, then non-members),
        ``labels.json`` (id → 1 member / 0 non-member, for ``jaxmia mia``) and ``manifest.json``
        (file digests, counts, whether the split is SecMI's) go.
      n: images per side: the first ``n`` indices of each array, in file order (the order the
        upstream loaders run with ``shuffle=False``; the arrays are random permutations, so this is a
        uniform sample). None: every index (25,000 per side for SecMI's file: the papers' protocol).
      overwrite: replace existing output files (otherwise an existing one is refused).

    Note:
      The class label is kept as ``cifar10_class`` (not ``labels``, which jaxmia reads as the
      conditioning of a class-conditional model; the pytorch-ddpm targets are unconditional).
    """
    out = Path(out_dir)
    if not overwrite:
        existing = [out / f for f in OUTPUT_FILES if (out / f).exists()]
        if existing:
            raise ValueError(f"{existing[0]}: exists already (use a new output folder, or overwrite)")
    labels, images, batch_paths = read_train(cifar_dir)
    split = Path(split)
    full_members, full_nonmembers = read_split(split, n_train=len(labels))
    members, nonmembers = full_members, full_nonmembers
    if n is not None:
        if n < 1:
            raise ValueError(f"n={n}: need at least one image per side")
        for key, side in ((MEMBER_KEY, members), (NONMEMBER_KEY, nonmembers)):
            if n > side.size:
                raise ValueError(f"{split}: {key!r} holds {side.size} indices, fewer than n = {n}")
        members, nonmembers = members[:n], nonmembers[:n]
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in OUTPUT_FILES}
    _write_set(paths["members.npz"], members, images, labels)
    _write_set(paths["nonmembers.npz"], nonmembers, images, labels)
    _write_set(paths["all.npz"], np.concatenate([members, nonmembers]), images, labels)
    label_map = {str(int(i)): 1 for i in members} | {str(int(i)): 0 for i in nonmembers}
    paths["labels.json"].write_text(json.dumps(label_map) + "\n")
    is_secmi = (tuple(full_members[:5].tolist()) == SECMI_FIRST_MEMBERS
                and tuple(full_nonmembers[:5].tolist()) == SECMI_FIRST_NONMEMBERS
                and full_members.size == full_nonmembers.size == 25_000)
    manifest = {
        "kind": "cifar10_membership_split",
        "n_train_images": int(len(labels)),
        "train_batches": {p.name: file_sha256(p) for p in batch_paths},
        "split_file": str(split),
        "split_sha256": file_sha256(split),
        "split_sizes": {MEMBER_KEY: int(full_members.size), NONMEMBER_KEY: int(full_nonmembers.size)},
        "is_secmi_cifar10_split": bool(is_secmi),
        "n_per_side": None if n is None else int(n),
        "selection": "the first n indices of each array, in file order" if n is not None else "every index",
        "n_members": int(members.size),
        "n_nonmembers": int(nonmembers.size),
        "first_members": members[:5].tolist(),
        "first_nonmembers": nonmembers[:5].tolist(),
        "ids": "CIFAR-10 training indices (data_batch_1..5 concatenated) as decimal strings",
        "pixels": "uint8 RGB, HWC; jaxmia maps them to x/127.5 - 1 (ToTensor()*2-1, no flip)",
        "outputs": {name: str(p) for name, p in paths.items()},
    }
    paths["manifest.json"].write_text(json.dumps(manifest, indent=2) + "\n")
    return PreparedCifar10(paths["members.npz"], paths["nonmembers.npz"], paths["all.npz"], paths["labels.json"],
                           paths["manifest.json"], manifest)


def split_feature_table(table, labels, *, members_out=None, nonmembers_out=None) -> tuple[Path, Path]:
    """Splits one feature table of a labelled set into a member and a non-member table (by id).

    For ``jaxmia cdi`` after one ``jaxmia features`` run over ``all.npz``: P = the members' rows,
    U = the non-members' rows. Defaults: ``<table stem>.members.npz`` and ``.nonmembers.npz`` beside
    ``table``. Each keeps the table's sidecar metadata (config, seed, model digest) plus where it
    was split from. Every labelled id must be in the table; unlabelled rows are left out.
    """
    from jaxmia.fileio import load_labels
    from jaxmia.table import FeatureTable, load_table, save_table

    table_path = Path(table)
    full = load_table(table_path)
    label_map = load_labels(labels)
    present = set(full.ids.tolist())
    missing = [i for i in label_map if i not in present]
    if missing:
        raise ValueError(f"{table_path}: labelled id {missing[0]!r} is not in the table "
                         f"({len(missing)} of {len(label_map)} labelled ids missing)")
    stem = table_path.name[:-len(".npz")] if table_path.name.endswith(".npz") else table_path.name
    outs = (Path(members_out) if members_out is not None else table_path.with_name(f"{stem}.members.npz"),
            Path(nonmembers_out) if nonmembers_out is not None else table_path.with_name(f"{stem}.nonmembers.npz"))
    for value, side, path in ((1, "members", outs[0]), (0, "nonmembers", outs[1])):
        ids = [i for i in full.ids.tolist() if label_map.get(i) == value]
        if not ids:
            raise ValueError(f"{labels}: no {side} among the table's ids")
        rows = full.rows(ids)
        meta = dict(full.meta) | {"split_from": str(table_path), "labels": str(labels), "side": side}
        save_table(FeatureTable(rows.ids, rows.names, rows.values, meta), path)
    return outs
