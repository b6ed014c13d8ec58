"""jaxmia.config: the one config parser (hint-driven from_mapping, to_mapping, --set) and its users."""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Any, Literal, Mapping, Optional

import numpy as np
import pytest
from click.testing import CliRunner

from jaxmia import config as C
from jaxmia.cli import main


@dataclasses.dataclass(frozen=True)
class Inner:
    width: int
    scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Outer:
    flag: bool = False
    count: int = 3
    rate: float = 0.5
    name: str = "x"
    maybe: Optional[int] = None
    either: int | tuple[int, ...] = 1
    steps: tuple[int, ...] = (0, 100)
    pair: tuple[int, str] = (1, "a")
    mode: Literal["fast", "exact"] = "fast"
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    anything: Any = None
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(width=2))


def test_from_mapping_follows_each_hint():
    cfg = C.from_mapping(Outer, {
        "flag": True, "count": np.int64(7), "rate": 2, "name": "y", "maybe": 4, "either": [1, 2], "steps": [5],
        "pair": [2, "b"], "mode": "exact", "weights": {"a": 1}, "anything": [1, "z"], "inner": {"width": 8}})
    assert cfg == Outer(True, 7, 2.0, "y", 4, (1, 2), (5,), (2, "b"), "exact", {"a": 1.0}, [1, "z"], Inner(8, 1.0))
    assert type(cfg.count) is int and type(cfg.rate) is float and type(cfg.weights["a"]) is float
    assert C.from_mapping(Outer, {"either": 3, "steps": 9}).either == 3  # int arm first; a lone value is a 1-tuple
    assert C.from_mapping(Outer, {"steps": 9}).steps == (9,)
    refusals = [
        ({"flag": 1}, "flag=1 must be a bool"),
        ({"count": True}, "count=True must be an integer"),
        ({"count": "5"}, "count='5' must be an integer"),
        ({"rate": "0.5"}, "rate='0.5' must be a number"),
        ({"name": 3}, "name=3 must be a string"),
        ({"maybe": 1.5}, "maybe=1.5 must be an integer or null"),
        ({"steps": ["a"]}, r"steps=\['a'\] must be a list \(each an integer\)"),
        ({"pair": [1, "a", 3]}, r"pair=\[1, 'a', 3\] must be a list of 2"),
        ({"mode": "slow"}, "mode='slow' must be one of 'fast', 'exact'"),
        ({"weights": [1]}, "weights=.* must be a table"),
        ({"inner": {}}, "missing key.*'inner.width'"),
        ({"inner": {"width": 1, "wdith": 2}}, r"unknown key\(s\) 'inner.wdith' \(did you mean 'inner.width'\?\)"),
    ]
    for values, message in refusals:
        with pytest.raises(ValueError, match=f"^cfg.toml: {message}"):
            C.from_mapping(Outer, values, source="cfg.toml")


def test_unknown_key_names_source_and_close_matches():
    with pytest.raises(ValueError) as err:
        C.from_mapping(Outer, {"cuont": 1, "zzz": 2}, source="run.toml", what="test config", prefix="sec.")
    text = str(err.value)
    assert text.startswith("run.toml: unknown test config key(s) 'sec.cuont' (did you mean 'sec.count'?), 'sec.zzz';")
    assert "known: anything, count, either, flag" in text
    with pytest.raises(ValueError, match="must be a table"):
        C.from_mapping(Outer, [1], source="x")


def test_round_trip_and_one_json_form(tmp_path):
    cfg = Outer(flag=True, steps=(1, 2), weights={"b": 2.0, "a": 1.0}, inner=Inner(4, 0.25))
    data = C.to_mapping(cfg)
    assert data["steps"] == [1, 2] and data["inner"] == {"width": 4, "scale": 0.25}
    assert C.from_mapping(Outer, json.loads(json.dumps(data))) == cfg
    path = C.write_config_json({"outer": cfg}, tmp_path / "sub" / "config.json")
    text = path.read_text()
    assert json.loads(text) == {"outer": data} and text.endswith("}\n")
    keys = list(json.loads(text)["outer"])
    assert keys == sorted(keys)  # sorted keys: one form, whatever the field order
    assert not list(path.parent.glob("*.tmp"))


def test_parse_set_and_apply_overrides():
    nested = C.parse_set(["sec.count=5", "sec.steps=0,500", "sec.name=a,b", "sec.maybe=null", "sec.inner.scale=2",
                          "sec.flag=true", "sec.rate=1e-3", 'sec.anything=[1, "x"]'])
    values = nested["sec"]
    assert all(isinstance(v, C.Text) for k, v in values.items() if k != "inner")
    cfg = C.apply_overrides(Outer(), values, prefix="sec.")
    assert (cfg.count, cfg.steps, cfg.name, cfg.maybe, cfg.inner, cfg.flag, cfg.rate, cfg.anything) == (
        5, (0, 500), "a,b", None, Inner(2, 2.0), True, 0.001, [1, "x"])
    assert C.apply_overrides(Outer(), C.parse_set(["s.steps=7"])["s"]).steps == (7,)
    assert C.apply_overrides(Outer(), C.parse_set(["s.either=4,5"])["s"]).either == (4, 5)
    with pytest.raises(ValueError, match=r"--set: sec.flag='maybe' must be a bool"):
        C.apply_overrides(Outer(), C.parse_set(["sec.flag=maybe"])["sec"], prefix="sec.")
    for bad in ("count=5", "sec.count", ".count=1", "sec..x=1"):
        with pytest.raises(ValueError, match="expected SECTION.FIELD=VALUE"):
            C.parse_set([bad])
    with pytest.raises(ValueError, match=r"unknown section key\(s\) 'cdj' \(did you mean 'cdi'\?\)"):
        C.parse_set(["cdj.alpha=0.1"], sections=("cdi", "drc"))
    assert [C.parse_value(t) for t in ("200", "0.3", "TRUE", "none", '"a,b"', "text")] == [200, 0.3, True, None, "a,b",
                                                                                          "text"]


# ---- every config class of jaxmia ------------------------------------------------------------------------


def _registered_configs():
    from jaxmia.audit.config import AuditSettings
    from jaxmia.drc import DRCConfig
    from jaxmia.features import FeatureConfig, make_config
    from jaxmia.inference import CdiConfig, MiaConfig
    from jaxmia.models.class_token import ClassTokenUNetConfig
    from jaxmia.models.clip_text import CLIPTextConfig
    from jaxmia.models.clip_vision import CLIPVisionConfig
    from jaxmia.models.dit import DiTConfig
    from jaxmia.models.dit_official import DiTOfficialConfig
    from jaxmia.models.unet2d import UNet2DConfig
    from jaxmia.models.unet2d_condition import UNet2DConditionConfig
    from jaxmia.models.uvit import UViTConfig, UViTT2IConfig
    from jaxmia.models.vae import AutoencoderKLConfig, VQModelConfig

    return [FeatureConfig(), make_config("cdi_reference"), DRCConfig(), DRCConfig(kinds=("rect",), n_masks=2),
            CdiConfig(), CdiConfig(features=("pia", "dl"), curve_grid=(10, 20)), MiaConfig(), AuditSettings(),
            UNet2DConfig(), UNet2DConditionConfig(), AutoencoderKLConfig(), VQModelConfig(), DiTConfig(),
            DiTOfficialConfig(), UViTConfig(), UViTT2IConfig(), CLIPTextConfig(), CLIPVisionConfig(),
            ClassTokenUNetConfig(num_classes=3, unet=UNet2DConditionConfig(), null_class=2)]


@pytest.mark.parametrize("cfg", _registered_configs(), ids=lambda c: type(c).__name__)
def test_every_config_class_parses_its_own_mapping(cfg):
    data = json.loads(C.config_json(cfg))
    assert C.from_mapping(type(cfg), data, source="round trip") == cfg
    hash(cfg)  # frozen and hashable: a static jit argument
    with pytest.raises(ValueError, match="unknown .*key"):
        C.from_mapping(type(cfg), {**data, "not_a_field": 1})


def test_model_families_and_audit_config_round_trip():
    from jaxmia.audit.config import AuditConfig, build_config
    from jaxmia.models import families

    for name in families.list_families():
        family = families.load_family(name)
        data = {k: v for k, v in json.loads(C.config_json(family)).items() if k != "path"}
        assert families.parse_family(data, source=family.path) == family
    cfg = build_config({"features": {"preset": "secmi_mia"}, "drc": {"steps": 3}})
    assert build_config(json.loads(json.dumps(cfg.to_dict()))) == cfg and cfg.features.secmi_t_cmp == 90
    assert AuditConfig().to_dict()["features"]["preset"] == "cdi"


# ---- --set on every command ---------------------------------------------------------------------------------


def _fake_run(captured):
    def run(denoiser, dataset, features, *, config, **kw):
        captured["config"] = config
        table = types.SimpleNamespace(ids=["a"], names=["dl"], meta={"throughput": {"images_per_s": None},
                                                                     "unet_evals_per_image": {"forward": 1, "backward": 0}})
        return types.SimpleNamespace(table=table, shard=None, reused=False, merged=None)
    return run


@pytest.fixture
def no_model(monkeypatch):
    import jaxmia.cli as cli
    import jaxmia.data
    import jaxmia.models

    monkeypatch.setattr(jaxmia.models, "load_denoiser", lambda path, **kw: types.SimpleNamespace(input_shape=(8, 8, 1)))
    monkeypatch.setattr(jaxmia.data, "load_dataset", lambda spec, image_shape=None: "data")
    monkeypatch.setattr(cli, "caption_dataset", lambda model, denoiser, dataset, *a: dataset)


def test_features_command_set_and_legacy_set(no_model, monkeypatch, tmp_path):
    import jaxmia.distributed
    from jaxmia.features import make_config

    captured = {}
    monkeypatch.setattr(jaxmia.distributed, "extract_sharded", _fake_run(captured))
    out = tmp_path / "f.npz"
    res = CliRunner().invoke(main, ["features", "m", "d", "--out", str(out), "--preset", "secmi_mia",
                                    "--set", "features.ml_timesteps=0,500", "--set", "dl_n_draws=2"])
    assert res.exit_code == 0, res.output
    expected = make_config("secmi_mia", ml_timesteps=(0, 500), dl_n_draws=2)
    assert captured["config"] == expected
    assert "--set dl_n_draws=2 is deprecated; write --set features.dl_n_draws=2" in res.output
    written = json.loads((tmp_path / "f.npz.config.json").read_text())
    assert written == {"features": {"preset": "secmi_mia", **expected.to_dict()}}
    res = CliRunner().invoke(main, ["features", "m", "d", "--out", str(out), "--set", "features.preset=pia_mia"])
    assert res.exit_code == 0 and captured["config"] == make_config("pia_mia")
    bad = CliRunner().invoke(main, ["features", "m", "d", "--out", str(out), "--set", "features.no_mdoe=reference"])
    assert bad.exit_code == 2 and "'features.no_mdoe' (did you mean 'features.no_mode'?)" in bad.output


def test_drc_command_set(no_model, monkeypatch, tmp_path):
    import jaxmia.drc
    from jaxmia.drc import DRCConfig

    captured = {}

    def run_drc(denoiser, dataset, cfg, out_dir, **kw):
        captured["cfg"] = cfg
        return {"n_images": 1, "columns": [], "network_calls_per_image": 1, "seconds": 0.0, "table": "t",
                "summary": None, "evidence": []}

    monkeypatch.setattr(jaxmia.drc, "run_drc", run_drc)
    res = CliRunner().invoke(main, ["drc", "m", "d", "--out", str(tmp_path), "--set", "drc.strength=0.3",
                                    "--set", "drc.ratios=0.25", "--steps", "4", "--set", "drc.steps=9",
                                    "--kinds", "center,rect"])
    assert res.exit_code == 0, res.output
    expected = DRCConfig(strength=0.3, ratios=(0.25,), steps=4, kinds=("center", "rect"))  # the flag wins
    assert captured["cfg"] == expected
    assert json.loads((tmp_path / "config.json").read_text()) == {"drc": expected.to_dict()}
    bad = CliRunner().invoke(main, ["drc", "m", "d", "--out", str(tmp_path), "--set", "cdi.alpha=0.1"])
    assert bad.exit_code == 2 and "unknown section key(s) 'cdi'" in bad.output


def test_cdi_and_mia_commands_set(rng, tmp_path):
    from jaxmia.inference import CdiConfig
    from jaxmia.table import FeatureTable, save_table

    shift = np.r_[np.ones(30), np.zeros(30)][:, None]
    values = rng.normal(size=(60, 2)) + shift
    ids = [f"i{k:02d}" for k in range(60)]
    save_table(FeatureTable(np.array(ids[:30]), ("a", "b"), values[:30], {}), tmp_path / "p.npz")
    save_table(FeatureTable(np.array(ids[30:]), ("a", "b"), values[30:], {}), tmp_path / "u.npz")
    out = tmp_path / "cdi"
    res = CliRunner().invoke(main, ["cdi", "--published", str(tmp_path / "p.npz"), "--unpublished",
                                    str(tmp_path / "u.npz"), "--out", str(out), "--set", "cdi.permutations=49",
                                    "--set", "cdi.curve=false", "--set", "cdi.test=permutation", "--alpha", "0.05"])
    assert res.exit_code == 0, res.output
    expected = CdiConfig(permutations=49, curve=False, test="permutation", alpha=0.05)
    assert json.loads((out / "config.json").read_text()) == {"cdi": expected.to_dict()}
    report = json.loads((out / "report.json").read_text())
    assert report["config"] == expected.to_dict()
    # B = 49 swaps: the permutation p is (1 + #{T_perm >= T_obs}) / 50, a multiple of 1/50.
    assert report["verdict"]["p_value"] * 50 == pytest.approx(round(report["verdict"]["p_value"] * 50))

    labels = {i: int(k < 30) for k, i in enumerate(ids)}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    save_table(FeatureTable(np.array(ids), ("a", "b"), values, {}), tmp_path / "s.npz")
    mout = tmp_path / "mia"
    res = CliRunner().invoke(main, ["mia", "--scores", str(tmp_path / "s.npz"), "--labels", str(tmp_path / "labels.json"),
                                    "--out", str(mout), "--set", "mia.columns=a", "--set", "mia.fpr_targets=0.1",
                                    "--higher-is-member", "a"])
    assert res.exit_code == 0, res.output
    report = json.loads((mout / "report.json").read_text())
    assert list(report["columns"]) == ["a"] and list(report["columns"]["a"]["tpr_at_fpr"]) == ["0.1"]
    auc = np.mean([x > y for x in values[:30, 0] for y in values[30:, 0]])  # no ties in continuous draws
    assert report["columns"]["a"]["auc"] == pytest.approx(auc)
    assert json.loads((mout / "config.json").read_text()) == {
        "mia": {"columns": ["a"], "fpr_targets": [0.1], "higher_is_member": ["a"], "lower_is_member": []}}


def test_audit_and_demo_commands_set(monkeypatch, tmp_path):
    import jaxmia.audit
    import jaxmia.audit.demo

    captured = {}
    report = {"verdict": {"p_value": 0.5, "method": "hybrid", "n_p": 5}, "outputs": {"html": "r.html"}}

    def run_audit(model, p, u, out, cfg, quiet=False):
        captured["audit"] = cfg
        return report

    def run_demo(out, cfg, quiet=False, target="demo"):
        captured["demo"], captured["target"] = cfg, target
        return {"guilty": report, "innocent": report}

    monkeypatch.setattr(jaxmia.audit, "run_audit", run_audit)
    monkeypatch.setattr(jaxmia.audit.demo, "run_demo", run_demo)
    res = CliRunner().invoke(main, ["audit", "m", "-p", "p", "-u", "u", "--out", str(tmp_path), "--n", "20",
                                    "--set", "audit.n=50", "--set", "drc.ratios=0.2,0.3", "--set", "features.preset=loss_mia",
                                    "--set", "audit.features=loss,secmi", "--set", "cdi.alpha=0.05"])
    assert res.exit_code == 0, res.output
    cfg = captured["audit"]
    assert (cfg.audit.n, cfg.drc.ratios, cfg.features.dl_norm, cfg.audit.features, cfg.cdi.alpha) == (
        20, (0.2, 0.3), "squared_l2", "loss,secmi", 0.05)
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--set", "audit.null_splits=7"])
    assert res.exit_code == 0, res.output
    assert captured["demo"].audit.null_splits == 7 and captured["target"] == "demo"
    # a signal's own section under [features] (the registry's drc section), on the RGB target's config
    res = CliRunner().invoke(main, ["demo", "--target", "rgb", "--out", str(tmp_path), "--set", "features.drc.steps=3",
                                    "--set", "features.drc.ratios=0.25"])
    assert res.exit_code == 0, res.output
    drc = captured["demo"].features.section("drc")
    assert captured["target"] == "rgb" and (drc.steps, drc.ratios) == (3, (0.25,))
    assert captured["demo"].to_dict()["features"]["drc"]["steps"] == 3
    bad = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--set", "audit.null_split=7"])
    assert bad.exit_code == 2 and "demo.toml + overrides: unknown key(s) 'audit.null_split' (did you mean 'audit.null_splits'" in bad.output
