#!/usr/bin/env python
"""The finetuning guide's validation command, as written there (FastVideo's scripts/lora_extraction/lora_inference_comparison.py):

    python data_scripts/lora_extraction/lora_inference_comparison.py --base merged_model --ft path/to/your/finetuned_model \\
        --adapter NONE --output-dir results --prompt "A cat sitting on a windowsill" --compute-ssim --compute-lpips

It is `videorecipes-lora compare` (--base/--ft for --model_a/--model_b, --adapter for --adapter_a, NONE for none): the same
prompts and seeds through both, SSIM per frame, LPIPS where the metrics extra is installed (otherwise it says so and goes
on), a weight-space report, `results/comparison.json` and the videos. `--help` lists every flag."""
import sys
from videorecipes.lora_tools import lora_cli

if __name__ == '__main__': sys.exit(lora_cli(['compare', *sys.argv[1:]]))
