#!/usr/bin/env bash
# Preprocess videos into latent shards for text-to-video training: the VAE and the text encoder run here, once,
# so that training never loads them (nbs/11_data.preprocess.ipynb explains the format).
#
# Defaults: the CPU demo, 16 synthetic clips through the tiny Wan2.1 T2V zoo at 17 frames of 64x64.
#   bash launchers/preprocess_t2v.sh
# A real model on 8 GPUs (one process per GPU, each writing its own shards; rerun the same command to resume):
#   MODEL_PATH=Wan-AI/Wan2.1-T2V-1.3B-Diffusers DATA=data/mine NUM_GPUS=8 NUM_FRAMES=81 HEIGHT=480 WIDTH=832 \
#     bash launchers/preprocess_t2v.sh --preprocess_video_batch_size 4
# DATA is a merged folder (videos/ + videos2caption.json; data_scripts/videos2caption.py writes the JSON);
# set DATASET_PATH instead for a Hugging Face dataset (local folder or hub name; add --hf_video_column/--hf_caption_column).
# Extra arguments are passed to `videorecipes-data preprocess` (any flag of the preprocess, data, training or model groups).
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
KIND=${KIND:-t2v}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=${OUT:-outputs/data/$KIND}
NUM_GPUS=${NUM_GPUS:-1}
flags=()
if [ -z "${MODEL_PATH:-}" ]; then            # the tiny zoo (built on first use; TINY_KIND, default KIND) at its own size
  MODEL_PATH=$(python -c "from videorecipes.zoo import tiny_zoo; print(tiny_zoo('${TINY_KIND:-$KIND}'))")
  NUM_FRAMES=${NUM_FRAMES:-17}; HEIGHT=${HEIGHT:-64}; WIDTH=${WIDTH:-64}
  flags+=(--text_precision fp32 --samples_per_file 8)
fi
if [ -n "${DATASET_PATH:-}" ]; then
  flags+=(--dataset_path "$DATASET_PATH")
else
  if [ -z "${DATA:-}" ]; then
    DATA=outputs/data/synthetic
    [ -f "$DATA/videos2caption.json" ] || videorecipes-data create --out "$DATA" --num_videos 16 --seed 0
  fi
  flags+=(--data_merge_path "$DATA")
fi
[ -n "${NUM_FRAMES:-}" ] && flags+=(--num_frames "$NUM_FRAMES")
[ -n "${HEIGHT:-}" ] && flags+=(--num_height "$HEIGHT")
[ -n "${WIDTH:-}" ] && flags+=(--num_width "$WIDTH")
t0=$(date +%s)
torchrun --standalone --nproc_per_node "$NUM_GPUS" --no-python videorecipes-data preprocess \
  --model_path "$MODEL_PATH" --model_type "$KIND" --preprocess_output_dir "$OUT" "${flags[@]}" "$@"
videorecipes-data validate "$OUT"
echo "preprocessed into $OUT in $(( $(date +%s) - t0 ))s; train with --data_path $OUT"
