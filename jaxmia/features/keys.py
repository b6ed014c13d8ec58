"""Per-example randomness for the feature kernels: a (root key, id hash) pair, vmapped by id.

Every draw is ``key_for(root, id_hash, purpose)`` (jaxmia.rng), then ``fold_in`` of the repetition
index, so a sample's noise depends only on (seed, id, purpose, rep), never on its batch (docs/methods/design.md §5).
Purposes used here: ``dl`` (denoising loss), ``ml`` (multiple loss, and grad-mask when draws are
shared), ``gm`` (grad-mask with ``share_draws=False``), ``no`` (noise optimisation), ``encode``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxmia import rng


@struct.dataclass
class SampleKey:
    """The randomness of ONE example: the run's root key and the example's (2,) uint32 id hash."""

    root: jax.Array
    id_hash: jax.Array

    def purpose_key(self, purpose: str) -> jax.Array:
        """``key_for(root, id_hash, purpose)``: the example's key for one purpose."""
        return rng.key_for(self.root, self.id_hash, purpose)

    def key(self, purpose: str, rep=0) -> jax.Array:
        """The key of repetition ``rep`` of ``purpose`` (``fold_in`` of the purpose key)."""
        return jax.random.fold_in(self.purpose_key(purpose), rep)

    def normal(self, purpose: str, rep, shape, dtype=jnp.float32) -> jax.Array:
        """The standard-normal draw ``rep`` of ``purpose`` for this example."""
        return jax.random.normal(self.key(purpose, rep), shape, dtype)


# vmap axes of a batch of SampleKeys: one root for all, one id hash per row.
SAMPLE_KEY_AXES = SampleKey(root=None, id_hash=0)
