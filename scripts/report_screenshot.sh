#!/usr/bin/env bash
# Renders an audit's report.html to a PNG with headless Chromium, to look at the page as a reader would.
#   usage: scripts/report_screenshot.sh [REPORT_HTML] [OUT_PNG] [WIDTHxHEIGHT]
#   REPORT_HTML: default runs/screenshot/report.html, produced first (a small audit of the bundled
#     demo target, DRC on) when it does not exist.
#   needs: chromium (Debian: apt-get install -y chromium). Nothing is fetched: the page is self-contained
#   and every network feature of the browser is off.
set -euo pipefail
html=${1:-runs/screenshot/report.html}
png=${2:-/tmp/r.png}
size=${3:-1200,3000}
if [[ ! -f "$html" ]]; then
  out=$(dirname "$html")
  # the demo's config (DRC on: 3 images per side, centre and patch masks), made small enough for a 2-core CPU
  config=$(python -c "from jaxmia.audit.demo import DEMO_CONFIG; print(DEMO_CONFIG)")
  jaxmia audit demo -p demo:members -u demo:nonmembers --out "$out" --quiet --config "$config" \
    --n 40 --set audit.null_splits=40 --set 'audit.sensitivity=blur:0.6' --set audit.sensitivity_images=20 \
    --set cdi.permutations=199 --set cdi.curve_reps=50 --set drc.steps=8
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
  echo "report_screenshot.sh: no chromium on PATH (Debian: apt-get install -y chromium)" >&2
  exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$png" --window-size="$size" \
  "file://$(realpath "$html")" 2>/dev/null
echo "screenshot: $png ($size) of $html"
