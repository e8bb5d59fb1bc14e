#!/usr/bin/env python
"""Sample prompts at the base and the extended length, with and without a length-extension LoRA, side by side with
scores (the radial-attention seed's evaluation script; nbs/61_recipes.length_extension.ipynb). Same as the
`evaluate_lora_length_extension` command.

  python data_scripts/evaluate_lora_length_extension.py --model_path Wan-AI/Wan2.1-T2V-14B-Diffusers \
      --lora_checkpoint_dir lora_checkpoints/best_model --output_dir evaluation_outputs --base_frames 69 --extended_frames 161 \
      --prompt "A serene lake with mountains in the background" --height 768 --width 1280 \
      --pattern radial --dense_layers 2 --dense_timesteps 2 --decay_factor 0.2
"""
import sys
from videorecipes.recipes.length_extension import evaluate_main

if __name__ == '__main__':
    evaluate_main()
