#!/usr/bin/env python
"""Write a captioned synthetic video dataset: coloured shapes moving on coloured backgrounds, as real mp4 files.

    python data_scripts/make_synthetic_videos.py --out data/synthetic --num_videos 64 --num_frames 17 --height 64 --width 64

The folder gets `videos/*.mp4` and `videos2caption.json` (the "merged" layout that preprocessing reads).
See nbs/02_synthetic.ipynb for what the clips look like and how captions are made.
"""
import sys
from videorecipes.config import run_cli
from videorecipes.synthetic import synthetic_cli

if __name__ == '__main__':
    sys.exit(run_cli(synthetic_cli, prog='make_synthetic_videos.py'))
