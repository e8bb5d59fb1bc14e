#!/usr/bin/env python
"""The finetuning guide's LoRA extraction command, as written there (FastVideo's scripts/lora_extraction/extract_lora.py):

    python data_scripts/lora_extraction/extract_lora.py --base Wan-AI/Wan2.1-T2V-1.3B-Diffusers \\
        --ft path/to/your/finetuned_model --out adapter_r32.safetensors --rank 32 [--full-rank]

It is `videorecipes-lora extract`, which takes these spellings too (--ft for --finetuned, --full-rank for --full_rank).
`--out` naming a .safetensors file writes that one file (diffusers layout; `--format comfy|musubi` for another);
a folder gets the diffusers file, the report and the layouts of `--format`. `--help` lists every flag."""
import sys
from videorecipes.lora_tools import lora_cli

if __name__ == '__main__': sys.exit(lora_cli(['extract', *sys.argv[1:]]))
