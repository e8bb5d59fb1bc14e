#!/usr/bin/env python
"""Attention forward + backward time of radial attention against dense SDPA, at Wan2.1 480p (1560 tokens per latent
frame) for 81 frames, 161 frames (2x) and 321 frames (4x); and the sparsity of each mask.

    python launchers/bench_radial_attention.py                         # on a GPU: bf16, 12 heads of 128 (Wan2.1-1.3B)
    python launchers/bench_radial_attention.py --heads 40              # Wan2.1-14B's heads
    python launchers/bench_radial_attention.py --small                 # anywhere: small shapes, checks the implementations agree

Implementations: `dense` (F.scaled_dot_product_attention: FlashAttention / cuDNN on a GPU), `flex` (FlexAttention with
the radial BlockMask, compiled; GPU only), `reference` (masked SDPA over the expanded token mask: the CPU oracle, O(n^2)
memory). Each is timed as forward + backward of one attention call, after warm-up, median of --repeat (CUDA events on a GPU).
The paper (Li et al. 2025) reports 1.93x training speedup at Wan 2x (73.6% sparsity) and 4.37x at HunyuanVideo 4x (88.3%),
end to end; this measures the attention alone.
"""
import argparse, statistics, time
import torch
import torch.nn.functional as F
from videorecipes.kernels.radial import radial_block_mask
from videorecipes.kernels.block_sparse import block_sparse_flex, block_sparse_reference


def timed(fn, q, k, v, repeat, cuda):
    def step():
        for t in (q, k, v): t.grad = None
        out = fn(q, k, v); out.backward(torch.ones_like(out))
    for _ in range(2): step()
    ts = []
    for _ in range(repeat):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); step(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--heads', type=int, default=12); ap.add_argument('--head_dim', type=int, default=128)
    ap.add_argument('--frames', default='81,161,321', help='clip frames (4k+1), comma-separated')
    ap.add_argument('--tokens_per_frame', type=int, default=1560); ap.add_argument('--block_size', type=int, default=128)
    ap.add_argument('--decay', type=float, default=1.0); ap.add_argument('--repeat', type=int, default=10)
    ap.add_argument('--small', action='store_true', help='64 tokens per frame, 2 heads of 32, fp32, 9-17-33 frames')
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.small
    dev, dt = ('cuda', torch.bfloat16) if cuda else ('cpu', torch.float32)
    if a.small: a.heads, a.head_dim, a.frames, a.tokens_per_frame, a.block_size, a.repeat = 2, 32, '9,17,33', 64, 64, 3
    impls = ['dense'] + (['flex'] if cuda else ['reference'])
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, {a.heads} heads x {a.head_dim}, {dt}, blocks of {a.block_size}, decay {a.decay}")
    for nf in map(int, a.frames.split(',')):
        lf = (nf - 1) // 4 + 1; S = lf * a.tokens_per_frame
        m = radial_block_mask(lf, a.tokens_per_frame, 0, a.block_size, a.decay)
        q, k, v = (torch.randn(1, S, a.heads, a.head_dim, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
        fns = dict(dense=lambda q, k, v: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2),
                   flex=lambda q, k, v: block_sparse_flex(q, k, v, m, a.block_size, compile=True),
                   reference=lambda q, k, v: block_sparse_reference(q, k, v, m, a.block_size))
        t = {i: timed(fns[i], q, k, v, a.repeat, cuda) for i in impls}
        if a.small:   # the sparse implementations agree with each other where both run
            with torch.no_grad():
                from videorecipes.kernels.block_sparse import block_sparse_flex as fx
                diff = (fx(q, k, v, m, a.block_size) - block_sparse_reference(q, k, v, m, a.block_size)).abs().max().item()
        row = ' | '.join(f"{i} {t[i] * 1e3:8.2f} ms" for i in impls)
        sp = impls[1]
        print(f"{nf:4d} frames ({lf} latent, {S} tokens): sparsity {1 - m.float().mean():.1%} | {row} | dense/{sp} {t['dense'] / t[sp]:.2f}x"
              + (f" | flex vs reference forward max |diff| {diff:.1e}" if a.small else ''))
        del q, k, v
        if cuda: torch.cuda.empty_cache()

if __name__ == '__main__': main()
