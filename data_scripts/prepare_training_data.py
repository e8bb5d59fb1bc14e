#!/usr/bin/env python
"""The radial-attention seed's data tool for LoRA length extension (nbs/60_recipes.length_data.ipynb).

  python data_scripts/prepare_training_data.py create --output_dir training_data --num_samples 100 [--model_path M]
  python data_scripts/prepare_training_data.py convert --input_dir /path/to/videos --output_dir training_data [--model_path M]
  python data_scripts/prepare_training_data.py validate --output_dir training_data

`create` renders synthetic clips at the base and the extended length (defaults: the tiny zoo's 9 and 33 frames of
32x32); `convert` indexes your videos (a merged folder, videos with .txt captions, or the seed's metadata.json +
videos/) at both lengths; both write the seed's metadata.json and, with --model_path, preprocess both lengths into
latents/base and latents/extended, which `videorecipes-train --method length_extension --data_dir training_data` reads.
"""
import sys
from videorecipes.recipes.length_data import prepare_main

if __name__ == '__main__':
    sys.exit(prepare_main())
