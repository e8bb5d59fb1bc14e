#!/usr/bin/env python
"""Write ODE pairs for the causal student's ODE initialisation: the bidirectional teacher's Euler trajectories (48 steps,
CFG, flow shift 5 in the reference) on the prompts of a preprocessed folder, kept at the student's steps, as Parquet
shards in the preprocessing layout plus `ode_latents` and `ode_sigmas`. Resumable (finished shards are skipped) and
sharded under torchrun. Same as `videorecipes-ode-pairs`; the code lives in nbs/64_recipes.self_forcing.ipynb.

  python data_scripts/generate_ode_pairs.py --model_path Wan-AI/Wan2.1-T2V-14B-Diffusers --data_path outputs/data/t2v \
      --output_dir outputs/data/ode_t2v
  torchrun --standalone --nproc_per_node 8 data_scripts/generate_ode_pairs.py ...   # one shard in 8 per GPU
"""
import sys
from videorecipes.config import run_cli
from videorecipes.recipes.self_forcing import ode_pairs

if __name__ == '__main__':
    sys.exit(run_cli(ode_pairs, prog='generate_ode_pairs.py', errors=(FileNotFoundError, ValueError)))
