#!/usr/bin/env bash
# The CPU demo on the tiny model zoo (README command 1). Sets itself up, then:
#   1. writes a small captioned synthetic video dataset (real mp4 files),
#   2. builds the tiny Wan2.1 zoo (T2V and I2V diffusers pipeline folders, real classes),
#   3. generates a text-to-video clip and an image-to-video clip (from a synthetic clip's first frame).
# Outputs go to outputs/demo/ (override with OUT=...). Later chapters grow this into a finetuning demo.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
OUT=${OUT:-outputs/demo}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
t0=$(date +%s)
python data_scripts/make_synthetic_videos.py --out "$OUT/synthetic" --num_videos 16 --seed 0
videorecipes-zoo --out "$OUT/zoo"
videorecipes-generate --model_path "$OUT/zoo/tiny-wan2.1-t2v-v1" --output_dir "$OUT/t2v" \
  --prompt "a red circle moving right on a blue background" --num_inference_steps 20 --guidance_scale 5
first=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['path'])" "$OUT/synthetic/videos2caption.json")
cap=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['cap'][0])" "$OUT/synthetic/videos2caption.json")
videorecipes-generate --model_path "$OUT/zoo/tiny-wan2.1-i2v-v1" --output_dir "$OUT/i2v" \
  --prompt "$cap" --image "$OUT/synthetic/videos/$first" --num_inference_steps 20 --guidance_scale 5
echo "demo finished in $(( $(date +%s) - t0 ))s (after set-up); videos under $OUT/"
