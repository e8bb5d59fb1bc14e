#!/usr/bin/env python
"""VSA against dense SDPA, attention forward + backward, side by side in one process (nbs/32_kernels.vsa.ipynb).

  python launchers/bench_vsa.py                      # Wan2.1 480p 81 frames (21 x 30 x 52 tokens), 12 heads of 128, sparsity 0.9
  python launchers/bench_vsa.py --grid 8 8 8 --heads 2 --head_dim 32     # a CPU-sized check

Prints the times, the ratio dense / VSA, and the coarse stage's tiles per second. On a GPU VSA's fine stage is
FlexAttention (compiled), or the `vsa` package where it imports (--impl vsa); on a CPU it is the masked-SDPA reference,
which computes every score and then masks, so a CPU ratio says nothing about speed, only that the path runs.
"""
import argparse, math, time
import torch
from videorecipes.kernels.vsa import tile_layout, to_tiles, coarse_attention, video_sparse_attention
from videorecipes.parallel.attention import sdpa_attention


def timed(fn, repeats, sync):
    fn(); sync()                                            # warm-up (compilation)
    t0 = time.perf_counter()
    for _ in range(repeats): fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--grid', type=int, nargs=3, default=[21, 30, 52], help='token grid after patching (frames, height, width)')
    ap.add_argument('--heads', type=int, default=12); ap.add_argument('--head_dim', type=int, default=128)
    ap.add_argument('--batch', type=int, default=1); ap.add_argument('--sparsity', type=float, default=0.9)
    ap.add_argument('--impl', default='auto', choices=('auto', 'reference', 'flex', 'vsa'))
    ap.add_argument('--repeats', type=int, default=5); ap.add_argument('--device', default=None)
    a = ap.parse_args()
    dev = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = torch.bfloat16 if dev.type == 'cuda' else torch.float32
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    grid, L = tuple(a.grid), tile_layout(tuple(a.grid))
    S = math.prod(grid)
    q, k, v, g = (torch.randn(a.batch, S, a.heads, a.head_dim, device=dev, dtype=dtype, requires_grad=True) for _ in range(4))
    def step(fn):
        def run():
            out = fn(); out.float().square().mean().backward()
            for t in (q, k, v, g): t.grad = None
        return run
    dense = timed(step(lambda: sdpa_attention(q, k, v)), a.repeats, sync)
    vsa = timed(step(lambda: video_sparse_attention(q, k, v, grid, a.sparsity, g, impl=a.impl)), a.repeats, sync)
    with torch.no_grad():
        qp, kp, vp = (to_tiles(t, L) for t in (q, k, v))
        coarse = timed(lambda: coarse_attention(qp, kp, vp, L.sizes), a.repeats, sync)
    impl = a.impl if a.impl != 'auto' else ('flex or the vsa package' if dev.type == 'cuda' else 'reference (masked SDPA)')
    print(f"{dev.type} {torch.cuda.get_device_name() if dev.type == 'cuda' else ''} {dtype}: grid {grid} = {S} tokens in {L.n_tiles} tiles, "
          f"{a.heads} heads of {a.head_dim}, batch {a.batch}, sparsity {a.sparsity}, VSA fine stage: {impl}")
    print(f"dense SDPA fwd+bwd: {dense * 1e3:.2f} ms")
    print(f"VSA fwd+bwd:        {vsa * 1e3:.2f} ms")
    print(f"VSA / dense: {dense / vsa:.2f}x faster (the paper: about 6x FlashAttention-3 at 0.9; users: 2-3x end to end on H100/H20)")
    print(f"coarse stage (forward): {coarse * 1e3:.2f} ms for {L.n_tiles} tiles x {a.heads} heads x {a.batch}: "
          f"{L.n_tiles * a.heads * a.batch / coarse:,.0f} tiles/s")


if __name__ == '__main__':
    main()
