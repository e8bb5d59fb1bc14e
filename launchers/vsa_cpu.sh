#!/usr/bin/env bash
# The VSA finetune on the CPU with the tiny zoo, and its evidence (nbs/62_recipes.vsa_finetune.ipynb). Sets itself up, then:
#   1. the dense base: the CPU demo's colour data (9 frames of 32x32) and its full finetune of the random tiny DiT;
#   2. the largest clips that are practical here, 49 frames of 128x128 (13 x 8 x 8 tokens after patching: 16 VSA tiles),
#      colour data without magenta, preprocessed;
#   3. from the base, on those clips, the same steps, batches and noise: a dense finetune, and a VSA finetune at each
#      sparsity of SPARSITIES, each reached by 0.05 every 10 steps;
#   4. evaluate_vsa on held-out prompts (colour accuracy) and 32 held-out clips (flow-matching loss at fixed draws): the
#      base dense and at each sparsity, the dense finetune dense and at each sparsity, each VSA finetune at its sparsity;
#      the loss curves. (About 70 min on 2 cores, the sum of its pieces here: training 24, sampling 11 x 32 videos 42.)
# Outputs go to outputs/vsa_cpu/ (override with OUT=...). BASE (a dense pipeline folder) skips step 1; N, STEPS,
# BASE_STEPS, PROMPTS, SPARSITIES size it.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
OUT=${OUT:-outputs/vsa_cpu}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
t0=$(date +%s)
ZOO=$(python -c "from videorecipes.zoo import tiny_zoo; print(tiny_zoo('t2v'))")
COMMON=(--dataloader_num_workers 0 --mixed_precision no --report_to tensorboard --weighting_scheme shift --discrete_flow_shift 3
        --lr_scheduler cosine --lr_warmup_steps 20 --weight_decay 0 --cfg_rate 0.1 --text_max_length 32 --overwrite True)
prep() { videorecipes-data preprocess --model_path "$ZOO" --data_merge_path "$1" --preprocess_output_dir "$2" "${@:3}" --text_max_length 32 \
           --text_precision fp32 --samples_per_file 64 --preprocess_video_batch_size 8 --preprocess_num_workers 0 --preprocess_overwrite True; }
if [ -z "${BASE:-}" ]; then
  SMALL=(--num_frames 9 --num_height 32 --num_width 32)
  videorecipes-demo data --out "$OUT/small" --num_videos 384 --concept_videos 8 --num_prompts 8
  prep "$OUT/small/base" "$OUT/small/latents" "${SMALL[@]}"
  videorecipes-train --model_path "$ZOO" --data_path "$OUT/small/latents" --output_dir "$OUT/base" "${SMALL[@]}" "${COMMON[@]}" \
    --train_batch_size 16 --learning_rate 3e-3 --max_train_steps "${BASE_STEPS:-2500}" --checkpointing_steps 2500
  BASE="$OUT/base/final"
fi
BIG=(--num_frames 49 --num_height 128 --num_width 128)
videorecipes-demo data --out "$OUT/big" --num_videos "${N:-192}" --concept_videos 8 --num_prompts "${PROMPTS:-32}" --num_frames 49 --height 128 --width 128
prep "$OUT/big/base" "$OUT/big/latents" "${BIG[@]}"
videorecipes-demo data --out "$OUT/heldout" --num_videos 32 --concept_videos 8 --num_prompts 4 --seed 1 --num_frames 49 --height 128 --width 128
prep "$OUT/heldout/base" "$OUT/heldout/latents" "${BIG[@]}"
FT=("${BIG[@]}" "${COMMON[@]}" --train_batch_size 4 --learning_rate 1e-3 --max_train_steps "${STEPS:-600}" --checkpointing_steps "${STEPS:-600}")
videorecipes-train --model_path "$BASE" --data_path "$OUT/big/latents" --output_dir "$OUT/dense" "${FT[@]}"
SPARSITIES=(${SPARSITIES:-0.5 0.75 0.9}); runs=()
for s in "${SPARSITIES[@]}"; do
  videorecipes-train --model_path "$BASE" --data_path "$OUT/big/latents" --output_dir "$OUT/vsa_$s" "${FT[@]}" \
    --attention_backend vsa --VSA_sparsity "$s" --VSA_decay_rate 0.05 --VSA_decay_interval_steps 10
  runs+=("$OUT/vsa_$s")
done
evaluate_vsa --base "$BASE" --dense_run "$OUT/dense" --vsa_runs "${runs[@]}" --sparsities "${SPARSITIES[@]}" \
  --prompts "$OUT/big/prompts_base.json" --output_dir "$OUT/eval" --num_frames 49 --height 128 --width 128 --heldout_data "$OUT/heldout/latents"
echo "VSA evidence finished in $(( $(date +%s) - t0 ))s (after set-up): $OUT/eval/scores.md, $OUT/eval/loss_curves.png"
