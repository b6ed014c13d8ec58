"""scripts/device_check.sh: the accelerator check, ready to run; its --dry-run runs every piece on this CPU."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.sh"


def _run(*args, timeout=300):
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_arguments_are_checked():
    done = _run()
    assert done.returncode == 2 and "--out DIR is required" in done.stderr
    done = _run("--out", "/tmp/x", "--bogus")
    assert done.returncode == 2 and "unknown argument --bogus" in done.stderr


def test_dry_run_runs_every_piece_and_writes_the_rows(tmp_path):
    done = _run("--dry-run", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    steps = ("parity_collect", "tiny_unet_f32", "tiny_dit_bf16", "torch_cifar_shape")
    assert all(f"OK    {s}" in summary for s in steps), summary
    assert "device: cpu" in summary
    rows = (tmp_path / "out" / "benchmark_rows.md").read_text().splitlines()
    assert rows[0].startswith("| device | model | dtype |")
    cpu = [r for r in rows if r.startswith("| cpu |")]
    assert len(cpu) == 2 and "tiny-unet [loss,noise_opt]" in cpu[0] and "bfloat16" in cpu[1]
    cells = [c.strip() for c in cpu[0].strip("|").split("|")]
    assert float(cells[5].replace(",", "")) > 0 and cells[9].endswith("%")  # forward img/s, of bound
    assert "test_dit_parity.py" in (tmp_path / "out" / "logs" / "parity_collect.log").read_text()
