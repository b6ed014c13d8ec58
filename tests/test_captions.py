"""Captions → text conditioning: imagefolder metadata and captions files, encoded by the pipeline's own
tokenizer and text encoder, cached, and fed to ``jaxmia features`` / ``audit`` with no pre-computed
embeddings. The oracle is diffusers' ``StableDiffusionPipeline.encode_prompt`` on the same folder."""

import json

import jax
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from jaxmia.cli import main
from jaxmia.data import load_dataset, write_npz
from jaxmia.data.captions import captions_for, file_captions, folder_captions
from jaxmia.models import load_denoiser
from jaxmia.models.text_conditioning import attach_captions, caption_embeddings, find_text_components
from jaxmia.table import load_table

from text_pipeline_util import tiny_text_pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-5
CAPTIONS = ["a photo of a cat", "A Painting of a RED car, at night!", "", "東京 タワー 123", "two dogs; it's late",
            "photo " * 100]


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny SD pipeline, and P / U folders of 16x16 images captioned in metadata.jsonl / metadata.csv."""
    root = tmp_path_factory.mktemp("t2i")
    pipe = tiny_text_pipeline(root / "pipe")
    for side, offset in (("P", 0), ("U", 100)):
        for i in range(6):
            _png(root / side / f"{side.lower()}{i}.png", offset + i)
    (root / "P" / "metadata.jsonl").write_text("\n".join(
        json.dumps({"file_name": f"p{i}.png", "text": CAPTIONS[i]}) for i in range(6)) + "\n")
    (root / "U" / "sub").mkdir()
    for i in (4, 5):  # U: a CSV at the top and a JSON-lines file in a subfolder, both relative to their folder
        (root / "U" / f"u{i}.png").rename(root / "U" / "sub" / f"u{i}.png")
    (root / "U" / "metadata.csv").write_text("file_name,text\n" + "".join(
        f'u{i}.png,"{CAPTIONS[5 - i]}"\n' for i in range(4)))
    (root / "U" / "sub" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "u4.png", "text": "x"}) + "\n" + json.dumps({"file_name": "u5.png", "text": "y"}))
    return root, pipe


def _oracle(pipe_dir, texts):
    diffusers.logging.set_verbosity_error()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(pipe_dir), safety_checker=None)
    with torch.no_grad():
        return pipe.encode_prompt(list(texts), "cpu", 1, False)[0].numpy()


def test_metadata_and_caption_files_map_ids(world, tmp_path):
    root, _ = world
    assert folder_captions(root / "P") == {f"p{i}.png": CAPTIONS[i] for i in range(6)}
    u = folder_captions(root / "U")
    assert u["sub/u4.png"] == "x" and u["u0.png"] == CAPTIONS[5] and len(u) == 6
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "one"}\n\n{"file_name": "b", "text": "two"}\n')
    (tmp_path / "c.csv").write_text('id,text,extra\na,"one, with comma",1\nb,two,2\n')
    (tmp_path / "c.json").write_text(json.dumps({"a": "one", "b": "two"}))
    assert file_captions(tmp_path / "c.jsonl") == {"a": "one", "b": "two"}
    assert file_captions(tmp_path / "c.csv") == {"a": "one, with comma", "b": "two"}
    assert file_captions(tmp_path / "c.json") == {"a": "one", "b": "two"}
    texts, source = captions_for(["b", "a"], captions=tmp_path / "c.json")
    assert texts == ["two", "one"] and source.endswith("c.json")


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"id": "a", "text": "x"}\n{"id": "b", "text": \n', r"bad.jsonl row 2: not valid JSON"),
    ("bad.jsonl", '{"id": "a", "text": "x"}\n{"id": "b"}\n', r"bad.jsonl row 2: no 'text' \(the caption\) for 'b'"),
    ("bad.jsonl", '{"id": "a", "text": ["x", "y"]}\n', r"bad.jsonl row 1: the caption of 'a' must be a string"),
    ("bad.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"bad.jsonl row 2: 'a' has a caption "
                                                                          r"already \(.*bad.jsonl row 1\)"),
    ("bad.jsonl", '{"name": "a", "text": "x"}\n', r"bad.jsonl row 1: no 'id' or 'file_name' column"),
    ("bad.jsonl", '["a", "x"]\n', r"bad.jsonl row 1: expected an object"),
    ("bad.csv", "id,text\na,x\nb,y,z\n", r"bad.csv row 3: 3 values for the 2 columns id, text"),
    ("bad.csv", "id,caption\na,x\n", r"bad.csv row 2: no 'text' \(the caption\) for 'a'"),
    ("bad.txt", "a x\n", r"bad.txt: a captions file must be .jsonl, .csv or .json"),
])
def test_bad_rows_are_refused_naming_file_and_row(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        file_captions(tmp_path / name)
    assert len(str(err.value).splitlines()) == 1


def test_folder_metadata_refusals(tmp_path):
    _png(tmp_path / "F" / "a.png", 0)
    _png(tmp_path / "F" / "b.png", 1)
    with pytest.raises(FileNotFoundError, match=r"F: no metadata.jsonl or metadata.csv"):
        folder_captions(tmp_path / "F")
    (tmp_path / "F" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n'
                                                   '{"file_name": "c.png", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl row 2: file_name 'c.png' is not a file in"):
        folder_captions(tmp_path / "F")
    (tmp_path / "F" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl: no caption for 1 of 2 image\(s\): 'b.png'"):
        captions_for(["a.png", "b.png"], folder=tmp_path / "F")


def test_embeddings_match_the_pipeline_and_are_cached(world, tmp_path):
    root, pipe = world
    encoder, tokenizer = find_text_components(pipe)
    assert (encoder.name, tokenizer.name) == ("text_encoder", "tokenizer")
    assert find_text_components(pipe / "unet") == (encoder, tokenizer)  # a model folder inside the pipeline
    expected = _oracle(pipe, CAPTIONS)
    cache = tmp_path / "cache"
    emb, info = caption_embeddings(encoder, tokenizer, CAPTIONS, cache_dir=cache)
    assert emb.shape == expected.shape == (6, 77, 32) and np.max(np.abs(emb - expected)) <= TOL
    assert info["encoded"] == 6 and info["cached"] == 0 and info["max_length"] == 77
    again, info2 = caption_embeddings(encoder, tokenizer, CAPTIONS[::-1] + ["new caption"], cache_dir=cache)
    assert info2["encoded"] == 1 and info2["cached"] == 6 and info2["cache"] == info["cache"]
    np.testing.assert_array_equal(again[:6], emb[::-1])
    assert np.max(np.abs(again[6] - _oracle(pipe, ["new caption"])[0])) <= TOL
    # The data set path: ids → captions (metadata) → embeddings, checked against the UNet's width.
    denoiser = load_denoiser(pipe)
    dataset = load_dataset(root / "P", image_shape=denoiser.input_shape)
    conditioned, info3 = attach_captions(pipe, denoiser, dataset, cache_dir=cache)
    assert info3["cached"] == 6 and info3["captions"].endswith("metadata.jsonl")
    np.testing.assert_array_equal(conditioned.cond, emb)
    with pytest.raises(FileNotFoundError, match=r"no CLIP text encoder \+ tokenizer"):
        find_text_components(tmp_path)


def test_features_and_audit_from_captioned_folders(world, tmp_path):
    """The CLI on a pipeline folder and captioned folders equals a run on embeddings computed by torch."""
    root, pipe = world
    runner = CliRunner()
    out = tmp_path / "f" / "features.npz"
    result = runner.invoke(main, ["features", str(pipe), str(root / "P"), "--features", "loss", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "6 encoded, 0 from the cache" in result.output and (tmp_path / "f" / "text_embeddings").is_dir()
    # The same images with the oracle's embeddings in an .npz, run the same way.
    dataset = load_dataset(root / "P", image_shape=(16, 16, 3))
    write_npz(tmp_path / "p.npz", dataset.ids, dataset.images, _oracle(pipe, CAPTIONS))
    ref_out = tmp_path / "ref.npz"
    result = runner.invoke(main, ["features", str(pipe), str(tmp_path / "p.npz"), "--features", "loss",
                                  "--out", str(ref_out)])
    assert result.exit_code == 0, result.output
    assert "encoded" not in result.output  # the .npz carries its embeddings: no captions read
    a, b = load_table(out), load_table(ref_out)
    assert a.ids.tolist() == b.ids.tolist() and a.values.shape == (6, 1)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-4, atol=1e-5)
    # A folder without captions: one line naming it.
    _png(tmp_path / "bare" / "x.png", 9)
    bad = runner.invoke(main, ["features", str(pipe), str(tmp_path / "bare"), "--out", str(tmp_path / "g.npz")])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "bare: no metadata.jsonl" in bad.output

    # The audit, captions from one file for both sides (overriding the folders' metadata).
    rows = [{"id": f"p{i}.png", "text": f"p caption {i}"} for i in range(6)]
    rows += [{"id": i, "text": f"u caption {i}"} for i in ("u0.png", "u1.png", "u2.png", "u3.png", "sub/u4.png",
                                                            "sub/u5.png")]
    (tmp_path / "captions.jsonl").write_text("\n".join(map(json.dumps, rows)))
    args = ["audit", str(pipe), "-p", str(root / "P"), "-u", str(root / "U"), "--out", str(tmp_path / "audit"),
            "--features", "loss", "--n", "5", "--captions", str(tmp_path / "captions.jsonl"), "--quiet",
            "--set", "audit.null_splits=0", "--set", "audit.drc_images=0", "--set", "cdi.permutations=19",
            "--set", "cdi.curve_reps=5"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["config"]["audit"]["captions"].endswith("captions.jsonl")
    for side in ("published", "unpublished"):
        info = report["captions"][side]
        assert info["n"] == 5 and info["captions"].endswith("captions.jsonl") and info["max_length"] == 77
    assert 0 < report["verdict"]["p_value"] <= 1 and report["verdict"]["n_p"] == 5


def test_text_model_without_captions_or_embeddings_is_refused(world, tmp_path):
    root, pipe = world
    dataset = load_dataset(root / "P", image_shape=(16, 16, 3))
    write_npz(tmp_path / "bare.npz", dataset.ids, dataset.images)
    result = CliRunner().invoke(main, ["features", str(pipe), str(tmp_path / "bare.npz"), "--out",
                                       str(tmp_path / "x.npz")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "bare.npz: the model is text-conditional and the data carry no text embeddings" in result.output
    (tmp_path / "c.json").write_text(json.dumps({i: "a cat" for i in dataset.ids}))
    unet_only = CliRunner().invoke(main, ["features", "demo", "demo:members", "--captions", str(tmp_path / "c.json"),
                                          "--out", str(tmp_path / "y.npz")])
    assert unet_only.exit_code == 2 and "'none'-conditional; captions are for text-conditional models" in unet_only.output
