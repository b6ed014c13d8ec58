"""Data layer: folders, arrays, demo sets, batches, and their refusals."""

import numpy as np
import pytest
from PIL import Image

from jaxmia.data import Dataset, digits, iter_batches, load_dataset, write_npz


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode).save(path)


def test_folder_reads_rgb_and_grey_into_model_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    _png(tmp_path / "a.png", rgb)
    _png(tmp_path / "b.png", grey)
    ds = load_dataset(tmp_path, image_shape=(8, 8, 3))
    assert ds.ids == ["a.png", "b.png"]
    np.testing.assert_allclose(ds.images[0], rgb / 127.5 - 1, atol=1e-6)
    np.testing.assert_allclose(ds.images[1], np.repeat(grey[..., None], 3, -1) / 127.5 - 1, atol=1e-6)
    grey_ds = load_dataset(tmp_path, image_shape=(8, 8, 1))
    expected_l = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 127.5 - 1
    np.testing.assert_allclose(grey_ds.images[0, ..., 0], expected_l, atol=1e-6)


def test_folder_refusals_name_the_culprit(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(empty)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _png(mixed / "ok.png", np.zeros((8, 8), np.uint8))
    _png(mixed / "big.png", np.zeros((9, 8), np.uint8))
    with pytest.raises(ValueError, match="big.png"):
        load_dataset(mixed, image_shape=(8, 8, 1))
    resized = load_dataset(mixed, image_shape=(8, 8, 1), resize="resize")
    assert resized.images.shape == (2, 8, 8, 1)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    _png(corrupt / "good.png", np.zeros((8, 8), np.uint8))
    (corrupt / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="bad.png"):
        load_dataset(corrupt, image_shape=(8, 8, 1))
    assert load_dataset(corrupt, image_shape=(8, 8, 1), on_error="skip").ids == ["good.png"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_npz_round_trip_and_pickle_refusal(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
    path = write_npz(tmp_path / "x.npz", ["a", "b", "c"], images, cond=np.array([0, 1, 2]))
    ds = load_dataset(path)
    assert ds.ids == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.cond, [0, 1, 2])
    np.savez(tmp_path / "p.npz", images=images, ids=np.array([{"a": 1}] * 3, dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_dataset(tmp_path / "p.npz")
    np.savez(tmp_path / "noids.npz", images=images)
    with pytest.raises(ValueError, match="'ids'"):
        load_dataset(tmp_path / "noids.npz")
    np.savez(tmp_path / "range.npz", images=images * 5, ids=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        load_dataset(tmp_path / "range.npz")
    np.savez(tmp_path / "dup.npz", images=images, ids=np.array(["a", "a", "c"]))
    with pytest.raises(ValueError, match="duplicate"):
        load_dataset(tmp_path / "dup.npz")


def test_demo_digits_are_pixel_replicated_load_digits():
    from sklearn.datasets import load_digits

    ids, images, labels = digits(16)
    raw = load_digits()
    assert images.shape == (1797, 16, 16, 1) and ids[5] == "digits-0005"
    np.testing.assert_allclose(images[5, ::2, ::2, 0], raw.images[5] / 8 - 1)
    np.testing.assert_allclose(images[5, 1::2, 1::2, 0], raw.images[5] / 8 - 1)
    np.testing.assert_array_equal(labels, raw.target)


def test_batches_pad_and_mask_without_losing_rows():
    ds = Dataset([f"i{k}" for k in range(7)], np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1))
    batches = list(iter_batches(ds, 3))
    assert [int(b.mask.sum()) for b in batches] == [3, 3, 1]
    assert batches[-1].ids == ["i6", "", ""]
    np.testing.assert_array_equal(batches[-1].x[:, 0, 0, 0], [6, 6, 6])
    real = [i for b in batches for i, m in zip(b.ids, b.mask) if m]
    assert real == ds.ids
    resumed = list(iter_batches(ds, 3, start=4))
    assert [i for b in resumed for i, m in zip(b.ids, b.mask) if m] == ds.ids[4:]
    np.testing.assert_array_equal(batches[0].id_hash[1], list(iter_batches(ds, 1))[1].id_hash[0])
