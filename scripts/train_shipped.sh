#!/usr/bin/env bash
# Retrain every shipped model with the generalization recipe (docs/generalization.md).
# Usage: bash scripts/train_shipped.sh [nuclei|vessels|all|hovernet|ram-sgcg] [DATA_DIR]
#   (CPU: about 1.5 h in all; hovernet / ram-sgcg train only the default model of a task)
# Environment: SEED (default 0; the shipped bundles use 0) and OUT (default the shipped bundle
# folder) train replicates elsewhere, e.g. SEED=100 OUT=out/seeds/100 for the training-seed
# spread in docs/generalization.md.
# The recipe was chosen by benchmarks/recipe_selection.py on the training renderer only.
set -euo pipefail
what="${1:-all}"
data="${2:-out/ship-data}"
dgseg="${DGSEG:-dgseg}"
out="${OUT:-src/napari_dgseg/bundles}"
seed="${SEED:-0}"
threads="${THREADS:-1}"
export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
mkdir -p "$out"

make_data() {
  local i=0
  for d in clean pale-scanner dark-stain blurry-jpeg warm-scanner; do
    i=$((i + 1))
    [ -d "$data/nuclei/$d" ] || "$dgseg" synth nuclei --domain "$d" --n 32 --size 256 --seed $((1000 * i)) --out "$data/nuclei/$d" >/dev/null
  done
  i=0
  for d in camera-a camera-b camera-c handheld; do
    i=$((i + 1))
    [ -d "$data/vessels/$d" ] || "$dgseg" synth vessels --domain "$d" --n 12 --size 384 --seed $((1000 * i)) --out "$data/vessels/$d" >/dev/null
  done
  [ -d "$data/val-nuclei" ] || "$dgseg" synth nuclei --domain clean --n 8 --seed 777 --out "$data/val-nuclei" >/dev/null
  [ -d "$data/val-vessels" ] || "$dgseg" synth vessels --domain camera-a --n 4 --size 384 --seed 777 --out "$data/val-vessels" >/dev/null
}

# fundus recipe and schedule chosen by benchmarks/recipe_selection.py --task vessels (docs/generalization.md)
vessel_common=(--val "$data/val-vessels" --overwrite --quiet --size 128 --batch 4 --seed "$seed"
               --features rgb+vessel --augment fundus --scale-range 0.7 1.4)
nuclei_common=(--val "$data/val-nuclei" --overwrite --quiet --batch 4
               --features "${FEATURES:-rgb+stain}" --augment stain --scale-range 0.7 1.4 --pixel-size 0.25)

ram_sgcg() {
  "$dgseg" train ram-sgcg --source "$data"/vessels/* --out "$out/vessels-ram-sgcg.dgseg" "${vessel_common[@]}" \
    --iters 3600 --config '{"widths": [8, 16, 32, 64]}'
}

hovernet() {
  # 900 iterations, then 600 more warm-started at a lower rate (next seed); the second stage
  # was kept because it scored higher on every training-renderer validation domain. The third
  # stage (1800 more at the lower rate, seed + 3) was chosen on selection tiles by a rule fixed
  # before the run (docs/generalization.md "A longer schedule for nuclei-hovernet").
  "$dgseg" train hovernet --source "$data"/nuclei/* --out "$out/nuclei-hovernet.dgseg" "${nuclei_common[@]}" \
    --iters 900 --size 160 --lr 1e-3 --seed "$seed" --config '{"widths": [16, 32, 64, 128]}'
  "$dgseg" train hovernet --source "$data"/nuclei/* --out "$out/nuclei-hovernet.dgseg" "${nuclei_common[@]}" \
    --iters 600 --size 160 --lr 3e-4 --seed $((seed + 1)) --config '{"widths": [16, 32, 64, 128]}' \
    --init "$out/nuclei-hovernet.dgseg"
  "$dgseg" train hovernet --source "$data"/nuclei/* --out "$out/nuclei-hovernet.dgseg" "${nuclei_common[@]}" \
    --iters 1800 --size 160 --lr 3e-4 --seed $((seed + 3)) --config '{"widths": [16, 32, 64, 128]}' \
    --init "$out/nuclei-hovernet.dgseg"
}

vessels() {
  ram_sgcg &
  "$dgseg" train sqvae --source "$data"/vessels/* --out "$out/vessels-sqvae.dgseg" "${vessel_common[@]}" \
    --iters 800 --lr 2e-3 --config '{"widths": [16, 32, 64, 128], "latent_channels": 16, "codebook_size": 64}' &
  wait
}

nuclei() {
  hovernet &
  "$dgseg" train unet --source "$data"/nuclei/* --out "$out/nuclei-unet.dgseg" "${nuclei_common[@]}" \
    --seed "$seed" --iters 900 --size 192 --lr 2e-3 --config '{"widths": [16, 32, 64, 128]}' &
  "$dgseg" train unet --cqg --source "$data"/nuclei/* --out "$out/nuclei-unet-cqg.dgseg" "${nuclei_common[@]}" \
    --seed "$seed" --iters 600 --size 192 --lr 2e-3 --config '{"widths": [16, 32, 64, 128]}' &
  "$dgseg" train sqvae --source "$data"/nuclei/* --out "$out/nuclei-sqvae.dgseg" "${nuclei_common[@]}" \
    --seed "$seed" --iters 500 --size 160 --lr 2e-3 \
    --config '{"widths": [16, 32, 64, 128], "latent_channels": 16, "codebook_size": 64}' &
  wait
}

make_data
case "$what" in
  vessels) vessels ;;
  nuclei) nuclei ;;
  all) vessels; nuclei ;;
  hovernet) hovernet ;;
  ram-sgcg) ram_sgcg ;;
  *) echo "usage: bash scripts/train_shipped.sh [nuclei|vessels|all|hovernet|ram-sgcg] [DATA_DIR]" >&2; exit 2 ;;
esac
