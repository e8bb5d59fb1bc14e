#!/usr/bin/env python
"""Peak memory and seconds per step of the activation-checkpointing policies (--enable_gradient_checkpointing_type):
none, full (every block), ops (selective: matmul and attention outputs kept) and block_skip (all blocks but the last).

    python launchers/bench_checkpointing.py                                  # the tiny zoo DiT on the CPU
    python launchers/bench_checkpointing.py --frames 17 --size 64 --batch 8  # a bigger clip
    python launchers/bench_checkpointing.py --model Wan2.1-T2V-1.3B          # on a GPU: the real architecture (random weights), 81x480x832

A step is forward, MSE, backward and AdamW. Peak memory is that of forward + backward, after a warm-up step (so the
weights, their gradients and the optimizer states are all counted): on a GPU `torch.cuda.max_memory_allocated`; on a
CPU the peak that PyTorch's `MemTracker` (torch.distributed._tools) sees over every tensor alive, which is what the
policies change (the process's resident size would mostly measure the allocator). Modes alternate step by step, so
machine noise hits all of them alike; the figure is the median.
"""
import argparse, json, statistics, time
import torch


def build(model, mode, device, dtype):
    from videorecipes.parallel.parallelize import apply_ac
    if model == 'tiny':
        from videorecipes.zoo import tiny_zoo, load_transformer
        dit = load_transformer(tiny_zoo('t2v'), dtype='fp32')
    else:
        from diffusers import WanTransformer3DModel
        from videorecipes.zoo import transformer_config
        dit = WanTransformer3DModel.from_config(transformer_config(model))
    dit = dit.to(device).train()
    apply_ac(dit, mode, 1, 1)
    return dit, torch.optim.AdamW(dit.parameters(), lr=1e-5)


def inputs(dit, batch, frames, size, device):
    t, h = (frames - 1) // 4 + 1, size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, dit.config.in_channels, t, h, h, generator=g).to(device)
    return x, torch.full((batch,), 500., device=device), torch.randn(batch, 32, dit.config.text_dim, generator=g).to(device)


def fwd_bwd(dit, x, t, ctx, dtype):
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = dit(x, t, ctx, return_dict=False)[0]
    out.float().square().mean().backward()

def step(dit, opt, x, t, ctx, dtype):
    fwd_bwd(dit, x, t, ctx, dtype)
    opt.step(); opt.zero_grad(set_to_none=True)


def peak_bytes(dit, opt, x, t, ctx, dtype):
    "Peak memory of forward + backward (what checkpointing changes), after a warm-up step (optimizer states exist)."
    step(dit, opt, x, t, ctx, dtype)
    if x.device.type == 'cuda':
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        fwd_bwd(dit, x, t, ctx, dtype); torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        from torch.distributed._tools.mem_tracker import MemTracker
        mt = MemTracker(); mt.track_external(dit, opt)
        with mt: fwd_bwd(dit, x, t, ctx, dtype)
        peak = sum(m['Total'] for m in mt.get_tracker_snapshot('peak').values())
    opt.zero_grad(set_to_none=True)
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', default='tiny', help="'tiny' (the tiny zoo) or a WAN_MODELS name, e.g. Wan2.1-T2V-1.3B (random weights)")
    ap.add_argument('--frames', type=int, default=9); ap.add_argument('--size', type=int, default=32, help='square clips of this size')
    ap.add_argument('--batch', type=int, default=16); ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available()
    device, dtype = ('cuda', torch.bfloat16) if cuda else ('cpu', torch.float32)
    if a.model != 'tiny' and not cuda: raise SystemExit(f"--model {a.model}: the real architecture needs a GPU (use the tiny zoo on a CPU)")
    if a.model != 'tiny' and (a.frames, a.size) == (9, 32): a.frames, a.size, a.batch = 81, 480, 1   # (481x480: a square stand-in for 480x832)
    modes = ['none', 'full', 'ops', 'block_skip']
    runs = {m: build(a.model, m, device, dtype) for m in modes}
    x, t, ctx = inputs(runs['none'][0], a.batch, a.frames, a.size, device)
    peaks = {m: peak_bytes(*runs[m], x, t, ctx, dtype) for m in modes}
    times = {m: [] for m in modes}
    for i in range(a.steps):
        for m in modes:
            if cuda: torch.cuda.synchronize()
            t0 = time.perf_counter(); step(*runs[m], x, t, ctx, dtype)
            if cuda: torch.cuda.synchronize()
            if i >= 3: times[m].append(time.perf_counter() - t0)
    rows = {m: dict(peak_MB=round(peaks[m] / 2**20, 2), s_per_step=round(statistics.median(times[m]), 4)) for m in modes}
    print(f"{a.model} on {device}, batch {a.batch}, {a.frames}x{a.size}x{a.size}, {a.steps} steps per mode")
    print(f"{'mode':12} {'peak MB':>10} {'s/step':>8} {'memory vs none':>15} {'time vs none':>13}")
    for m, r in rows.items():
        print(f"{m:12} {r['peak_MB']:10.2f} {r['s_per_step']:8.4f} {r['peak_MB'] / rows['none']['peak_MB']:15.2f} {r['s_per_step'] / rows['none']['s_per_step']:13.2f}")
    print(json.dumps(dict(model=a.model, device=device, batch=a.batch, frames=a.frames, size=a.size, modes=rows)))


if __name__ == '__main__':
    main()
