#!/usr/bin/env bash
# LoRA length extension on the CPU with the tiny zoo: the recipe of nbs/61_recipes.length_extension.ipynb end to end,
# and its evidence. Sets itself up, then:
#   1. prepare_training_data.py create: synthetic scenes at 9 frames (base) and 33 frames (4x the latent frames, the
#      extended length), 32x32, preprocessed at both lengths; a held-out set likewise (its loss picks best_model/);
#   2. the base model: a full finetune of the random tiny DiT on the 9-frame clips, until it follows colours and motions;
#   3. the length-extension LoRA at 33 frames: radial attention on blocks of one latent frame (4 tokens), the first block
#      and the first 2 sampling steps dense, the dense base-length loss beside it;
#   4. evaluate_lora_length_extension on held-out prompts: base model at 9 frames, then at 33 frames dense, radial,
#      and radial + LoRA; background accuracy per frame and motion per quarter clip; a picture of frames over time.
# Outputs go to outputs/length_extension_cpu/ (override with OUT=...). N, BASE_STEPS, LORA_STEPS, PROMPTS size it;
# RES=64 makes 64x64 clips (16 tokens per latent frame instead of 4: the shape's position is finer).
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/setup_env.sh
OUT=${OUT:-outputs/length_extension_cpu}
export VIDEORECIPES_CACHE=${VIDEORECIPES_CACHE:-$PWD/.cache}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
t0=$(date +%s)
ZOO=$(python -c "from videorecipes.zoo import tiny_zoo; print(tiny_zoo('t2v'))")
RES=${RES:-32}; TPF=$(( (RES / 16) * (RES / 16) ))   # tokens per latent frame: one radial block each
SIZE=(--height $RES --width $RES --text_max_length 32)
for s in data heldout; do
  n=${N:-384}; seed=0; [ $s = heldout ] && n=32 && seed=1
  python data_scripts/prepare_training_data.py create --output_dir "$OUT/$s" --num_samples $n --seed $seed \
    --base_frames 9 --extended_frames 33 "${SIZE[@]}" --model_path "$ZOO" --text_precision fp32
done
python - "$OUT" "${PROMPTS:-48}" <<'PY'
import json, sys
from pathlib import Path
from videorecipes.demo import heldout_prompts
from videorecipes.recipes.length_data import read_metadata
from videorecipes.videoio import atomic_path
out = Path(sys.argv[1]); seen = {r['prompt'] for s in ('data', 'heldout') for r in read_metadata(out / s / 'metadata.json')}
p = heldout_prompts(int(sys.argv[2]), 1000, exclude=seen)
for name, v in (('prompts.json', p), ('validation.json', [dict(caption=x) for x in p[:2]])):
    with atomic_path(out / name) as tmp: tmp.write_text(json.dumps(v, indent=1))
PY
COMMON=(--dataloader_num_workers 0 --mixed_precision no --report_to tensorboard --weighting_scheme shift --discrete_flow_shift 3
        --lr_scheduler cosine --lr_warmup_steps 20 --weight_decay 0 --cfg_rate 0.1 --overwrite True
        --log_validation True --validation_dataset_file "$OUT/validation.json" --validation_sampling_steps 20 --validation_guidance_scale 3)
videorecipes-train --model_path "$ZOO" --data_path "$OUT/data/latents/base" --output_dir "$OUT/base" --num_frames 9 "${SIZE[@]}" \
  --train_batch_size 16 --learning_rate 3e-3 --max_train_steps "${BASE_STEPS:-10000}" --checkpointing_steps 2500 --validation_steps 2500 \
  "${COMMON[@]}"
RADIAL=(--radial_block_size $TPF --radial_split_threshold $TPF --dense_layers 1 --dense_timesteps 2)
videorecipes-train --method length_extension --model_path "$OUT/base/final" --data_dir "$OUT/data" --output_dir "$OUT/lora" \
  --extended_num_frames 33 --base_num_frames 9 "${SIZE[@]}" --pattern radial "${RADIAL[@]}" \
  --validation_data_path "$OUT/heldout/latents/extended" --train_batch_size 8 --lora_rank 16 --lora_alpha 16 \
  --learning_rate 2e-3 --max_train_steps "${LORA_STEPS:-1500}" --checkpointing_steps 250 --validation_steps 250 "${COMMON[@]}"
evaluate_lora_length_extension --model_path "$OUT/base/final" --lora_checkpoint_dir "$OUT/lora/best_model" --output_dir "$OUT/eval" \
  --base_frames 9 --extended_frames 33 --prompts "$OUT/prompts.json" "${SIZE[@]}" --num_inference_steps 20 --guidance_scale 3 \
  "${RADIAL[@]}"
echo "length extension finished in $(( $(date +%s) - t0 ))s (after set-up): scores in $OUT/eval/scores.json, picture $OUT/eval/frames.png"
