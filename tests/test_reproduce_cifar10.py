"""docs/reproduce-cifar10.md, every command as written there, on a tiny stand-in in the same formats.

The stand-in: a pytorch-ddpm-format checkpoint (``ckpt.pt`` + ``flagfile.txt``, 32×32×3, one level
of 32 channels; built by ``tests/ddpm_standin.py``), CIFAR-10 binary batches of four records each
and a split ``.npz`` with SecMI's keys. The commands are read from the page (between its ``recipe``
markers), the six paths substituted, and run through the same click entry points; only the sizes
change (``--n``, ``--per-device-batch``; ``--features pia`` in the default suite, so the UNet compiles
once). The scores are checked against a NumPy recomputation from the PyTorch oracle's ε, the metrics
against a NumPy recomputation from the feature table.
"""

import importlib.util
import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from ddpm_standin import eps_oracle, write_checkpoint  # noqa: E402

from jaxmia.cli import main as jaxmia_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reproduce-cifar10.md"
CONFIG = ROOT / "configs" / "experiments" / "cifar10_secmi.toml"
SCRIPT = ROOT / "scripts" / "prepare_cifar10.py"

# One level, attention at 32×32 (plus the mid block's): the fewest ops pytorch-ddpm's flags allow.
TINY = dict(T=1000, ch=32, ch_mult=[1], attn=[0], num_res_blocks=1, dropout=0.1)
RECORDS = 4  # per training batch: 20 training images
MEMBERS = [13, 2, 7, 19, 4, 11]  # the stand-in split; the recipe takes the first N of each
NONMEMBERS = [5, 16, 0, 9, 14, 3]
N = 5
PER_DEVICE = 5  # all ten images in one call on the two fake CPU devices
PATH_VARS = ("CIFAR", "SPLIT", "CKPT", "DATA", "MODEL", "RUN")
STEPS = ("python scripts/prepare_cifar10.py prepare", "jaxmia convert $CKPT", "jaxmia features $MODEL",
         "jaxmia mia --scores", "python scripts/prepare_cifar10.py split-table", "jaxmia cdi --published",
         "jaxmia audit $MODEL")
ALPHA_BAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))  # pytorch-ddpm's linear schedule, float64


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_cifar10", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


PREPARE = _load_script()


# --------------------------------------------------------------------------------------------------
# The recipe, read from the page
# --------------------------------------------------------------------------------------------------


def recipe() -> tuple[list[str], list[str]]:
    """(variables assigned, commands) of the bash blocks between the page's recipe markers."""
    text = DOC.read_text()
    block = text.split("<!-- recipe", 1)[1].split("<!-- /recipe -->", 1)[0]
    assigned, commands = [], []
    for code in re.findall(r"```bash\n(.*?)```", block, re.S):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.strip()
            if not line:
                continue
            name = re.match(r"([A-Z_]+)=", line)
            if name:
                assigned.append(name.group(1))
            else:
                commands.append(" ".join(line.split()))
    return assigned, commands


def _set_option(argv: list, name: str, value: str) -> None:
    if name in argv:
        argv[argv.index(name) + 1] = value


def run_command(command: str, paths: dict, *, features=None) -> str:
    """Runs one recipe command with the stand-in's paths and sizes; returns its output."""
    for name, value in paths.items():
        command = command.replace(f"${name}", str(value))
    assert "$" not in command, f"unsubstituted variable in {command!r}"
    argv = [str(ROOT / a) if a.startswith("configs/") else a for a in shlex.split(command)]  # cwd-independent
    if argv[:2] == ["python", "scripts/prepare_cifar10.py"]:
        entry, argv = PREPARE, argv[2:]
    elif argv[0] == "jaxmia":
        entry, argv = jaxmia_main, argv[1:]
    else:
        raise AssertionError(f"the recipe runs jaxmia or scripts/prepare_cifar10.py only, not {command!r}")
    _set_option(argv, "--n", str(N))
    _set_option(argv, "--per-device-batch", str(PER_DEVICE))
    if features is not None:
        _set_option(argv, "--features", features)
    if argv[0] == "audit":
        argv += ["--batch-size", str(2 * PER_DEVICE), "--quiet"]  # the config's 256 is a GPU batch
    result = CliRunner().invoke(entry, argv)
    assert result.exit_code == 0, f"{' '.join(argv)}\n{result.output}\n{result.exception!r}"
    return result.output


def run_recipe(standin: dict, work: Path, *, features=None, audit=False) -> dict:
    assigned, commands = recipe()
    assert sorted(assigned) == sorted(PATH_VARS)
    assert [" ".join(c.split()[:3]) for c in commands] == list(STEPS)
    paths = dict(CIFAR=standin["cifar"], SPLIT=standin["split"], CKPT=standin["ckpt"]["path"],
                 DATA=work / "data", MODEL=work / "model", RUN=work / "run")
    outputs = {}
    for command in commands:
        if command.startswith("jaxmia audit") and not audit:
            continue
        key = " ".join(command.split()[:3])
        outputs[key] = run_command(command, paths, features=features)
    return dict(paths=paths, outputs=outputs)


# --------------------------------------------------------------------------------------------------
# The stand-in
# --------------------------------------------------------------------------------------------------


def write_batch(path: Path, labels: np.ndarray, images_chw: np.ndarray) -> None:
    """CIFAR-10 binary records: 1 label byte, then the R, G, B planes (32×32 each, row-major)."""
    records = np.concatenate([labels[:, None], images_chw.reshape(len(labels), -1)], axis=1).astype(np.uint8)
    path.write_bytes(records.tobytes())


def write_split(path: Path, members, nonmembers, **extra) -> Path:
    np.savez(path, mia_train_idxs=np.asarray(members, np.int64), mia_eval_idxs=np.asarray(nonmembers, np.int64),
             ratio=np.float64(0.5), **extra)
    return path


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    r = np.random.default_rng(7)
    images = r.integers(0, 256, (5 * RECORDS, 3, 32, 32), dtype=np.uint8)
    labels = r.integers(0, 10, 5 * RECORDS).astype(np.uint8)
    cifar = root / "cifar-10-batches-bin"
    cifar.mkdir()
    for b in range(5):
        rows = slice(b * RECORDS, (b + 1) * RECORDS)
        write_batch(cifar / f"data_batch_{b + 1}.bin", labels[rows], images[rows])
    write_batch(cifar / "test_batch.bin", labels[:RECORDS], images[:RECORDS])  # present, not used
    split = write_split(root / "CIFAR10_train_ratio0.5.npz", MEMBERS, NONMEMBERS)
    ckpt = write_checkpoint(root / "ckpt", hp=TINY, img_size=32)
    return dict(root=root, cifar=cifar, split=split, ckpt=ckpt, images=images, labels=labels)


@pytest.fixture(scope="module")
def done(standin, tmp_path_factory):
    """The recipe (without the audit), features restricted to PIA: one UNet compile."""
    return run_recipe(standin, tmp_path_factory.mktemp("recipe"), features="pia")


# --------------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------------


def expected_pixels(standin, indices) -> np.ndarray:
    hwc = standin["images"][np.asarray(indices)].transpose(0, 2, 3, 1)
    return hwc.astype(np.float32) / 127.5 - 1.0


def oracle_scores(model, x0: np.ndarray, ids, columns=("dl", "secmi", "pia", "pian"), *, seed: int = 0) -> dict:
    """Attack scores from the PyTorch oracle's ε and float64 schedule algebra (docs/methods/mia.md
    §3.1-§3.4 with the settings of docs/reproduce-cifar10.md step 3)."""

    def eps(x, t):
        return eps_oracle(model, np.asarray(x, np.float32), np.full(len(x), t)).astype(np.float64)

    def q(x, t, e):
        return math.sqrt(ALPHA_BAR[t]) * x + math.sqrt(1.0 - ALPHA_BAR[t]) * e

    def ddim(x, e, s, s_to):
        x0_hat = (x - math.sqrt(1.0 - ALPHA_BAR[s]) * e) / math.sqrt(ALPHA_BAR[s])
        return q(x0_hat, s_to, e)

    def total(d, p):
        return (np.abs(d) ** p).reshape(len(d), -1).sum(axis=1)

    x0 = x0.astype(np.float64)
    out = {}
    e0 = eps(x0, 0) if {"secmi", "pia", "pian"} & set(columns) else None
    if "pia" in columns:
        out["pia"] = total(e0 - eps(q(x0, 200, e0), 200), 4)
    if "pian" in columns:
        e0n = e0 * math.sqrt(2.0 / math.pi) / np.abs(e0).reshape(len(e0), -1).mean(axis=1)[:, None, None, None]
        out["pian"] = total(e0n - eps(q(x0, 200, e0n), 200), 4)
    if "secmi" in columns:
        z = ddim(x0, e0, 0, 10)
        for t in range(10, 90, 10):
            z = ddim(z, eps(z, t), t, t + 10)
        up = ddim(z, eps(z, 90), 90, 100)
        out["secmi"] = total(z - ddim(up, eps(up, 100), 100, 90), 2)
    if "dl" in columns:  # one draw keyed by (seed, id, "dl"), repetition 0 (jaxmia.features.loss)
        import jax

        from jaxmia import rng

        noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(rng.sample_key(seed, i, "dl"), 0),
                                                       (32, 32, 3))) for i in ids]).astype(np.float64)
        out["dl"] = total(eps(q(x0, 200, noise), 200) - noise, 2)
    return out


def auc_oracle(raw: np.ndarray, y: np.ndarray) -> float:
    """Mann-Whitney with ties ½ on negated scores (lower raw score = member)."""
    s = -raw
    pos, neg = s[y == 1][:, None], s[y == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def roc_oracle(raw: np.ndarray, y: np.ndarray):
    """(fpr, tpr) at every distinct threshold "member if −score ≥ θ", plus the (0, 0) corner."""
    s = -raw
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y == 1] >= th).mean() for th in thresholds])
    fpr = np.array([(s[y == 0] >= th).mean() for th in thresholds])
    return fpr, tpr


# --------------------------------------------------------------------------------------------------
# The recipe, step by step
# --------------------------------------------------------------------------------------------------


def test_prepared_sets_are_the_written_bytes(standin, done):
    from jaxmia.data import load_dataset

    data = done["paths"]["DATA"]
    assert "note: the split file is not SecMI's" in done["outputs"]["python scripts/prepare_cifar10.py prepare"]
    members = load_dataset(data / "members.npz", image_shape=(32, 32, 3))
    nonmembers = load_dataset(data / "nonmembers.npz", image_shape=(32, 32, 3))
    assert members.ids == [str(i) for i in MEMBERS[:N]] and nonmembers.ids == [str(i) for i in NONMEMBERS[:N]]
    np.testing.assert_array_equal(members.images, expected_pixels(standin, MEMBERS[:N]))
    np.testing.assert_array_equal(nonmembers.images, expected_pixels(standin, NONMEMBERS[:N]))
    # The attacks' ToTensor() then ×2 − 1, up to float32 rounding.
    tensor = standin["images"][MEMBERS[:N]].transpose(0, 2, 3, 1).astype(np.float32) / 255.0 * 2.0 - 1.0
    np.testing.assert_allclose(members.images, tensor, atol=1e-6)
    assert members.cond is None  # the class label is kept aside, never fed as conditioning
    everything = load_dataset(data / "all.npz", image_shape=(32, 32, 3))
    assert everything.ids == members.ids + nonmembers.ids
    with np.load(data / "members.npz", allow_pickle=False) as z:
        assert z["images"].dtype == np.uint8
        np.testing.assert_array_equal(z["train_index"], MEMBERS[:N])
        np.testing.assert_array_equal(z["cifar10_class"], standin["labels"][MEMBERS[:N]])
    labels = json.loads((data / "labels.json").read_text())
    assert labels == {str(i): 1 for i in MEMBERS[:N]} | {str(i): 0 for i in NONMEMBERS[:N]}
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["n_train_images"] == 5 * RECORDS and manifest["n_per_side"] == N
    assert manifest["split_sizes"] == {"mia_train_idxs": 6, "mia_eval_idxs": 6}
    assert manifest["is_secmi_cifar10_split"] is False and manifest["first_members"] == MEMBERS[:N]


def test_converted_weights_give_the_oracle_scores(standin, done):
    """The converted EMA weights reproduce the stand-in's ε: PIA (ε at t = 0 and t = 200) from
    ``jaxmia features`` equals the PyTorch oracle's (EMA versus net weights: test_pytorch_ddpm.py)."""
    from jaxmia.table import load_table

    paths = done["paths"]
    record = json.loads((paths["MODEL"] / "jaxmia_conversion.json").read_text())
    assert record["weights"] == "ema_model" and record["hyperparameters"]["img_size"] == 32
    table = load_table(paths["RUN"] / "features.npz")
    assert table.names == ("pia",) and table.meta["model_digest"] == record["weights_digest"]
    assert table.meta["unet_evals_per_image"]["forward"] == 2
    ids = [str(i) for i in MEMBERS[:2] + NONMEMBERS[:2]]  # four rows keep the PyTorch oracle cheap
    ref = oracle_scores(standin["ckpt"]["ema"], expected_pixels(standin, [int(i) for i in ids]), ids, columns=("pia",))
    np.testing.assert_allclose(table.rows(ids).column("pia"), ref["pia"], rtol=1e-4)


def test_mia_report_matches_a_numpy_recomputation(done):
    from jaxmia.table import load_table

    paths = done["paths"]
    report = json.loads((paths["RUN"] / "mia" / "report.json").read_text())
    table = load_table(paths["RUN"] / "features.npz")
    labels = json.loads((paths["DATA"] / "labels.json").read_text())
    y = np.array([labels[i] for i in table.ids.tolist()])
    assert report["n_members"] == report["n_nonmembers"] == N
    assert list(report["columns"]) == ["pia"]
    m = report["columns"]["pia"]
    raw = table.column("pia")
    assert 0.0 <= m["auc"] <= 1.0 and m["lower_is_member"] is True
    assert m["auc"] == pytest.approx(auc_oracle(raw, y), abs=1e-12)
    fpr, tpr = roc_oracle(raw, y)
    assert m["asr_oracle"] == pytest.approx(((1 + tpr - fpr) / 2).max(), abs=1e-12)
    for x in ("0.01", "0.001"):
        assert m["tpr_at_fpr"][x]["tpr"] == pytest.approx(tpr[fpr <= float(x)].max(), abs=1e-12)
        assert m["tpr_at_fpr"][x]["n_neg"] == N and m["tpr_at_fpr"][x]["few_false_positives"]
    assert Path(report["outputs"]["roc_loglog"]).is_file()


def test_conventions_snippet_runs(done, capsys):
    """The page's snippet (upstream TPR conventions) runs on the recipe's outputs."""
    text = DOC.read_text()
    block = text.split("<!-- conventions", 1)[1].split("<!-- /conventions -->", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", block, re.S)
    line = 'RUN, DATA = "runs/cifar10-secmi", "data/cifar10-secmi"'
    assert line in code
    paths = done["paths"]
    exec(code.replace(line, f"RUN, DATA = {str(paths['RUN'])!r}, {str(paths['DATA'])!r}"), {})
    report = json.loads((paths["RUN"] / "mia" / "report.json").read_text())
    (printed,) = capsys.readouterr().out.strip().splitlines()
    assert printed.startswith(f"pia: AUC {report['columns']['pia']['auc']:.4f}  TPR@1% exact ")
    assert "secmi " in printed and "pia " in printed


def test_split_tables_and_cdi(done):
    from jaxmia.table import load_table

    run = done["paths"]["RUN"]
    full = load_table(run / "features.npz")
    p, u = load_table(run / "features.members.npz"), load_table(run / "features.nonmembers.npz")
    assert p.ids.tolist() == [str(i) for i in MEMBERS[:N]] and u.ids.tolist() == [str(i) for i in NONMEMBERS[:N]]
    np.testing.assert_array_equal(p.values, full.rows(p.ids.tolist()).values)
    assert p.meta["side"] == "members" and p.meta["config"] == full.meta["config"]
    report = json.loads((run / "cdi" / "report.json").read_text())
    v = report["verdict"]
    assert report["features"] == ["pia"] and v["n_p"] == v["n_u"] == N and 0.0 < v["p_value"] <= 1.0
    assert "CDI (hybrid" in done["outputs"]["jaxmia cdi --published"]  # the default test


def test_config_file_matches_the_recipe_flags():
    """configs/experiments/cifar10_secmi.toml and step 3's flags are the same feature config: the
    union of the presets secmi_mia, pia_mia and loss_mia; 14 UNet passes per image, as the page says."""
    from jaxmia.audit.config import load_config, parse_set
    from jaxmia.features import make_config, parse_overrides
    from jaxmia.features.config import PRESETS
    from jaxmia.features.registry import parse_features, plan_columns, plan_cost

    _, commands = recipe()
    (features_cmd,) = [c for c in commands if c.startswith("jaxmia features")]
    argv = shlex.split(features_cmd)
    flags = make_config(argv[argv.index("--preset") + 1],
                        **parse_overrides([argv[i + 1].removeprefix("features.") for i, a in enumerate(argv) if a == "--set"]))
    union = make_config("cdi", **PRESETS["secmi_mia"], **PRESETS["pia_mia"], **PRESETS["loss_mia"])
    cfg = load_config(CONFIG)
    assert cfg.features == flags == union
    assert (cfg.features.secmi_t_cmp, cfg.features.secmi_stride, cfg.features.pia_timestep, cfg.features.pia_p,
            cfg.features.dl_timestep) == (90, 10, 200, 4.0, 200)
    names = parse_features(cfg.audit.features)
    assert cfg.audit.features == argv[argv.index("--features") + 1]
    assert sorted(cfg.audit.mia_attacks) == sorted(plan_columns(names, cfg.features))
    cost = plan_cost(names, cfg.features)
    assert (cost.forward, cost.backward) == (14, 0) and "14 UNet passes per image" in DOC.read_text()
    assert cfg.audit.n is None and cfg.audit.drc_images == 0
    assert load_config(CONFIG, parse_set(["audit.n=1000"])).audit.n == 1000  # the image count is settable


# --------------------------------------------------------------------------------------------------
# Bad inputs: one line naming the file and the culprit
# --------------------------------------------------------------------------------------------------


def _prepare(cifar, split, out) -> str:
    result = CliRunner().invoke(PREPARE, ["prepare", str(cifar), str(split), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare_cifar10: error: "), result.output
    return lines[0]


@pytest.fixture
def copy(standin, tmp_path):
    cifar = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(standin["cifar"], cifar)
    return dict(cifar=cifar, split=standin["split"], tmp=tmp_path)


def test_truncated_batch_refused(copy):
    path = copy["cifar"] / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    msg = _prepare(copy["cifar"], copy["split"], copy["tmp"] / "out")
    assert "data_batch_3.bin" in msg and "not a whole number of 3073-byte CIFAR-10 records" in msg
    assert not (copy["tmp"] / "out").exists()


def test_short_batch_and_bad_label_refused(copy):
    path = copy["cifar"] / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-3073])  # whole records, one fewer: every later index would shift
    msg = _prepare(copy["cifar"], copy["split"], copy["tmp"] / "out")
    assert "data_batch_2.bin: 3 records, but data_batch_1.bin has 4" in msg
    raw = bytearray((copy["cifar"] / "data_batch_1.bin").read_bytes())
    raw[3073] = 12  # label byte of record 1
    path.write_bytes(bytes(raw))
    msg = _prepare(copy["cifar"], copy["split"], copy["tmp"] / "out")
    assert "data_batch_2.bin: record 1 has label byte 12" in msg


def test_missing_files_refused(copy):
    msg = _prepare(copy["cifar"], copy["tmp"] / "nope.npz", copy["tmp"] / "out")
    assert "nope.npz: split file not found" in msg
    (copy["cifar"] / "data_batch_5.bin").unlink()
    msg = _prepare(copy["cifar"], copy["split"], copy["tmp"] / "out")
    assert "data_batch_5.bin: CIFAR-10 binary training batch not found" in msg


def test_bad_splits_refused(copy):
    tmp = copy["tmp"]
    msg = _prepare(copy["cifar"], write_split(tmp / "range.npz", [1, 2, 20], [3, 4]), tmp / "out")
    assert "range.npz: 'mia_train_idxs' holds index 20, outside the training set (indices 0..19)" in msg
    msg = _prepare(copy["cifar"], write_split(tmp / "overlap.npz", [1, 2, 3], [3, 4]), tmp / "out")
    assert "overlap.npz: 1 index(es) are both members (mia_train_idxs) and non-members (mia_eval_idxs), e.g. 3" in msg
    np.savez(tmp / "keys.npz", members=np.arange(3), nonmembers=np.arange(3, 6))
    msg = _prepare(copy["cifar"], tmp / "keys.npz", tmp / "out")
    assert "keys.npz: missing array 'mia_train_idxs' (has members, nonmembers)" in msg
    np.savez(tmp / "pickled.npz", mia_train_idxs=np.array([1, "a"], dtype=object), mia_eval_idxs=np.arange(2))
    msg = _prepare(copy["cifar"], tmp / "pickled.npz", tmp / "out")
    assert "pickled.npz: holds pickled objects" in msg
    msg = _prepare(copy["cifar"], write_split(tmp / "dup.npz", [1, 2, 1], [3]), tmp / "out")
    assert "dup.npz: 'mia_train_idxs' lists index 1 2 times" in msg


def test_outputs_not_overwritten_and_parent_folder_accepted(copy):
    out = copy["tmp"] / "out"
    result = CliRunner().invoke(PREPARE, ["prepare", str(copy["tmp"]), str(copy["split"]), "--out", str(out),
                                          "--n", "2"])  # the folder holding cifar-10-batches-bin
    assert result.exit_code == 0, result.output
    assert json.loads((out / "labels.json").read_text()) == {"13": 1, "2": 1, "5": 0, "16": 0}
    msg = _prepare(copy["cifar"], copy["split"], out)
    assert "members.npz: exists already" in msg
    result = CliRunner().invoke(PREPARE, ["prepare", str(copy["cifar"]), str(copy["split"]), "--out", str(out),
                                          "--n", "7", "--overwrite"])
    assert result.exit_code == 2 and "holds 6 indices, fewer than n = 7" in result.output


def test_split_table_refuses_unknown_ids(done, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"13": 1, "999": 0}))
    result = CliRunner().invoke(PREPARE, ["split-table", str(done["paths"]["RUN"] / "features.npz"),
                                          "--labels", str(labels), "--members", str(tmp_path / "m.npz"),
                                          "--nonmembers", str(tmp_path / "u.npz")])
    assert result.exit_code == 2
    assert "features.npz: labelled id '999' is not in the table (1 of 2 labelled ids missing)" in result.output


# --------------------------------------------------------------------------------------------------
# The whole recipe, all four attacks and the audit (seven UNet call sites to compile: -m slow)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_recipe_with_audit(standin, tmp_path):
    from jaxmia.table import load_table

    done = run_recipe(standin, tmp_path, audit=True)
    run = done["paths"]["RUN"]
    table = load_table(run / "features.npz")
    assert table.names == ("dl", "secmi", "pia", "pian")
    x0 = expected_pixels(standin, [int(i) for i in table.ids])
    ref = oracle_scores(standin["ckpt"]["ema"], x0, table.ids.tolist())
    for name in table.names:
        np.testing.assert_allclose(table.column(name), ref[name], rtol=1e-4, err_msg=name)  # measured: <= 1.3e-5
    mia = json.loads((run / "mia" / "report.json").read_text())
    labels = json.loads((done["paths"]["DATA"] / "labels.json").read_text())
    y = np.array([labels[i] for i in table.ids.tolist()])
    for name in table.names:
        assert mia["columns"][name]["auc"] == pytest.approx(auc_oracle(table.column(name), y), abs=1e-12)
    audit = json.loads((run / "audit" / "report.json").read_text())
    assert audit["features"] == ["dl", "secmi", "pia", "pian"] and audit["verdict"]["n_p"] == N
    assert sorted(audit["mia_context"]) == ["dl", "pia", "pian", "secmi"]
    for name in table.names:  # P = members, U = non-members: the same AUCs as step 4
        assert audit["mia_context"][name]["auc"] == pytest.approx(mia["columns"][name]["auc"], abs=1e-9)
