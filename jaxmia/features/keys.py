"""Per-example randomness for the feature kernels: a (root key, id hash) pair, vmapped by id.

Every draw is ``key_for(root, id_hash, purpose)`` (jaxmia.rng), then ``fold_in`` of the repetition
index, so a sample's noise depends only on (seed, id, purpose, rep), never on its batch (docs/methods/design.md §5).
Purposes used here: ``dl`` (denoising loss), ``ml`` (multiple loss, and grad-mask when draws are
shared), ``gm`` (grad-mask with ``share_draws=False``), ``no`` (noise optimisation), ``encode``.
:class:`SampleKey` lives in :mod:`jaxmia.runtime`, which hands one to every per-example kernel.
"""

from jaxmia.runtime import SAMPLE_KEY_AXES  # noqa: F401
from jaxmia.runtime import SampleKey  # noqa: F401
