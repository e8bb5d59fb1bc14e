#!/usr/bin/env bash
# DMD2 distillation on the CPU with the tiny zoo, and its evidence (nbs/63_recipes.dmd2.ipynb). Sets itself up, then:
#   1. the teacher: the CPU demo's colour data (384 clips of 9 frames at 32x32, 96 held-out prompts, each sampled twice: with 48 videos one
#      prompt is 2 points and two runs of the same recipe differed by 4) and its full
#      finetune of the random tiny DiT (2500 steps), sampled at 20-50 steps with guidance 3;
#   2. a healthy DMD2 run: a 4-step student (1000,750,500,250, flow shift 1: the steps as they are and uniform loss
#      timesteps, which beat the shift-3 grid here), teacher guidance 0.5 in DMD2's form (= 1.5 in diffusers' form; higher
#      guidance scored lower here), student lr LR with a cosine decay, critic lr 4 x LR, Adam betas (0, 0.999), the student
#      every 5th step, EMA 0.99 exported;
#   3. a deliberately broken run: the same with the critic's lr x 100, and --dmd_stop_on_collapse True;
#   4. evaluate_dmd: background and shape colour accuracy of the teacher (20 and 50 steps), of the teacher sampled with
#      the student's 4 steps, and of the student; wall and DiT time per video; frames; the two runs' diagnostics.
# About 6 min on 2 cores after set-up (one run: 355 s; teacher 75 s, healthy run 120 s, the broken run stops within seconds, data and evaluation the rest).
# Outputs go to outputs/dmd_cpu/ (override with OUT=...). TEACHER (a pipeline folder) skips step 1; STEPS, LR size it.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
OUT=${OUT:-outputs/dmd_cpu}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
t0=$(date +%s)
SIZE=(--num_frames 9 --num_height 32 --num_width 32 --text_max_length 32)
COMMON=(--dataloader_num_workers 0 --mixed_precision no --report_to tensorboard --weight_decay 0 --overwrite True "${SIZE[@]}")
videorecipes-demo data --out "$OUT/data" --num_videos 384 --concept_videos 8 --num_prompts 96
ZOO=$(python -c "from videorecipes.zoo import tiny_zoo; print(tiny_zoo('t2v'))")
videorecipes-data preprocess --model_path "$ZOO" --data_merge_path "$OUT/data/base" --preprocess_output_dir "$OUT/data/latents" "${SIZE[@]}" \
  --text_precision fp32 --samples_per_file 64 --preprocess_video_batch_size 8 --preprocess_num_workers 0 --preprocess_overwrite True
if [ -z "${TEACHER:-}" ]; then
  videorecipes-train --model_path "$ZOO" --data_path "$OUT/data/latents" --output_dir "$OUT/teacher" "${COMMON[@]}" \
    --weighting_scheme shift --discrete_flow_shift 3 --lr_scheduler cosine --lr_warmup_steps 20 --cfg_rate 0.1 \
    --train_batch_size 16 --learning_rate 3e-3 --max_train_steps 2500 --checkpointing_steps 2500
  TEACHER="$OUT/teacher/final"
fi
LR=${LR:-1e-4}
CLR=$(python -c "print(4 * $LR)"); BROKEN_CLR=$(python -c "print(400 * $LR)")
DMD=(--method dmd2 --model_path "$TEACHER" --data_path "$OUT/data/latents" "${COMMON[@]}" --train_batch_size 16
     --dmd_denoising_steps 1000,750,500,250 --flow_shift 1 --real_score_guidance_scale 0.5 --cfg_rate 0
     --learning_rate "$LR" --lr_scheduler cosine --adam_beta1 0 --adam_beta2 0.999 --generator_update_interval 5
     --ema_decay 0.99 --ema_final True --log_every 10 --checkpointing_steps 100 --checkpoints_total_limit 2
     --log_validation True --validation_dataset_file "$OUT/data/validation_base.json" --validation_steps 500)
videorecipes-train "${DMD[@]}" --output_dir "$OUT/student" --fake_score_learning_rate "$CLR" --max_train_steps "${STEPS:-2000}"
set +e   # the broken run is meant to stop (exit code 3)
videorecipes-train "${DMD[@]}" --output_dir "$OUT/broken" --fake_score_learning_rate "$BROKEN_CLR" --max_train_steps "${STEPS:-2000}" \
  --dmd_stop_on_collapse True
echo "broken run: exit code $? (3: stopped by the collapse criterion)"
set -e
evaluate_dmd --teacher "$TEACHER" --students "$OUT/student" --prompts "$OUT/data/prompts_base.json" --output_dir "$OUT/eval" \
  --seeds 2 --diagnostics_runs "$OUT/student" "$OUT/broken" --num_frames 9 --height 32 --width 32 --text_max_length 32
echo "DMD2 evidence finished in $(( $(date +%s) - t0 ))s (after set-up): $OUT/eval/scores.md, frames.png, diagnostics.png"
