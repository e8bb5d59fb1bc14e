#!/usr/bin/env python
"""Preprocessing throughput: videos/s, and where the time goes (decode / VAE / text / image / write).

    OMP_NUM_THREADS=1 python data_scripts/bench_preprocess.py                       # 32 synthetic clips, tiny T2V zoo
    python data_scripts/bench_preprocess.py --kind i2v --num_videos 64 --batch_size 8
    python data_scripts/bench_preprocess.py --model_path Wan-AI/Wan2.1-T2V-1.3B-Diffusers --num_frames 81 \\
        --height 480 --width 832 --src_height 480 --src_width 832 --src_frames 81 --src_fps 16   # a real model, on a GPU

Writes N synthetic videos (nbs/02_synthetic), preprocesses them with `videorecipes.data.preprocess` into a scratch
folder and prints the throughput. Model loading is timed apart (it happens once per run, whatever its size).
Decode time is summed over the decoding threads, which run ahead of the encoders, so it overlaps the rest.
"""
import argparse, json, os, shutil, sys, tempfile, time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--num_videos', type=int, default=32)
    ap.add_argument('--kind', choices=['t2v', 'i2v'], default='t2v')
    ap.add_argument('--model_path', default=None, help='default: the tiny zoo of --kind')
    ap.add_argument('--num_frames', type=int, default=17)
    ap.add_argument('--height', type=int, default=64)
    ap.add_argument('--width', type=int, default=64)
    ap.add_argument('--src_frames', type=int, default=33, help='frames of each synthetic source video')
    ap.add_argument('--src_height', type=int, default=64)
    ap.add_argument('--src_width', type=int, default=64)
    ap.add_argument('--src_fps', type=float, default=16)
    ap.add_argument('--batch_size', type=int, default=4, help='--preprocess_video_batch_size')
    ap.add_argument('--workers', type=int, default=2, help='--preprocess_num_workers (decode threads)')
    ap.add_argument('--samples_per_file', type=int, default=16)
    ap.add_argument('--text_precision', default=None, help='default: fp32 for the tiny zoo, bf16 otherwise')
    ap.add_argument('--work', default=None, help='scratch folder (default: a temporary one, removed afterwards)')
    ap.add_argument('--json', action='store_true', help='also print the figures as one JSON line')
    a = ap.parse_args(argv)

    import torch
    from videorecipes.config import parse_args
    from videorecipes.synthetic import make_synthetic_dataset
    from videorecipes.zoo import tiny_zoo
    from videorecipes.data.preprocess import Encoders, preprocess_dataset, _default_device, summarize

    work = Path(a.work or tempfile.mkdtemp(prefix='bench_preprocess_'))
    try:
        model = a.model_path or tiny_zoo(a.kind, work / 'zoo')
        t0 = time.perf_counter()
        make_synthetic_dataset(work / 'src', a.num_videos, seed=1, num_frames=a.src_frames, height=a.src_height,
                               width=a.src_width, fps=a.src_fps, progress=False)
        t_make = time.perf_counter() - t0
        text_precision = a.text_precision or ('fp32' if a.model_path is None else 'bf16')
        cfg = parse_args(['--model_path', model, '--model_type', a.kind, '--data_merge_path', work / 'src',
                          '--preprocess_output_dir', work / 'out', '--num_frames', a.num_frames, '--num_height', a.height,
                          '--num_width', a.width, '--preprocess_video_batch_size', a.batch_size,
                          '--preprocess_num_workers', a.workers, '--samples_per_file', a.samples_per_file,
                          '--text_precision', text_precision])
        device = _default_device(cfg)
        t0 = time.perf_counter()
        enc = Encoders(model, a.kind, device, cfg.preprocess.vae_precision, text_precision, cfg.preprocess.image_precision,
                       cfg.data.text_max_length)
        t_load = time.perf_counter() - t0
        enc.encode_video(__import__('numpy').zeros((1, a.num_frames, a.height, a.width, 3), 'uint8'))  # warm-up
        (work / 'out').mkdir(exist_ok=True)
        from safetensors.torch import save_file   # the empty-prompt sidecar is not part of the timed work
        save_file({'text_embedding': enc.encode_text([''])[0].contiguous()}, str(work / 'out' / 'empty_prompt.safetensors'))
        res = preprocess_dataset(cfg, encoders=enc, progress=False)
        rows = summarize(work / 'out', write=False)['rows']
        t, wall = res['timings'], res['wall']
        main_thread = t['vae'] + t['text'] + t['image'] + t['write']
        print(f"preprocess benchmark on {device} (torch threads {torch.get_num_threads()}): {a.num_videos} synthetic videos "
              f"{a.src_frames}x{a.src_height}x{a.src_width} @ {a.src_fps:g} fps -> {a.kind} {Path(str(model)).name}, "
              f"clips {a.num_frames}x{a.height}x{a.width} @ 16 fps, batch {a.batch_size}, {a.workers} decode threads")
        print(f"  model load {t_load:.2f}s (once per run), writing the source videos {t_make:.2f}s (not counted)")
        print(f"  {rows} samples in {wall:.2f}s: {rows / wall:.2f} videos/s")
        for k in ('decode', 'vae', 'text', 'image', 'write'):
            note = ' (summed over decode threads; overlaps the encoders)' if k == 'decode' else ''
            print(f"    {k:7} {t[k]:7.3f}s  {1000 * t[k] / max(rows, 1):7.1f} ms/video  {100 * t[k] / wall:5.1f}% of wall{note}")
        print(f"    other   {wall - main_thread:7.3f}s  (reading the index, waiting for decodes, bookkeeping)")
        if a.json:
            print(json.dumps(dict(device=str(device), videos=rows, wall=wall, videos_per_s=rows / wall, load=t_load, **t)))
    finally:
        if a.work is None: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
