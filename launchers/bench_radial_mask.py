#!/usr/bin/env python
"""Build time of the radial block mask: the closed form (`radial_block_mask`) against a literal frame-pair loop
(`radial_mask_loop`, the reference's algorithm ported as it is), on the same inputs, checked bit-identical.

    python launchers/bench_radial_mask.py                       # Wan 768x1280 69f (18 x 3840 tokens), block 128, decay 0.2
    python launchers/bench_radial_mask.py --frames 21 --tokens_per_frame 1560 --decay 1.0   # Wan 480p 81f
    python launchers/bench_radial_mask.py --all                 # the issue's shapes and the Hunyuan case

One thread (torch.set_num_threads(1)), as the reference was timed. The closed form is timed uncached (its lru_cache is
cleared before each call), median of --repeat calls; the loop once.
"""
import argparse, statistics, time
import torch
from videorecipes.kernels.radial import radial_block_mask, radial_mask_loop

CASES = [('wan', 18, 3840, 0, 128, 0.2), ('wan', 21, 1560, 0, 128, 0.2), ('wan', 21, 1560, 0, 128, 1.0), ('wan', 17, 64, 0, 64, 1.0),
         ('hunyuan', 8, 256, 256, 128, 0.95)]

def bench(model, frames, tpf, text, bs, decay, repeat):
    t0 = time.perf_counter(); ref = radial_mask_loop(frames, tpf, text, bs, decay, model); t_loop = time.perf_counter() - t0
    ts = []
    for _ in range(repeat):
        radial_block_mask.cache_clear()
        t0 = time.perf_counter(); m = radial_block_mask(frames, tpf, text, bs, decay, model); ts.append(time.perf_counter() - t0)
    same = torch.equal(m, ref)
    t = statistics.median(ts)
    print(f"{model:8s} {frames:3d} x {tpf:5d} (+{text} text) block {bs:3d} decay {decay:4.2f}: {tuple(m.shape)} blocks, density "
          f"{m.float().mean():.4f} | loop {t_loop * 1e3:9.1f} ms | closed form {t * 1e3:7.2f} ms | {t_loop / t:7.0f}x | identical: {same}")
    return same

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='wan'); ap.add_argument('--frames', type=int, default=18)
    ap.add_argument('--tokens_per_frame', type=int, default=3840); ap.add_argument('--text_tokens', type=int, default=0)
    ap.add_argument('--block_size', type=int, default=128); ap.add_argument('--decay', type=float, default=0.2)
    ap.add_argument('--repeat', type=int, default=5); ap.add_argument('--all', action='store_true')
    a = ap.parse_args()
    torch.set_num_threads(1)
    cases = CASES if a.all else [(a.model, a.frames, a.tokens_per_frame, a.text_tokens, a.block_size, a.decay)]
    ok = all([bench(*c, a.repeat) for c in cases])
    raise SystemExit(0 if ok else 1)
