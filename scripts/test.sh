#!/usr/bin/env bash
# Run the test suite (installs first if needed). GUI tests run under Xvfb with Mesa GL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export QT_QPA_PLATFORM=xcb
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python -m pytest -q "$@"
