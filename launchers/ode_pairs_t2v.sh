#!/usr/bin/env bash
# ODE pairs for the causal student's ODE initialisation (nbs/64_recipes.self_forcing.ipynb): the bidirectional teacher's
# 48-step Euler trajectories (flow shift 5, guidance 6) on the prompts of a preprocessed folder, kept at the student's
# steps 1000,750,500,250 (warped on the shift-5 grid). One process per GPU, each taking every NUM_GPUS-th shard; rerun the
# same command to resume (finished shards are skipped).
#   MODEL_PATH=Wan-AI/Wan2.1-T2V-14B-Diffusers DATA=outputs/data/t2v NUM_GPUS=8 bash launchers/ode_pairs_t2v.sh
# Then: DATA=outputs/data/ode_t2v bash launchers/ode_init_t2v_1.3B.sh
# Extra arguments go to videorecipes-ode-pairs (e.g. --max_samples 1000 --ode_guidance_scale 5).
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
MODEL_PATH=${MODEL_PATH:-Wan-AI/Wan2.1-T2V-14B-Diffusers}
DATA=${DATA:-outputs/data/t2v}
OUT=${OUT:-outputs/data/ode_t2v}
torchrun --standalone --nproc_per_node "${NUM_GPUS:-1}" --no-python videorecipes-ode-pairs --model_path "$MODEL_PATH" \
  --data_path "$DATA" --output_dir "$OUT" --num_frames 81 --num_height 480 --num_width 832 --ode_steps 48 --ode_flow_shift 5 \
  --ode_guidance_scale 6 --dmd_denoising_steps 1000,750,500,250 --dit_precision bf16 --ode_precision bf16 "$@"
