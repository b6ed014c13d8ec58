"""Lane scheduling: per-example iterative signals that never wait on their slowest example.

Noise optimisation (:mod:`jaxmia.features.noise_opt`) takes a data-dependent number of model
evaluations per example (its line searches). Run as a ``while_loop`` under ``vmap``, every example
of a batch would compute until the slowest one finishes (the finished ones still evaluate the
network, masked). Here each example is a *lane* of a :class:`~jaxmia.features.registry.LaneStage`
state machine, and the driver keeps a fixed pool of slots busy:

* the pool has the compiled shape of every other program, ``per_device_batch`` slots per data-axis
  device (:mod:`jaxmia.runtime`); each compiled call (:func:`programs`, ``advance``) makes
  ``evals_per_call`` evaluations of every slot, straight-line code (no loop in the program:
  a network gradient inside an XLA loop body ran 2-3x slower on XLA:CPU, docs/benchmarks.md §6);
* between calls the host reads which lanes are finished (one bool and the columns per slot), takes
  their columns, and refills their slots with waiting examples from the same device's share of a
  later chunk (``merge``, a per-device gather: lanes never move between devices or get copied
  through the host);
* the pool spans batches: ``extract()`` submits each step's chunks and collects rows as they
  finish, so only the very last examples of a run leave slots idle.

Bits: a lane's evaluations are the same pure per-example function (``vmap`` of ONE example's
step) in a program of fixed shape, whichever slot it occupies, whichever lanes share the call and
whatever the batch size, so its columns are bit-identical across all of those
(tests/test_features_lanes.py). The iterates are those of the ``while_loop`` form
(:func:`~jaxmia.features.noise_opt.lbfgs_minimise`): the same update on the same values; the
float results may differ from that form in the last bits, because XLA compiles the network in
another program (the difference is measured in docs/benchmarks.md §3).

Work accounting (:attr:`LanePool.stats`): ``evals_needed`` (the lanes' own evaluations) and
``slot_evals`` (evaluations computed, idle slots included); their ratio is the pool's efficiency.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmia import runtime
from jaxmia.features.keys import SAMPLE_KEY_AXES, SampleKey

# Evaluations per compiled call. 1 keeps the program straight-line (fastest on XLA:CPU) and wastes
# nothing; a larger value saves host round trips where a call is very short (each one unrolls).
DEFAULT_EVALS_PER_CALL = 1


def _select(mask, new, old):
    """Row-wise where over a pytree of batched leaves."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o),
                                  new, old)


@functools.lru_cache(maxsize=32)
def programs(stage, cfg, with_cond: bool, mesh, evals_per_call: int = DEFAULT_EVALS_PER_CALL) -> dict:
    """The three per-device programs of a lane pool (static: the stage, config, conditioning, mesh, K).

    * ``init(denoiser, x0, cond, root, id_hash) -> state``: the lanes of a chunk;
    * ``merge(pool, fresh, src, take) -> pool``: slot i takes ``fresh[src[i]]`` (indices local to
      the device) where ``take[i]``;
    * ``advance(denoiser, pool, occupied) -> (pool, running, columns, evals)``: ``evals_per_call``
      steps of every occupied running lane (others keep their state), then the flags and columns.
    """
    k = int(evals_per_call)
    if k < 1:
        raise ValueError(f"evals_per_call {evals_per_call!r}: must be an int >= 1")

    def init(denoiser, x0, cond, root, id_hash):
        keys = SampleKey(root=root, id_hash=id_hash)
        one = lambda d, x, c, key: stage.init(d, x, c, key, cfg)  # noqa: E731
        return jax.vmap(one, in_axes=(None, 0, 0 if with_cond else None, SAMPLE_KEY_AXES))(denoiser, x0, cond, keys)

    def merge(pool, fresh, src, take):
        picked = jax.tree_util.tree_map(lambda leaf: leaf[src], fresh)
        return _select(take, picked, pool)

    running = jax.vmap(lambda s: stage.running(s, cfg))
    step = jax.vmap(lambda d, s: stage.step(d, s, cfg), in_axes=(None, 0))

    def advance(denoiser, pool, occupied):
        for _ in range(k):  # unrolled: straight-line code
            pool = _select(occupied & running(pool), step(denoiser, pool), pool)
        outputs = jax.vmap(lambda s: stage.outputs(s, cfg))(pool)
        return pool, occupied & running(pool), outputs, jax.vmap(stage.evals)(pool)

    return {
        "init": runtime.per_device_jit(init, mesh, batched=(False, True, with_cond, False, True)),
        "merge": runtime.per_device_jit(merge, mesh, batched=(True, True, True, True), donate_argnums=(0,)),
        "advance": runtime.per_device_jit(advance, mesh, batched=(False, True, True), donate_argnums=(1,)),
    }


@dataclasses.dataclass
class _Chunk:
    """A submitted chunk: its device inputs, its lanes (built on first use) and the rows still waiting."""

    ids: list
    inputs: tuple  # (x0, cond, id_hash) on the mesh
    waiting: list  # per device: local row indices not yet in a slot
    state: object = None


class LanePool:
    """A fixed pool of ``placed.chunk`` lane slots on ``placed``'s mesh (module docstring).

    ``submit()`` a chunk's rows, then ``run()`` (returns the finished lanes as (id, {column: float})
    and stops when it needs more input) or ``run(drain=True)`` (until every lane has finished).
    """

    def __init__(self, placed: runtime.Placement, stage, cfg, with_cond: bool, *,
                 evals_per_call: int = DEFAULT_EVALS_PER_CALL):
        self.placed, self.stage, self.cfg = placed, stage, cfg
        self.evals_per_call = int(evals_per_call)
        self.jit = programs(stage, cfg, with_cond, placed.mesh, self.evals_per_call)
        self.pdb, self.n_data = placed.per_device_batch, placed.n_data
        self.size = placed.chunk
        self.slot_ids: list = [None] * self.size  # the id of each slot's lane; None: free
        self.pool = None
        self.queue: collections.deque[_Chunk] = collections.deque()
        self.stats = {"calls": 0, "slot_evals": 0, "evals_needed": 0, "lanes": 0}
        self.lane_evals: dict = {}  # id -> evaluations its lane made

    def compile(self, x0, cond, id_hash) -> None:
        """Compiles the three programs ahead of time for a chunk of this shape (benchmarks time the
        compile apart this way); later calls use the compiled executables."""
        den, root = self.placed.denoiser, self.placed.root
        state = self.jit["init"](den, x0, cond, root, id_hash)
        flags = self._put(np.zeros(self.size, bool))
        compiled = {
            "init": self.jit["init"].lower(den, x0, cond, root, id_hash).compile(),
            "merge": self.jit["merge"].lower(state, state, self._put(np.zeros(self.size, np.int32)), flags).compile(),
            "advance": self.jit["advance"].lower(den, state, flags).compile(),
        }
        self.jit = compiled

    def submit(self, ids, mask, x0, cond, id_hash) -> None:
        """Queues a chunk (``placed.chunk`` rows on the mesh, as the kernels' program gets it); rows
        with ``mask`` False (padding) are never run."""
        mask = np.asarray(mask, bool)
        if len(ids) != self.size or mask.shape != (self.size,):
            raise ValueError(f"lane pool: a chunk has {self.size} rows, got {len(ids)} ids and mask {mask.shape}")
        waiting = [[r for r in range(self.pdb) if mask[d * self.pdb + r]] for d in range(self.n_data)]
        if any(waiting):
            self.queue.append(_Chunk(list(ids), (x0, cond, id_hash), waiting))

    @property
    def busy(self) -> int:
        return sum(s is not None for s in self.slot_ids)

    def _refill(self) -> None:
        """Fills free slots from the queue, oldest chunk first, each device from its own rows."""
        for chunk in list(self.queue):
            free = [[r for r in range(self.pdb) if self.slot_ids[d * self.pdb + r] is None] for d in range(self.n_data)]
            if not any(f and w for f, w in zip(free, chunk.waiting)):
                if not any(free):
                    return
                continue
            src, take = np.zeros(self.size, np.int32), np.zeros(self.size, bool)
            for d in range(self.n_data):
                for slot, row in zip(free[d], chunk.waiting[d]):
                    src[d * self.pdb + slot], take[d * self.pdb + slot] = row, True
                    self.slot_ids[d * self.pdb + slot] = chunk.ids[d * self.pdb + row]
                chunk.waiting[d] = chunk.waiting[d][len(free[d]):]
            if chunk.state is None:
                chunk.state = self.jit["init"](self.placed.denoiser, chunk.inputs[0], chunk.inputs[1],
                                               self.placed.root, chunk.inputs[2])
            if self.pool is None:  # any state of the right shape: every slot is taken or stays free
                self.pool = jax.tree_util.tree_map(jnp.copy, chunk.state)
            self.pool = self.jit["merge"](self.pool, chunk.state, self._put(src), self._put(take))
            if not any(chunk.waiting):
                self.queue.remove(chunk)

    def _put(self, array):
        return jax.device_put(array, self.placed.batch_sharding)

    def _advance(self) -> list:
        occupied = np.array([s is not None for s in self.slot_ids])
        self.pool, running, outputs, evals = self.jit["advance"](self.placed.denoiser, self.pool, self._put(occupied))
        running = np.asarray(running)
        self.stats["calls"] += 1
        self.stats["slot_evals"] += self.size * self.evals_per_call
        finished = np.flatnonzero(occupied & ~running)
        if not len(finished):
            return []
        outputs = {c: np.asarray(v, np.float64) for c, v in outputs.items()}
        evals = np.asarray(evals)
        done = []
        for slot in finished:
            done.append((self.slot_ids[slot], {c: float(v[slot]) for c, v in outputs.items()}))
            self.lane_evals[self.slot_ids[slot]] = int(evals[slot])
            self.stats["evals_needed"] += int(evals[slot])
            self.stats["lanes"] += 1
            self.slot_ids[slot] = None
        return done

    def run(self, *, drain: bool = False) -> list:
        """Advances the pool; returns the lanes finished meanwhile. Without ``drain`` it stops as soon
        as a slot is free and nothing is waiting (more input makes better use of the call)."""
        done = []
        while True:
            self._refill()
            if self.busy == 0 or (not drain and not self.queue and self.busy < self.size):
                return done
            done += self._advance()

    def efficiency(self):
        """Evaluations the lanes needed / evaluations computed (None before the first call)."""
        return self.stats["evals_needed"] / self.stats["slot_evals"] if self.stats["slot_evals"] else None
