"""The shift checks' parts and the hybrid p-value, against closed forms and NumPy re-derivations."""

import itertools

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from jaxmia.data import load_dataset
from jaxmia.data.files import estimate_jpeg_quality, ijg_luminance_tables
from jaxmia.inference import curves, stat_tests
from jaxmia.shift import (apply_processing, blind_table, closest_processing, compare_files, make_like_folder,
                          pixel_features, separating_features, split_halves)
from jaxmia.table import FeatureTable


# ---- evidence strength ----------------------------------------------------------------------------

def test_tail_bound_dominates_the_exact_sign_flip_tail():
    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 9, 13):
        a = rng.exponential(size=m)
        a /= np.linalg.norm(a)
        sums = np.array(list(itertools.product([-1.0, 1.0], repeat=m))) @ a  # all 2^m sign patterns
        for x in np.linspace(-0.5, np.sqrt(m), 40):
            exact = (sums >= x - 1e-12).mean()
            assert exact <= 10 ** stat_tests.rademacher_tail_log10(x) + 1e-12, (m, x)
    # closed form: min(1, exp(-x^2/2), 2e^3/9 * Phi_bar(x)), also where the float underflows
    for x in (0.5, 2.0, 5.0):
        want = min(1.0, np.exp(-x * x / 2), 2 * np.e**3 / 9 * stats.norm.sf(x))
        assert 10 ** stat_tests.rademacher_tail_log10(x) == pytest.approx(want, rel=1e-9)
    assert stat_tests.rademacher_tail_log10(60.0) == pytest.approx(
        (np.log(2 * np.e**3 / 9) + stats.norm.logsf(60.0)) / np.log(10))


def test_signflip_tail_closed_form():
    p, log10_p, s = stat_tests.signflip_tail_pvalues(np.full(16, 0.3))
    assert s == pytest.approx(4.0) and p == pytest.approx(2 * np.e**3 / 9 * stats.norm.sf(4.0))
    assert stat_tests.signflip_tail_pvalues(np.zeros(5))[0] == 1.0
    d = np.array([1.0, -2.0, 0.5, 3.0])
    assert stat_tests.signflip_tail_pvalues(d)[2] == pytest.approx(d.sum() / np.sqrt((d**2).sum()))


def test_hybrid_is_the_union_bound_of_its_parts():
    rng = np.random.default_rng(1)
    xp, xu = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    xp[:, 0] += 1.0
    r = stat_tests.hybrid_test(xp, xu, permutations=199, seed=3).result
    perm = stat_tests.permutation_test(xp, xu, permutations=199, seed=3).result
    assert r.components["p_permutation"] == perm.p_value and r.statistic == perm.statistic
    # the tail part re-derived: the split test's seeded half trains, the other half's differences
    order = np.random.default_rng([3, 2]).permutation(40)
    _, _, _, sp, su = stat_tests.split_pvalues(xp[order][None], xu[order][None], 20, return_scores=True)
    d = (sp - su)[0]
    s = d.sum() / np.sqrt((d**2).sum())
    assert r.components["tail_statistic"] == pytest.approx(s)
    p_tail = min(1.0, np.exp(-s * s / 2), 2 * np.e**3 / 9 * stats.norm.sf(s))
    assert r.p_value == pytest.approx(min(1.0, perm.p_value / 0.9, p_tail / 0.1))
    # batched == single
    p_batch, _ = stat_tests.hybrid_pvalues(xp[None], xu[None], [3], permutations=199)
    assert p_batch[0] == pytest.approx(r.p_value)


def test_hybrid_keeps_its_level_on_null_data():
    # 600 null trials, alpha = 0.1 (B = 39 resolves p_perm / 0.9 <= 0.1 exactly at rank 3): P(p <= 0.1) <= 0.1.
    rng = np.random.default_rng(2)
    trials, n, d = 600, 20, 3
    xp, xu = rng.normal(size=(trials, n, d)), rng.normal(size=(trials, n, d))
    p = curves.batched_pvalues(xp, xu, "hybrid", list(range(trials)), permutations=39)
    upper = stats.binom.ppf(0.995, trials, 0.1) / trials
    assert (p <= 0.1).mean() <= upper and 0.4 < p.mean() < 0.7


# ---- blind features -------------------------------------------------------------------------------

def test_pixel_features_closed_forms():
    flat = np.zeros((1, 8, 8, 1))
    checker = np.where((np.arange(8)[:, None] + np.arange(8)[None]) % 2, 1.0, -1.0)[None, :, :, None]
    names, v = pixel_features(np.concatenate([flat, checker]))
    f = dict(zip(names, v.T))
    assert f["px_std"][0] == 0 and f["grad_energy"][0] == 0 and f["px_levels"][0] == pytest.approx(1 / 64)
    # checkerboard: every neighbour differs by 2 (dx^2 = dy^2 = 4), the Laplacian is -8x, all power at (1/2, 1/2)
    assert f["px_mean"][1] == 0 and f["px_std"][1] == 1 and f["px_levels"][1] == pytest.approx(2 / 64)
    assert f["grad_energy"][1] == pytest.approx(8.0) and f["grad_abs"][1] == pytest.approx(4.0)
    assert f["hf_energy"][1] == pytest.approx(64.0) and f["band_3"][1] == pytest.approx(1.0)
    assert f["px_dark"][1] == 0.5 and f["px_bright"][1] == 0.5 and f["jpeg_blockiness"][1] == 1.0
    rgb = np.zeros((1, 4, 4, 3))
    rgb[..., 0] = 0.5
    _, vr = pixel_features(rgb)
    fr = dict(zip(pixel_features(rgb)[0], vr.T))
    assert fr["col_rg"][0] == pytest.approx(0.5) and fr["col_sat"][0] == pytest.approx(0.5) and fr["col_bg"][0] == 0


def test_separating_features_rank_and_auc():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
    a[:, 1] += 3.0
    names = ("x", "y", "z")
    top = separating_features(FeatureTable([f"p{i}" for i in range(30)], names, a),
                              FeatureTable([f"u{i}" for i in range(30)], names, b))
    assert top[0]["feature"] == "y" and top[0]["separates"]
    assert top[0]["auc"] == pytest.approx((a[:, 1][:, None] > b[:, 1][None]).mean())
    ranked = closest_processing(np.array([2.0, 0.0]), {"a": [2.0, 0.1], "b": [1.0, 0.0], "c": [-2.0, 0.0]},
                                np.array([1.0, 1.0]))
    assert [r["processing"] for r in ranked] == ["a", "b", "c"] and ranked[2]["similarity"] == pytest.approx(-1.0)


# ---- processing ------------------------------------------------------------------------------------

def _gauss_blur_numpy(img, sigma):
    radius = int(4.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, radius, mode="symmetric")
    rows = np.stack([np.convolve(r, k, mode="valid") for r in pad])
    return np.stack([np.convolve(c, k, mode="valid") for c in rows.T]).T


def test_processings_against_numpy():
    images = load_dataset("demo:nonmembers").images[:3]
    blurred = apply_processing("blur:0.6", images)
    for i in range(3):
        np.testing.assert_allclose(blurred[i, :, :, 0], np.clip(_gauss_blur_numpy(images[i, :, :, 0], 0.6), -1, 1),
                                   atol=1e-6)
    np.testing.assert_allclose(apply_processing("brightness:0.04", images), np.clip(images + 0.04, -1, 1), atol=1e-7)
    flat = np.full((1, 8, 8, 1), 0.25, np.float32)
    np.testing.assert_allclose(apply_processing("resize:0.5", flat), flat, atol=1e-6)
    jp = apply_processing("jpeg:100", images)
    assert np.abs(jp - images).max() < 0.05 and np.allclose((jp + 1) * 127.5, np.round((jp + 1) * 127.5), atol=1e-3)
    with pytest.raises(ValueError, match="unknown processing 'sharpen:1'"):
        apply_processing("sharpen:1", images)
    ref, proc = split_halves([f"i{k}" for k in range(25)], 50, 0)
    assert len(ref) == len(proc) == 12 and not set(ref) & set(proc)


# ---- files ---------------------------------------------------------------------------------------

def _folder(path, fmt, size, quality=None, n=6):
    path.mkdir()
    rng = np.random.default_rng(5)
    for k in range(n):
        img = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8))
        img.save(path / f"im{k}.{ 'jpg' if fmt == 'JPEG' else 'png'}", format=fmt,
                 **({"quality": quality} if quality else {}))
    return path


def test_jpeg_quality_is_read_from_the_tables(tmp_path):
    for q in (30, 75, 90):
        ds = load_dataset(str(_folder(tmp_path / f"q{q}", "JPEG", 8, q)))
        assert {f["jpeg_quality"] for f in ds.files} == {q} and {f["jpeg_table_error"] for f in ds.files} == {0.0}
        assert ds.files[0]["format"] == "JPEG" and (ds.files[0]["width"], ds.files[0]["height"]) == (8, 8)
    assert estimate_jpeg_quality(ijg_luminance_tables()[49]) == (50, 0.0)
    png = load_dataset(str(_folder(tmp_path / "png", "PNG", 8)))
    assert png.files[0]["format"] == "PNG" and png.files[0]["jpeg_quality"] is None
    assert png.subset(png.ids[::-1]).files[0] == png.files[-1]
    assert load_dataset("demo:members").files is None


def test_compare_files_and_make_u_like_p(tmp_path):
    p_dir = _folder(tmp_path / "P", "JPEG", 8, 60)
    u_dir = _folder(tmp_path / "U", "PNG", 12)
    p = load_dataset(str(p_dir))
    u_files = load_dataset(str(u_dir), image_shape=(8, 8, 1), resize="resize").files
    diff = compare_files(p.files, u_files)
    assert {m["fact"] for m in diff["mismatches"]} == {"format", "size"}
    assert "JPEG 100%" in diff["mismatches"][0]["words"] and "PNG 100%" in diff["mismatches"][0]["words"]
    done = make_like_folder(u_dir, tmp_path / "U_like_P", like=p_dir)
    assert done["target"] == {"format": "JPEG", "width": 8, "height": 8, "mode": "L", "jpeg_quality": 60}
    like = load_dataset(str(tmp_path / "U_like_P"))
    assert compare_files(p.files, like.files)["mismatches"] == [] and len(like) == 6
    assert compare_files(None, like.files)["available"] is False
