#!/usr/bin/env python
"""Write `videos2caption.json` for a folder of your own videos (the "merged" layout preprocessing reads).

    python data_scripts/videos2caption.py data/mine                         # captions from data/mine/videos/*.txt
    python data_scripts/videos2caption.py data/mine --captions caps.csv     # or from a CSV (path,caption) / JSON file

Resolution, fps, frame count, duration and size are read from the files (PyAV); images count as one-frame videos.
Files that cannot be read are left out and listed; files without a caption get "cap": [] and are reported by
preprocessing. Then: `videorecipes-data preprocess --data_merge_path data/mine ...`. See nbs/10_data.video.ipynb.
"""
import sys
from videorecipes.data.video import videos2caption_cli

if __name__ == '__main__':
    sys.exit(videos2caption_cli())
