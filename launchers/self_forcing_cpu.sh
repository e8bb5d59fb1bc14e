#!/usr/bin/env bash
# Self-forcing causal distillation on the CPU with the tiny zoo, and its evidence (nbs/64_recipes.self_forcing.ipynb). Sets itself up, then:
#   1. the teacher: the CPU demo's colour data at 33 frames (9 latent frames: 3 chunks of 3), 384 clips at 32x32, 96
#      held-out prompts sampled twice, and a full finetune of the random tiny DiT (bidirectional, 2500 steps);
#   2. ODE pairs: the teacher's 48-step Euler trajectories (shift 5, guidance 1.5 in diffusers' form) on the training
#      prompts, kept at the student's 4 steps 1000,750,500,250 warped on the shift-5 grid;
#   3. ODE initialisation of the causal student (chunks of 3 latent frames, teacher forcing);
#   4. self-forcing from it: chunk-by-chunk rollouts on its KV cache, the DMD2 losses of the bidirectional teacher
#      (guidance 0.5 in DMD2's form, the DMD2 CPU run's) and critic, student every 5th step, EMA 0.99 exported;
#   5. evaluate_self_forcing: background and shape colour accuracy at the training length (teacher, ODE-init student,
#      self-forcing student), streaming at twice the training length with the rolling cache (6 frames, 3 sink) and the
#      full one, and frames over time.
# Outputs go to outputs/self_forcing_cpu/ (override with OUT=...). TEACHER (a 33-frame pipeline folder) skips step 1;
# ODE_STEPS, SF_STEPS and PAIRS size steps 2-4.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
OUT=${OUT:-outputs/self_forcing_cpu}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
SIZE=(--num_frames 33 --num_height 32 --num_width 32 --text_max_length 32)
COMMON=(--dataloader_num_workers 0 --mixed_precision no --report_to tensorboard --weight_decay 0 --overwrite True "${SIZE[@]}")
videorecipes-demo data --out "$OUT/data" --num_videos 384 --concept_videos 8 --num_prompts 96 --num_frames 33
ZOO=$(python -c "from videorecipes.zoo import tiny_zoo; print(tiny_zoo('t2v'))")
videorecipes-data preprocess --model_path "$ZOO" --data_merge_path "$OUT/data/base" --preprocess_output_dir "$OUT/data/latents" "${SIZE[@]}" \
  --text_precision fp32 --samples_per_file 64 --preprocess_video_batch_size 8 --preprocess_num_workers 0 --preprocess_overwrite True
stamp "data"
if [ -z "${TEACHER:-}" ]; then
  videorecipes-train --model_path "$ZOO" --data_path "$OUT/data/latents" --output_dir "$OUT/teacher" "${COMMON[@]}" \
    --weighting_scheme shift --discrete_flow_shift 3 --lr_scheduler cosine --lr_warmup_steps 20 --cfg_rate 0.1 \
    --train_batch_size 16 --learning_rate 3e-3 --max_train_steps 2500 --checkpointing_steps 2500
  TEACHER="$OUT/teacher/final"
  stamp "teacher"
fi
videorecipes-ode-pairs --model_path "$TEACHER" --data_path "$OUT/data/latents" --output_dir "$OUT/ode_pairs" "${SIZE[@]}" \
  --ode_steps 48 --ode_flow_shift 5 --ode_guidance_scale 1.5 --dmd_denoising_steps 1000,750,500,250 --dit_precision fp32 \
  --ode_precision fp32 --samples_per_file 64 --max_samples "${PAIRS:-384}" --overwrite True
stamp "ODE pairs"
videorecipes-train --method ode_init --model_path "$TEACHER" --data_path "$OUT/ode_pairs" --output_dir "$OUT/ode_init" "${COMMON[@]}" \
  --num_frame_per_block 3 --train_batch_size 16 --learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 20 --cfg_rate 0 \
  --max_train_steps "${ODE_STEPS:-1000}" --checkpointing_steps 500
stamp "ODE init"
videorecipes-train --method self_forcing --model_path "$OUT/ode_init/final" --teacher_model_path "$TEACHER" --data_path "$OUT/data/latents" \
  --output_dir "$OUT/self_forcing" "${COMMON[@]}" --num_frame_per_block 3 --context_noise 0 --train_batch_size 16 \
  --dmd_denoising_steps 1000,750,500,250 --flow_shift 5 --real_score_guidance_scale 0.5 --cfg_form dmd2 --cfg_rate 0 \
  --min_timestep_ratio 0.02 --max_timestep_ratio 0.98 --learning_rate 1e-4 --fake_score_learning_rate 4e-4 --lr_scheduler cosine \
  --adam_beta1 0 --adam_beta2 0.999 --generator_update_interval 5 --ema_decay 0.99 --ema_final True --log_every 10 \
  --max_train_steps "${SF_STEPS:-1000}" --checkpointing_steps 500 --checkpoints_total_limit 2
stamp "self-forcing"
evaluate_self_forcing --teacher "$TEACHER" --students "$OUT/ode_init" "$OUT/self_forcing" --prompts "$OUT/data/prompts_base.json" \
  --output_dir "$OUT/eval" --seeds 2 --num_frames 33 --height 32 --width 32 --text_max_length 32 --local_attn_size 6 --sink_size 3
stamp "self-forcing evidence finished (after set-up): $OUT/eval/scores.md, frames.png"
