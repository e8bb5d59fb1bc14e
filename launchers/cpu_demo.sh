#!/usr/bin/env bash
# The CPU demo on the tiny model zoo (README command 1). Sets itself up, then:
#   1. writes a small captioned synthetic video dataset (real mp4 files),
#   2. builds the tiny Wan2.1 zoo (T2V and I2V diffusers pipeline folders, real classes),
#   3. generates a text-to-video clip and an image-to-video clip (from a synthetic clip's first frame),
#   4. teaches the random tiny DiT colours (nbs/90_tutorial_cpu_demo.ipynb tells the story):
#      colour datasets without magenta (base) and with magenta backgrounds (concept), preprocessing, a colour score
#      of the untrained DiT, a full finetune on the base set, the score again, a LoRA on the concept set, and the
#      score of magenta prompts with and without the adapter.
# Outputs go to outputs/demo/ (override with OUT=...). STEPS / LORA_STEPS change the training lengths.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
OUT=${OUT:-outputs/demo}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
t0=$(date +%s)
python data_scripts/make_synthetic_videos.py --out "$OUT/synthetic" --num_videos 16 --seed 0
videorecipes-zoo --out "$OUT/zoo"
videorecipes-generate --model_path "$OUT/zoo/tiny-wan2.1-t2v-v1" --output_dir "$OUT/t2v" \
  --prompt "a red circle moving right on a blue background" --num_inference_steps 20 --guidance_scale 5
first=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['path'])" "$OUT/synthetic/videos2caption.json")
cap=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['cap'][0])" "$OUT/synthetic/videos2caption.json")
videorecipes-generate --model_path "$OUT/zoo/tiny-wan2.1-i2v-v1" --output_dir "$OUT/i2v" \
  --prompt "$cap" --image "$OUT/synthetic/videos/$first" --num_inference_steps 20 --guidance_scale 5

# --- 4. the finetuning demo: 9 frames of 32x32, prompts cut to 32 tokens (the captions have about 12) ---
ZOO="$OUT/zoo/tiny-wan2.1-t2v-v1"; C="$OUT/colours"
SIZE=(--num_frames 9 --num_height 32 --num_width 32 --text_max_length 32)
videorecipes-demo data --out "$C" --num_videos 384 --concept_videos 64 --num_prompts 48 --exclude magenta
for s in base concept; do
  videorecipes-data preprocess --model_path "$ZOO" --data_merge_path "$C/$s" --preprocess_output_dir "$C/$s-latents" \
    "${SIZE[@]}" --text_precision fp32 --samples_per_file 64 --preprocess_video_batch_size 8 --preprocess_num_workers 0 \
    --preprocess_overwrite True
done
score() { videorecipes-demo score --text_max_length 32 --num_inference_steps 20 --guidance_scale 3 "$@"; }
TRAIN=(--dataloader_num_workers 0 --mixed_precision no --report_to tensorboard --weighting_scheme shift
       --discrete_flow_shift 3 --lr_scheduler cosine --lr_warmup_steps 20 --weight_decay 0 --cfg_rate 0.1
       --log_validation True --validation_sampling_steps 20 --validation_guidance_scale 3 "${SIZE[@]}")
score --model_path "$ZOO" --prompts "$C/prompts_base.json" --out "$OUT/scores_1_untrained_base_prompts"
rm -rf "$OUT/full" "$OUT/lora"
videorecipes-train --model_path "$ZOO" --data_path "$C/base-latents" --output_dir "$OUT/full" "${TRAIN[@]}" \
  --train_batch_size 16 --learning_rate 3e-3 --max_train_steps "${STEPS:-2500}" --checkpointing_steps 500 \
  --validation_dataset_file "$C/validation_base.json" --validation_steps 500
score --model_path "$OUT/full/final" --prompts "$C/prompts_base.json" --out "$OUT/scores_2_full_base_prompts"
score --model_path "$OUT/full/final" --prompts "$C/prompts_concept.json" --out "$OUT/scores_3_full_magenta_prompts"
videorecipes-train --model_path "$OUT/full/final" --data_path "$C/concept-latents" --output_dir "$OUT/lora" "${TRAIN[@]}" \
  --lora_training True --lora_rank 16 --lora_alpha 16 --lora_save_comfy True \
  --train_batch_size 16 --learning_rate 3e-3 --max_train_steps "${LORA_STEPS:-1000}" --checkpointing_steps 500 \
  --validation_dataset_file "$C/validation_concept.json" --validation_steps 500
score --model_path "$OUT/full/final" --lora "$OUT/lora/final" --prompts "$C/prompts_concept.json" --out "$OUT/scores_4_lora_magenta_prompts"
score --model_path "$OUT/full/final" --lora "$OUT/lora/final" --prompts "$C/prompts_base.json" --out "$OUT/scores_5_lora_base_prompts"
videorecipes-demo summary --out "$OUT"
echo "demo finished in $(( $(date +%s) - t0 ))s (after set-up); videos under $OUT/, training runs in $OUT/full and $OUT/lora"
