"""The pure helpers of scripts/bench_common.py: FLOP rates, fraction of peak, table cells and layout."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_common as bc  # noqa: E402


def test_flop_rate_counts_a_backward_as_two_forwards():
    assert bc.flop_rate(10.0, 0.0, 1e6) == pytest.approx(1e7)
    assert bc.flop_rate(10.0, 5.0, 1e6) == pytest.approx(2e7)


def test_peak_fraction_is_model_flops_times_evals_per_s_over_peak():
    # 35.7M-parameter UNet: 6.06 GFLOP per forward at 1,000 evaluations/s on a 495 TFLOP/s device
    assert bc.peak_fraction(6.06e9 * 1000, 495) == pytest.approx(6.06e12 / 495e12)
    assert bc.peak_fraction(1e12, None) is None
    assert bc.peak_fraction(1e12, 0) is None
    with pytest.raises(ValueError):
        bc.peak_fraction(1e12, -1.0)


def test_flops_cell_and_header():
    assert bc.flops_cell(2.5e9, None) == "2.5"
    assert bc.flops_cell(49.5e12, 495) == "49,500 (10%)"
    assert bc.flops_cell(1.234e9, 989) == "1.23 (0.00012%)"
    assert bc.flops_header(None) == "GFLOP/s"
    assert bc.flops_header(495.0) == "GFLOP/s (% of 495 TF)"


def test_fmt_and_ratio_cell():
    assert bc.fmt(None) == "-"
    assert bc.fmt(0) == "0"
    assert bc.fmt(0.012345) == "0.0123"
    assert bc.fmt(278.4) == "278"
    assert bc.fmt(12345.6) == "12,346"
    assert bc.ratio_cell(3.0, 2.0) == "1.50x"
    assert bc.ratio_cell(3.0, None) == "-"
    assert bc.ratio_cell(None, 2.0) == "-"


def test_fastest_picks_the_lowest_median_of_the_prefix():
    times = {"jaxmia": [0.1, 0.1, 0.1], "torch@1": [1.0, 3.0, 2.0], "torch@2": [5.0, 0.5, 6.0]}
    assert bc.fastest(times) == ("torch@1", 2.0)
    assert bc.fastest(times, prefix="jax") == ("jaxmia", 0.1)
    with pytest.raises(ValueError):
        bc.fastest(times, prefix="tf")


def test_rel_diff_and_verdict():
    assert bc.rel_diff([1.0, 2.0], [1.0, 4.0]).tolist() == [0.0, 0.5]
    assert bc.rel_diff([1e-13], [0.0])[0] == pytest.approx(0.1)
    assert bc.verdict(1e-5, 1e-4) == "ok"
    assert bc.verdict(1e-3, 1e-4) == "DIFFERS"
    assert bc.verdict(1.0, None) == "-"


def test_format_table_aligns_columns():
    lines = bc.format_table(["signal", "img/s"], [["loss", "94.6"], ["cdi", "4.75"]])
    assert lines == ["signal  img/s", "------  -----", "loss     94.6", "cdi      4.75"]
    with pytest.raises(ValueError):
        bc.format_table(["a", "b"], [["only one"]])


def test_time_calls_interleaves_and_warms_up(capsys):
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = bc.time_calls(fns, reps=2)
    assert order == ["a", "b", "a", "b", "a", "b"]  # one warm-up each, then interleaved
    assert set(times) == {"a", "b"} and all(len(v) == 2 for v in times.values())
    assert "warm-up s:" in capsys.readouterr().out
    assert bc.n_calls(fns, times, prefix="a") == 3


def test_time_calls_drops_a_thread_count_far_slower_in_warm_up(capsys):
    import time

    calls = []

    def work(label, seconds):
        return lambda: (calls.append(label), time.sleep(seconds))

    # 0.01 s against 1 s: far apart enough that a loaded machine's scheduling cannot flip them
    fns = {"jaxmia": work("j", 0.0), "torch@1": work("t1", 0.01), "torch@2": work("t2", 1.0)}
    times = bc.time_calls(fns, reps=2)
    assert set(times) == {"jaxmia", "torch@1"}
    assert calls.count("t2") == 1  # its warm-up only
    assert "not timed" in capsys.readouterr().out
    assert bc.n_calls(fns, times) == 2 + 2  # two warm-ups, two timed calls of torch@1


def test_eval_counter_is_thread_safe():
    import threading

    counter = bc.EvalCounter()
    threads = [threading.Thread(target=lambda: [counter.add("forward", 1) for _ in range(10_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.forward == 40_000 and counter.backward == 0


def test_folder_target_gives_pytorch_the_same_weights(tmp_path):
    """A folder saved by diffusers' PyTorch code: jaxmia's and the baseline's forward agree."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import jax
    import numpy as np
    from make_bench_unet import make_unet_folder

    n = make_unet_folder(tmp_path / "unet", size=8, channels=2, blocks=(8, 16), attention_levels=(1,), norm_groups=4)
    target = bc.load_target(str(tmp_path / "unet"), 3)
    assert target.n_params == n
    assert target.images.shape == (3, 8, 8, 2) and target.images.dtype == np.float32
    assert np.abs(target.images).max() <= 1
    t = np.array([10, 500, 999])
    ours = np.asarray(jax.jit(target.denoiser.apply_fn)(target.denoiser.params, target.images, t, None))
    model = bc.torch_unet(target, "cpu")
    with torch.no_grad():
        theirs = model(torch.from_numpy(target.images).permute(0, 3, 1, 2), torch.from_numpy(t)).sample
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)


def test_folder_target_refuses_what_has_no_pytorch_baseline(tmp_path):
    import json

    with pytest.raises(FileNotFoundError, match=r"no such model folder \(or give a bundled target: demo, rgb, cifar\)"):
        bc.load_target(str(tmp_path / "absent"), 2)
    folder = tmp_path / "cond"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 8}))
    with pytest.raises(ValueError, match=r"the PyTorch baseline takes a pixel-space UNet2DModel, this folder holds "
                                         r"'UNet2DConditionModel'"):
        bc.load_target(str(folder), 2)
