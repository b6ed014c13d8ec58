"""The restricted torch-checkpoint reader: the same tensors as torch.load, and nothing from the file runs."""

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxmia.models.torch_checkpoint import UnsafeCheckpointError, flat_state_dict, read_torch_checkpoint  # noqa: E402

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"
FIXTURE_FILES = sorted(p for p in OFFICIAL.glob("*/*") if p.suffix in (".pt", ".pth", ".ckpt"))


@pytest.mark.skipif(not FIXTURE_FILES, reason="shared/fixtures/official not present")
@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.parent.name)
def test_official_fixtures_read_as_torch_reads_them(path):
    ours, ref = read_torch_checkpoint(path), torch.load(path, weights_only=True, map_location="cpu")
    sd = flat_state_dict(ours, source=str(path), key="state_dict" if "state_dict" in ref else None)
    ref_sd = ref.get("state_dict", ref)
    assert list(sd) == list(ref_sd)
    for name, tensor in ref_sd.items():
        assert sd[name].dtype == tensor.numpy().dtype and sd[name].shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(sd[name], tensor.numpy(), err_msg=name)


def test_views_dtypes_parameters_and_containers(tmp_path):
    base = torch.arange(24.0).reshape(4, 6)
    obj = {"t": base.t(), "slice": torch.arange(10)[3:7], "bf16": torch.randn(5, dtype=torch.bfloat16),
           "half": torch.randn(3).half(), "p": torch.nn.Parameter(torch.ones(2)), "shared": base[1],
           "nested": [1, 2.5, "x", (torch.tensor([True, False]),)], "empty": torch.zeros(0, 3)}
    torch.save(obj, tmp_path / "x.pt")
    got = read_torch_checkpoint(tmp_path / "x.pt")
    np.testing.assert_array_equal(got["t"], base.t().numpy())
    np.testing.assert_array_equal(got["slice"], [3, 4, 5, 6])
    assert got["bf16"].dtype.name == "bfloat16"
    np.testing.assert_array_equal(got["bf16"].astype(np.float32), obj["bf16"].float().numpy())
    np.testing.assert_array_equal(got["half"], obj["half"].numpy())
    np.testing.assert_array_equal(got["p"], [1.0, 1.0])
    np.testing.assert_array_equal(got["shared"], base[1].numpy())
    assert got["nested"][:3] == [1, 2.5, "x"] and got["nested"][3][0].tolist() == [True, False]
    assert got["empty"].shape == (0, 3)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_reduce_gadget_is_refused_naming_the_global_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"global '(posix|nt)\.system'"):
        read_torch_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_build_on_a_non_dict_is_refused(tmp_path):
    # torch's own data.pkl with BUILD (attacker state) applied to the rebuilt tensor
    import pickletools

    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as zf:
        names = {n: zf.read(n) for n in zf.namelist()}
    pkl_name = next(n for n in names if n.endswith("data.pkl"))
    pkl = names[pkl_name]
    i = [pos for op, _, pos in pickletools.genops(pkl) if op.name == "REDUCE"][-1]  # the tensor's rebuild
    names[pkl_name] = pkl[: i + 1] + b"}b" + pkl[i + 1:]  # EMPTY_DICT, BUILD on the array
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as zf:
        for n, data in names.items():
            zf.writestr(n, data)
    with pytest.raises(UnsafeCheckpointError, match="BUILD"):
        read_torch_checkpoint(tmp_path / "bad.pt")


def test_an_out_of_bounds_view_is_refused(tmp_path):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as zf:
        names = {n: zf.read(n) for n in zf.namelist()}
    pkl_name = next(n for n in names if n.endswith("data.pkl"))
    # the size tuple (4,) is pickled as BININT1 4, TUPLE1: make it (400,)
    pkl = names[pkl_name]
    assert pkl.count(b"K\x04\x85") == 1
    names[pkl_name] = pkl.replace(b"K\x04\x85", b"M\x90\x01\x85")
    with zipfile.ZipFile(tmp_path / "bad.pt", "w") as zf:
        for n, data in names.items():
            zf.writestr(n, data)
    with pytest.raises(ValueError, match="past the storage"):
        read_torch_checkpoint(tmp_path / "bad.pt")


def test_legacy_pickles_need_the_opt_in(tmp_path):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="legacy .*--torch-legacy"):
        read_torch_checkpoint(tmp_path / "legacy.pt")
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "legacy.pt", allow_legacy=True)["w"], [0, 1, 2])


def test_plain_pickles_and_junk_are_refused(tmp_path):
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a torch zip checkpoint"):
        read_torch_checkpoint(tmp_path / "plain.pkl")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_torch_checkpoint(tmp_path / "missing.pt")
    with zipfile.ZipFile(tmp_path / "z.pt", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="data.pkl"):
        read_torch_checkpoint(tmp_path / "z.pt")


def test_flat_state_dict_picks_key_and_prefix():
    ckpt = {"state_dict": {"model.a": np.ones(1), "model.b": np.zeros(2), "other.c": np.ones(3)}, "global_step": 0}
    assert list(flat_state_dict(ckpt, source="f", key="state_dict", prefix="model.")) == ["a", "b"]
    with pytest.raises(ValueError, match="no 'ema' entry"):
        flat_state_dict(ckpt, source="f", key="ema")
    with pytest.raises(ValueError, match="'global_step' is a int"):
        flat_state_dict({"global_step": 0}, source="f")


def test_legacy_opt_in_reaches_readers_through_the_context(tmp_path):
    from jaxmia.models.torch_checkpoint import legacy_pickles_allowed

    torch.save({"w": torch.arange(2.0)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with legacy_pickles_allowed():
        np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "legacy.pt")["w"], [0, 1])
    with pytest.raises(ValueError, match="legacy"):
        read_torch_checkpoint(tmp_path / "legacy.pt")


def test_official_format_registry_dispatch_and_option_checks(tmp_path):
    from click.testing import CliRunner

    from jaxmia.cli import main
    from jaxmia.models import official
    from jaxmia.models.torch_checkpoint import read_torch_checkpoint as read

    seen = {}

    @official.register_format("toy_fmt", "a test format", options={"scale": "a number"})
    def convert(src, dst, scale="1"):
        seen.update(src=src, dst=dst, scale=scale, w=read(src)["w"].tolist())
        return {"scale": float(scale)}

    try:
        torch.save({"w": torch.arange(3.0)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
        runner = CliRunner()
        result = runner.invoke(main, ["convert", str(tmp_path / "legacy.pt"), "--to", str(tmp_path / "out"),
                                      "--format", "toy_fmt", "--option", "scale=2.5", "--torch-legacy"])
        assert result.exit_code == 0, result.output
        assert seen["scale"] == "2.5" and seen["w"] == [0.0, 1.0, 2.0] and '"scale": 2.5' in result.output
        result = runner.invoke(main, ["convert", str(tmp_path / "legacy.pt"), "--to", str(tmp_path / "o2"),
                                      "--format", "toy_fmt", "--option", "colour=red"])
        assert result.exit_code == 2 and "unknown option(s) 'colour' (known: scale)" in result.output
        result = runner.invoke(main, ["convert", str(tmp_path / "legacy.pt"), "--to", str(tmp_path / "o3"),
                                      "--format", "toy_fmt"])
        assert result.exit_code == 2 and "legacy" in result.output and "--torch-legacy" in result.output
        result = runner.invoke(main, ["convert", str(tmp_path / "legacy.pt"), "--to", str(tmp_path / "o4"),
                                      "--option", "scale=1"])
        assert result.exit_code == 2 and "--option applies to the official formats" in result.output
    finally:
        official.FORMATS.pop("toy_fmt")
