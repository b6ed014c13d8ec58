"""Randomness as a pure function of (seed, sample id, purpose).

Every random draw jaxmia makes for an image comes from ``sample_key(seed, id, purpose)``: the
result does not depend on the batch the image shares, the batch size, the device count or a
restart (docs/methods/design.md §5). Ids are strings; they are hashed on the host to two 32-bit words, which
travel into jitted code as a ``(B, 2) uint32`` array, and keys are derived there.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import jax
import numpy as np


def _words(text: str) -> tuple[int, int]:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def id_hashes(ids: Iterable[str]) -> np.ndarray:
    """(N, 2) uint32 array of stable 64-bit hashes of the sample ids."""
    return np.array([_words(str(i)) for i in ids], dtype=np.uint32).reshape(-1, 2)


def purpose_word(purpose: str) -> int:
    """The 32-bit word a purpose name ("noise", "mask", "encode", ...) folds into a key."""
    return _words("purpose:" + purpose)[0]


def root_key(seed: int) -> jax.Array:
    return jax.random.key(int(seed))


def key_for(root: jax.Array, id_hash, purpose: str) -> jax.Array:
    """The key of one sample and one purpose; ``id_hash`` is a (2,) uint32 array (jit-friendly)."""
    k = jax.random.fold_in(root, purpose_word(purpose))
    k = jax.random.fold_in(k, id_hash[0])
    return jax.random.fold_in(k, id_hash[1])


def keys_for(root: jax.Array, id_hash_batch, purpose: str) -> jax.Array:
    """Per-sample keys for a (B, 2) batch of id hashes."""
    return jax.vmap(lambda h: key_for(root, h, purpose))(id_hash_batch)


def sample_key(seed: int, sample_id: str, purpose: str) -> jax.Array:
    """Host-side convenience: the key of ``sample_id`` for ``purpose`` under ``seed``."""
    return key_for(root_key(seed), np.array(_words(str(sample_id)), np.uint32), purpose)


def check_unique_ids(ids: Sequence[str], *, source: str = "data") -> None:
    seen: set[str] = set()
    dup = [i for i in ids if i in seen or seen.add(i)]
    if dup:
        raise ValueError(f"{source}: duplicate sample id(s) {', '.join(map(repr, dup[:5]))}")
