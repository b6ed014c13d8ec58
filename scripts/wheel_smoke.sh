#!/usr/bin/env bash
# Build a wheel, install it into a fresh virtual environment (no editable install, no source tree on
# the path) and run jaxmia from there: what ships in the wheel is all the package can read at run
# time (model families, experiment configs, the demo and RGB targets).
#
#   bash scripts/wheel_smoke.sh [WORKDIR]      # WORKDIR defaults to a new temporary folder
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
python3 -m pip wheel -q --no-deps --wheel-dir "$work/dist" "$repo"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$work"/dist/jaxmia-*.whl
cd "$work"  # not the repository: nothing may come from the source tree
"$work/venv/bin/python" - "$work" <<'PY'
import sys
from pathlib import Path

import jaxmia
from jaxmia.audit.demo import demo_config
from jaxmia.models import list_families, load_denoiser, load_family

venv = Path(sys.argv[1]) / "venv"
assert venv in Path(jaxmia.__file__).resolve().parents, f"jaxmia imported from {jaxmia.__file__}, not the wheel"
families = list_families()
assert {"ddpm_pixel", "dit", "ldm", "sd", "uvit", "uvit_t2i"} <= set(families), families
for name in families:
    load_family(name)
cfg = demo_config()
assert cfg.audit.n == 100, cfg.audit
den = load_denoiser("demo", family="ddpm_pixel")
from jaxmia.data import load_dataset
rgb = load_denoiser("rgb", family="ddpm_pixel")
assert rgb.sample_shape == (32, 32, 3) and demo_config(target="rgb").audit.n == 32
assert load_dataset("rgb:members", image_shape=rgb.input_shape).images.shape == (32, 32, 32, 3)
print(f"wheel smoke: jaxmia {jaxmia.__version__} from {Path(jaxmia.__file__).parent}; families {', '.join(families)}; "
      f"demo config n = {cfg.audit.n}; demo target {den.sample_shape}; rgb target {rgb.sample_shape}")
PY
"$work/venv/bin/jaxmia" inspect demo --family ddpm_pixel
"$work/venv/bin/python" -c "import jaxmia.data as d; ids, x, _ = d.digits(8); d.write_npz('few.npz', ids[:6], x[:6])"
"$work/venv/bin/jaxmia" features demo few.npz --features loss --out few_loss.npz
echo "wheel smoke: OK"
