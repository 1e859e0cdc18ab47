#!/usr/bin/env bash
# The main job: napari with the plugin, a sample slide and the shipped default model, segmented.
# With a display it opens the viewer; without one (or with --headless) it runs under Xvfb and
# writes the masks, a summary and a screenshot to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if [ -n "${DISPLAY:-}" ] && [[ " $* " != *" --headless "* ]]; then
  exec .venv/bin/dgseg demo "$@"
fi
exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/dgseg demo --headless "$@"
