#!/usr/bin/env python
"""Score whether generated videos follow their prompts' colours (the CPU demo's measure of learning).

Generates one video per held-out prompt (seed + i) from a diffusers pipeline folder, optionally with a LoRA loaded by
diffusers' `load_lora_weights`, classifies every pixel to the nearest `videorecipes.synthetic.COLOURS` entry and counts
a prompt as followed when the most frequent colour is the prompt's background (and, separately, when the second
most frequent is the shape's colour). Chance is about 1/8. Same as `videorecipes-demo score`; the code lives in
nbs/90_tutorial_cpu_demo.ipynb (`videorecipes.demo`).

  python data_scripts/score_colours.py --model_path outputs/demo/full/final --prompts outputs/demo/colours/prompts_base.json \
      --text_max_length 32 --out outputs/demo/scores_full
"""
import sys
from videorecipes.demo import demo_cli

if __name__ == '__main__':
    sys.exit(demo_cli(['score', *sys.argv[1:]]))
