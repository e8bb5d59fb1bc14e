#!/usr/bin/env python
"""Score a VSA experiment on held-out prompts: the base model dense and at each sparsity without a finetune, the dense
finetune, and each VSA finetune at its sparsity; loss curves of the finetunes (nbs/62_recipes.vsa_finetune.ipynb).
Same as the `evaluate_vsa` command; `launchers/vsa_cpu.sh` runs it.

  python data_scripts/evaluate_vsa.py --base outputs/vsa_cpu/base/final --dense_run outputs/vsa_cpu/dense \
      --vsa_runs outputs/vsa_cpu/vsa_0.5 outputs/vsa_cpu/vsa_0.9 --sparsities 0.5 0.9 \
      --prompts outputs/vsa_cpu/big/prompts_base.json --output_dir outputs/vsa_cpu/eval
"""
from videorecipes.recipes.vsa_finetune import evaluate_vsa_main

if __name__ == '__main__':
    evaluate_vsa_main()
