#!/usr/bin/env bash
# Preprocess videos into latent shards for image-to-video training: as preprocess_t2v.sh, plus, per clip, the VAE
# latent of [first frame, zeros...] and the CLIP features of the first frame (what WanImageToVideoPipeline computes).
#
# Defaults: the CPU demo, 16 synthetic clips through the tiny Wan2.1 I2V zoo at 17 frames of 64x64.
#   bash launchers/preprocess_i2v.sh
# A real model:
#   MODEL_PATH=Wan-AI/Wan2.1-I2V-14B-480P-Diffusers DATA=data/mine NUM_GPUS=8 NUM_FRAMES=81 HEIGHT=480 WIDTH=832 \
#     bash launchers/preprocess_i2v.sh
# Every variable and argument of preprocess_t2v.sh applies.
KIND=i2v exec bash "$(dirname "$0")/preprocess_t2v.sh" "$@"
