#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian/Ubuntu machine: system libraries for napari under Xvfb
# (Mesa GL, xcb), a virtual environment in .venv with the CPU build of torch 2.13.0 and the
# plugin with its dev extra. Safe to run again; it skips what is already there.
#
# Every step prints one line saying what it does; downloads show apt's and pip's own progress
# (torch alone is a few hundred MB), so a slow network looks slow, not stuck.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

APT_PACKAGES="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 \
libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 \
libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1"

if ! command -v xvfb-run >/dev/null 2>&1 || ! ldconfig -p | grep -q libxcb-cursor; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  step "apt: updating the package lists"
  $SUDO apt-get update
  step "apt: installing Xvfb and the GL/xcb libraries napari needs"
  # shellcheck disable=SC2086
  $SUDO apt-get install -y --no-install-recommends $APT_PACKAGES
else
  step "system libraries: already installed (xvfb-run, libxcb-cursor found)"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "creating the virtual environment .venv with $PY"
  "$PY" -m venv .venv
else
  step "virtual environment .venv: already there"
fi
if ! .venv/bin/python -c "import torch, napari_dgseg, napari, pytest, distributed" >/dev/null 2>&1; then
  PIP=(.venv/bin/python -m pip install --progress-bar on)
  step "pip: upgrading pip"
  "${PIP[@]}" --upgrade pip
  # The CPU build (an unpinned torch would pull a multi-GB CUDA build).
  step "pip: installing torch 2.13.0, CPU build (a few hundred MB)"
  "${PIP[@]}" "torch==2.13.0"
  step "pip: installing napari-dgseg with its dev extra (napari, Qt, pytest, ...)"
  "${PIP[@]}" -e ".[dev]"
else
  step "python packages: already installed (torch, napari, napari_dgseg, pytest, distributed import)"
fi
step "done: napari-dgseg installed in $(pwd)/.venv"
