#!/usr/bin/env python
"""Benchmark LoRA extraction on Wan2.1-T2V-1.3B-shaped random weights: exact SVD per layer vs the fast path.

Every linear layer of the 1.3B DiT (30 blocks of attn1 q/k/v/o and attn2 q/k/v/o at dim x dim, the FFN at
ffn x dim and dim x ffn, plus the embedder and head linears) gets a random base weight and a finetuned weight that
differs from it by a synthetic low-rank-plus-noise delta. Both are generated on the fly from a per-layer seed, so
the 1.3B model is never held in memory. For each layer, in the same run and alternating, the weight change is
factorised at --rank by `low_rank(..., method='exact')` (torch.linalg.svd) and by the fast path
`low_rank(..., method='auto')` (randomized subspace iteration with power iterations and a convergence test,
exact SVD where it does not converge). Reported: total seconds of each, the speed-up, and the fast path's error
relative to the Eckart-Young optimum (known exactly from the exact SVD of the same layer), max and mean over layers.

    python launchers/bench_lora_extract.py --threads 2             # the full 30 blocks (about 10 minutes on 2 idle cores)
    python launchers/bench_lora_extract.py --blocks 6 --threads 2  # a subset, extrapolated to 30 blocks (reported as such)
"""
import argparse, json, math, os, platform, sys, time


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--blocks', type=int, default=30, help='blocks to run (fewer than --total_blocks: the total is extrapolated)')
    ap.add_argument('--total_blocks', type=int, default=30, help='blocks of the model (Wan2.1-1.3B: 30)')
    ap.add_argument('--dim', type=int, default=1536)
    ap.add_argument('--ffn', type=int, default=8960)
    ap.add_argument('--text_dim', type=int, default=4096)
    ap.add_argument('--freq_dim', type=int, default=256)
    ap.add_argument('--out_dim', type=int, default=64, help='proj_out rows: out_channels x patch (16 x 1 x 2 x 2)')
    ap.add_argument('--no_embedders', action='store_true', help='blocks only (skip the 6 embedder/head linears)')
    ap.add_argument('--rank', type=int, default=32)
    ap.add_argument('--signal_rank', type=int, default=64, help='rank of the low-rank part of the synthetic delta')
    ap.add_argument('--decay', type=float, default=16.0, help='singular values of the signal fall as exp(-i/decay)')
    ap.add_argument('--noise', type=float, default=0.3, help='Frobenius norm of the dense noise relative to the signal')
    ap.add_argument('--method', default='auto', choices=['auto', 'randomized'], help='the fast path')
    ap.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--json', default=None, help='also write the per-layer results here')
    return ap.parse_args(argv)


def layer_shapes(a):
    "(name, [out, in]) of every linear layer of the DiT, block by block."
    d, f = a.dim, a.ffn
    out = []
    if not a.no_embedders:
        out += [('condition_embedder.text_embedder.linear_1', (d, a.text_dim)), ('condition_embedder.text_embedder.linear_2', (d, d)),
                ('condition_embedder.time_embedder.linear_1', (d, a.freq_dim)), ('condition_embedder.time_embedder.linear_2', (d, d)),
                ('condition_embedder.time_proj', (6 * d, d)), ('proj_out', (a.out_dim, d))]
    for b in range(a.blocks):
        for attn in ('attn1', 'attn2'):
            out += [(f'blocks.{b}.{attn}.{p}', (d, d)) for p in ('to_q', 'to_k', 'to_v', 'to_out.0')]
        out += [(f'blocks.{b}.ffn.net.0.proj', (f, d)), (f'blocks.{b}.ffn.net.2', (d, f))]
    return out


def make_pair(shape, seed, a, torch):
    "A random base weight and a finetuned weight = base + low-rank signal + dense noise, from one seed."
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    base = 0.02 * torch.randn(m, n, generator=g)
    r = min(a.signal_rank, m, n)
    U = torch.linalg.qr(torch.randn(m, r, generator=g)).Q
    V = torch.linalg.qr(torch.randn(n, r, generator=g)).Q
    s = torch.exp(-torch.arange(r, dtype=torch.float32) / a.decay)
    signal = (U * (s / s.norm())) @ V.T
    noise = torch.randn(m, n, generator=g)
    delta = 1e-3 * math.sqrt(m * n) * (signal + a.noise * noise / noise.norm())  # a typical finetune's size of change
    return base, base + delta


def main(argv=None):
    a = parse(argv)
    os.environ.setdefault('OMP_NUM_THREADS', str(a.threads))
    import torch
    from tqdm.auto import tqdm
    from videorecipes.lora_tools import low_rank
    torch.set_num_threads(a.threads)
    layers = layer_shapes(a)
    print(f"LoRA extraction benchmark: {len(layers)} linear layers ({a.blocks} of {a.total_blocks} blocks, dim {a.dim}, ffn {a.ffn}"
          f"{'' if a.no_embedders else ', + 6 embedder/head linears'}), rank {a.rank}; delta = rank-{a.signal_rank} signal "
          f"(sigma_i ~ exp(-i/{a.decay:g})) + noise at {a.noise:g} x its norm")
    print(f"torch {torch.__version__}, {a.threads} thread(s) on {a.device} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
    rows, t_gen, t_start = [], 0.0, time.time()
    for i, (name, shape) in enumerate(tqdm(layers, desc='layers', mininterval=5)):
        t0 = time.perf_counter()
        base, ft = make_pair(shape, a.seed * 1_000_003 + i, a, torch)
        D = (ft.to(a.device) - base.to(a.device))  # what extract_lora factorises
        t_gen += time.perf_counter() - t0
        ex = low_rank(D, a.rank, 'exact', name=name)
        fa = low_rank(D, a.rank, a.method, name=name)
        if a.device.startswith('cuda'): torch.cuda.synchronize()
        rows.append(dict(name=name, shape=list(shape), exact_s=ex.seconds, fast_s=fa.seconds, fast_method=fa.method,
                         iters=fa.iters, optimum=ex.optimum, exact_error=ex.rel_error, fast_error=fa.rel_error,
                         ratio=fa.rel_error / ex.optimum if ex.optimum else 1.0))
    te, tf = sum(r['exact_s'] for r in rows), sum(r['fast_s'] for r in rows)
    ratios = [r['ratio'] for r in rows]
    fallbacks = sum(r['fast_method'] == 'exact' for r in rows)
    print(f"\nwall time {time.time() - t_start:.1f}s (generating the weights: {t_gen:.1f}s)")
    print(f"exact SVD (torch.linalg.svd)  : {te:8.1f} s total")
    print(f"fast path ({a.method:10})      : {tf:8.1f} s total  ({len(rows) - fallbacks} layers randomized, {fallbacks} exact"
          f"; power iterations mean {sum(r['iters'] for r in rows) / len(rows):.1f})")
    print(f"speed-up                      : {te / tf:8.1f} x")
    print(f"fast error / Eckart-Young optimum: max {max(ratios):.6f}, mean {sum(ratios) / len(ratios):.6f} "
          f"(1.0 = optimal; target <= 1.01); exact path: max {max(r['exact_error'] / r['optimum'] for r in rows):.6f}")
    by = {}
    for r in rows: by.setdefault(tuple(r['shape']), []).append(r)
    for sh, rs in by.items():
        print(f"  {sh[0]:5}x{sh[1]:<5} x{len(rs):3}: exact {sum(r['exact_s'] for r in rs) / len(rs):6.3f}s/layer, "
              f"fast {sum(r['fast_s'] for r in rs) / len(rs):6.3f}s/layer, worst ratio {max(r['ratio'] for r in rs):.6f}")
    if a.blocks != a.total_blocks:
        blk = [r for r in rows if r['name'].startswith('blocks.')]
        emb = [r for r in rows if not r['name'].startswith('blocks.')]
        k = a.total_blocks / max(a.blocks, 1)
        ee = sum(r['exact_s'] for r in emb) + k * sum(r['exact_s'] for r in blk)
        ef = sum(r['fast_s'] for r in emb) + k * sum(r['fast_s'] for r in blk)
        print(f"EXTRAPOLATED to {a.total_blocks} blocks (measured {a.blocks}): exact {ee:.0f}s, fast {ef:.0f}s")
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(dict(args=vars(a), exact_s=te, fast_s=tf, speedup=te / tf, max_ratio=max(ratios),
                           mean_ratio=sum(ratios) / len(ratios), layers=rows), f, indent=1)
    return dict(exact_s=te, fast_s=tf, speedup=te / tf, max_ratio=max(ratios))


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
