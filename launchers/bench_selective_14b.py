#!/usr/bin/env python
"""GPU memory and speed of selective finetuning with block swapping (issue 7; nbs/48, nbs/49).

The Wan2.1-T2V-14B architecture with random weights in bf16 in CPU memory, --ff 0.001, --blocks_to_swap 39,
gradient checkpointing, bf16 autocast, AdamW over the fp32 slice: prints the selection summary, the memory
estimate, then per step the loss and time, and at the end the peak GPU memory (torch's allocator peak, and the
device-wide used memory beyond what was in use before the model was touched, i.e. beyond the CUDA context) and s/step
at the stated token count.

    python launchers/bench_selective_14b.py                  # needs a CUDA GPU (~1-2 min to build 28 GB of random bf16 weights)
    python launchers/bench_selective_14b.py --dry_run        # anywhere: meta-device model, selection and memory estimate only
    python launchers/bench_selective_14b.py --model tiny-t2v --device cpu --ff 0.05 --blocks_to_swap 3   # the same loop on the tiny DiT

Tokens per sample = latent frames x (height/16) x (width/16); the default 17 frames at 240x416 is 5 x 15 x 26 = 1,950.
"""
from __future__ import annotations
import argparse, json, math, os, sys, time
import torch


def build(name, dtype=torch.bfloat16, std=0.02, seed=0):
    "The architecture with random weights on the CPU in `dtype`: parameters are created on the meta device (no 57 GB fp32"
    " init), buffers (the rotary tables) really; then each parameter is materialised and filled, tensor by tensor."
    from diffusers import WanTransformer3DModel
    from videorecipes.zoo import transformer_config
    reg = torch.nn.Module.register_parameter
    def meta_param(self, n, p):
        reg(self, n, p if p is None else torch.nn.Parameter(p.to('meta'), requires_grad=False))
    torch.nn.Module.register_parameter = meta_param
    try: dit = WanTransformer3DModel(**transformer_config(name))
    finally: torch.nn.Module.register_parameter = reg
    g = torch.Generator().manual_seed(seed)
    for mname, m in dit.named_modules():
        for n, p in list(m._parameters.items()):
            if p is None: continue
            t = torch.empty(p.shape, dtype=dtype)
            if 'norm' in f'{mname}.{n}' and n == 'weight': t.fill_(1)
            elif n == 'bias': t.zero_()
            else: t.normal_(0, std, generator=g)
            m._parameters[n] = torch.nn.Parameter(t, requires_grad=False)
    return dit


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='Wan2.1-T2V-14B', help='a WAN_MODELS name or tiny-t2v')
    ap.add_argument('--ff', type=float, default=0.001); ap.add_argument('--ffid', type=int, default=0)
    ap.add_argument('--ff_kinds', default='attn,ffn')
    ap.add_argument('--blocks_to_swap', type=int, default=39); ap.add_argument('--prefetch', type=int, default=1)
    ap.add_argument('--num_frames', type=int, default=17); ap.add_argument('--height', type=int, default=240); ap.add_argument('--width', type=int, default=416)
    ap.add_argument('--text_len', type=int, default=512); ap.add_argument('--steps', type=int, default=6, help='timed steps (after one warm-up step)')
    ap.add_argument('--no_checkpointing', action='store_true'); ap.add_argument('--device', default='cuda')
    ap.add_argument('--dry_run', action='store_true', help='meta-device model: print the selection summary and the memory estimate, no GPU')
    ap.add_argument('--json', default=None, help='also write the results here')
    a = ap.parse_args(argv)
    from videorecipes.zoo import transformer_config
    from videorecipes.train.selective import select, estimate_memory, format_memory, SliceProxies, _meta_dit
    from videorecipes.train.flow import flow_matching_loss, step_generator
    cfg = transformer_config(a.model)
    kinds = tuple(a.ff_kinds.split(','))
    lt = (a.num_frames - 1) // 4 + 1
    tokens = lt * (a.height // 16) * (a.width // 16)
    ckpt = not a.no_checkpointing
    if a.dry_run:
        meta = _meta_dit(cfg)
        t0 = time.perf_counter(); sel = select(meta, a.ff, a.ffid, kinds); dt = time.perf_counter() - t0
        print(sel.summary()); print(f"(selection: {dt:.1f} s)")
        print(format_memory(estimate_memory(meta, a.ff, a.blocks_to_swap, a.prefetch, tokens, 1, ckpt, 'bf16', kinds=kinds)))
        return 0
    dev = torch.device(a.device)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        print("error: bench_selective_14b.py needs a CUDA GPU (none is visible); run it with --dry_run for the selection and the "
              "memory estimate, or --model tiny-t2v --device cpu for the loop on the tiny DiT", file=sys.stderr)
        return 2
    from videorecipes.train.blockswap import BlockSwapper
    if dev.type == 'cuda':
        torch.cuda.init(); torch.zeros(1, device=dev); torch.cuda.synchronize()
        free0, total = torch.cuda.mem_get_info(dev)
    t0 = time.perf_counter()
    dit = build(a.model, torch.bfloat16 if dev.type == 'cuda' else torch.float32)
    n_params = sum(p.numel() for p in dit.parameters())
    print(f"built {a.model}: {n_params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f} s")
    sel = select(dit, a.ff, a.ffid, kinds)
    print(sel.summary())
    est = estimate_memory(dit, a.ff, a.blocks_to_swap, a.prefetch, tokens, 1, ckpt, 'bf16' if dev.type == 'cuda' else 'fp32', kinds=kinds)
    print(format_memory(est))
    t0 = time.perf_counter()
    swapper = BlockSwapper(dit, a.blocks_to_swap, dev, prefetch=a.prefetch) if a.blocks_to_swap else None
    if swapper is None: dit.to(dev)
    proxies = SliceProxies(dit, sel, dev)
    if swapper is not None: swapper.on_install.append(proxies.write_block)
    if ckpt: dit.enable_gradient_checkpointing()
    dit.train()
    opt = torch.optim.AdamW(proxies.parameters(), lr=1e-5)
    print(f"swapper and proxies ready in {time.perf_counter() - t0:.0f} s: {swapper}")
    g = torch.Generator().manual_seed(0)
    h, w = a.height // 8, a.width // 8
    batch = dict(latents=torch.randn(1, cfg['in_channels'], lt, h, w, generator=g), text_embeddings=torch.randn(1, a.text_len, cfg['text_dim'], generator=g))
    ac = torch.autocast('cuda', dtype=torch.bfloat16) if dev.type == 'cuda' else torch.autocast('cpu', enabled=False)
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    times, used_peak = [], 0
    for step in range(a.steps + 1):
        if dev.type == 'cuda': torch.cuda.synchronize()
        t0 = time.perf_counter()
        with ac: loss, _ = flow_matching_loss(dit, batch, step_generator(0, step), device=dev)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if dev.type == 'cuda':
            torch.cuda.synchronize(); free, _ = torch.cuda.mem_get_info(dev); used_peak = max(used_peak, free0 - free)
        dt = time.perf_counter() - t0
        if step: times.append(dt)
        print(f"step {step}{' (warm-up)' if not step else ''}: loss {loss.item():.4f}, {dt:.2f} s")
    res = dict(model=a.model, params=n_params, ff=a.ff, trainable=sel.count, blocks_to_swap=a.blocks_to_swap, prefetch=a.prefetch,
               checkpointing=ckpt, tokens=tokens, text_tokens=a.text_len, s_per_step=sum(times) / len(times),
               estimate_gb=est[-1][1] / 1e9, device=str(dev))
    if dev.type == 'cuda':
        res.update(peak_allocated_gb=torch.cuda.max_memory_allocated(dev) / 1e9, peak_reserved_gb=torch.cuda.max_memory_reserved(dev) / 1e9,
                   used_beyond_context_gb=used_peak / 1e9, gpu=torch.cuda.get_device_name(dev))
    print(f"{res['s_per_step']:.2f} s/step at {tokens:,} video tokens (+{a.text_len} text tokens)")
    if dev.type == 'cuda':
        print(f"peak GPU memory: {res['peak_allocated_gb']:.2f} GB allocated, {res['peak_reserved_gb']:.2f} GB reserved by torch; "
              f"{res['used_beyond_context_gb']:.2f} GB used beyond the CUDA context (sampled after each step); estimate {res['estimate_gb']:.2f} GB")
    print(json.dumps(res))
    if a.json:
        from videorecipes.videoio import atomic_path
        with atomic_path(a.json) as tmp: tmp.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == '__main__': sys.exit(main())
