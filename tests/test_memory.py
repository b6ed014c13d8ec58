"""jaxmia.memory: compiled memory analysis of extract()'s programs, the batch search, micro-batching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmia.features as F
from jaxmia import memory

from features_util import SHAPE, fast_compile, tiny_dataset, tiny_denoiser

D = int(np.prod(SHAPE))


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    with fast_compile():
        yield


def test_program_bytes_of_a_known_program():
    compiled = jax.jit(lambda x, y: (x * 2.0, y + 1)).lower(jnp.zeros(1000, jnp.float32), jnp.zeros(10, jnp.int32)).compile()
    got = memory.program_bytes(compiled)
    assert got["argument"] == 4000 + 40
    assert 4040 <= got["output"] <= 4040 + 64  # plus the output tuple's index table on XLA:CPU
    assert got["total"] == got["argument"] + got["output"] - got["alias"] + got["temp"] + got["generated_code"]


def test_extraction_memory_counts_the_lane_pool_exactly():
    """NO's lane state per row: x_t, ε, and L-BFGS's x, g, trial, direction (6·D floats), the (s, y)
    history (2·10·D floats) and 90 bytes of scalars and flags (cfg.no_memory_size = 10)."""
    den, cfg = tiny_denoiser(), F.make_config("cdi")
    at = {b: memory.extraction_memory(den, "loss,noise_opt", cfg, b) for b in (1, 3)}
    for b, m in at.items():
        assert m.pool_state == b * ((6 + 2 * cfg.no_memory_size) * D * 4 + 90)
        assert m.kernels["argument"] >= b * D * 4 and m.advance["alias"] > 0  # the pool is donated
        assert m.need >= max(m.kernels["total"], m.advance["total"])
    assert at[1].need < at[3].need
    loss_only = memory.extraction_memory(den, "loss", cfg, 2)
    assert loss_only.advance is None and loss_only.pool_state == 0 and loss_only.need == loss_only.kernels["total"]


def test_largest_batch_on_an_affine_need():
    need = lambda b: 1000 + 37 * b  # noqa: E731
    for limit in (1000, 1037, 5000, 123456):
        best, seen = memory.largest_batch(need, limit)
        assert best == max(0, (limit - 1000) // 37) and len(seen) <= 6
    # a need that grows faster than the line through b = 1, 2 predicts: bisection finds it
    best, _ = memory.largest_batch(lambda b: 10 * b * b, 10 * 50 * 50)
    assert best == 50
    assert memory.largest_batch(need, 500)[0] == 0


def test_fit_per_device_batch():
    need = lambda b: 100 * b  # noqa: E731
    assert memory.fit_per_device_batch(16, need, None) == (16, None)
    assert memory.fit_per_device_batch(16, need, 1600) == (16, None)
    b, note = memory.fit_per_device_batch(12, need, 700)
    assert b == 6 and "2 micro-batches of 6" in note
    with pytest.raises(ValueError, match="even 1 row needs"):
        memory.fit_per_device_batch(4, need, 50)


def test_extract_micro_batches_when_the_batch_does_not_fit(capsys):
    """A limit between need(2) and need(4): per_device_batch 4 runs as 2 micro-batches of 2, says so,
    and gives exactly the features of a per_device_batch-2 run."""
    den, data, cfg = tiny_denoiser(), tiny_dataset(6), F.make_config("cdi")
    two, four = (memory.extraction_memory(den, "loss,noise_opt", cfg, b).need for b in (2, 4))
    kw = dict(seed=2, batch_size=4, devices=jax.devices()[:1])
    micro = F.extract(den, data, "loss,noise_opt", per_device_batch=4, device_memory=(two + four) // 2, **kw)
    assert "2 micro-batches of 2" in capsys.readouterr().err
    assert micro.meta["per_device_batch"] == 2 and micro.meta["identity"]["per_device_batch"] == 2
    assert micro.meta["micro_batching"]["requested_per_device_batch"] == 4
    plain = F.extract(den, data, "loss,noise_opt", per_device_batch=2, progress=False, **kw)
    np.testing.assert_array_equal(micro.values, plain.values)
    assert plain.meta["micro_batching"] is None


def test_abstract_real_size_configs_build_without_weights():
    """The real-size configs give abstract denoisers (ShapeDtypeStruct leaves: nothing allocated)."""
    den, cond = memory.abstract_denoiser(memory.DIT_XL_2_256, dtype=jnp.bfloat16)
    leaves = jax.tree_util.tree_leaves(den.params)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) and leaf.dtype == jnp.bfloat16 for leaf in leaves)
    # 749.8M: diffusers' DiT repeats the timestep/label embedder in every block (the paper's 675M shares one)
    assert sum(int(np.prod(leaf.shape)) for leaf in leaves) == 749_826_464
    assert den.sample_shape == (32, 32, 4) and den.learned_sigma and cond == ()
    sd, cond = memory.abstract_denoiser(memory.SD15_UNET, context_shape=(77, 768))
    assert 859e6 < sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(sd.params)) < 860e6
    assert sd.sample_shape == (64, 64, 4) and cond == (77, 768)
    with pytest.raises(ValueError, match="needs context_shape"):
        memory.abstract_denoiser(memory.SD15_UNET)
