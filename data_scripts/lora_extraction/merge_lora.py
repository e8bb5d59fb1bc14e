#!/usr/bin/env python
"""The finetuning guide's LoRA merge command, as written there (FastVideo's scripts/lora_extraction/merge_lora.py):

    python data_scripts/lora_extraction/merge_lora.py --base Wan-AI/Wan2.1-T2V-1.3B-Diffusers \\
        --adapter adapter_r32.safetensors --ft path/to/your/finetuned_model --output merged_model

It is `videorecipes-lora merge` (--adapter for --lora, --output for --out). The adapter may be in any layout
(diffusers, ComfyUI, musubi-tuner). `--ft` is for reference: its architecture must match the base's, and the merged
weights are compared with it. `--help` lists every flag."""
import sys
from videorecipes.lora_tools import lora_cli

if __name__ == '__main__': sys.exit(lora_cli(['merge', *sys.argv[1:]]))
