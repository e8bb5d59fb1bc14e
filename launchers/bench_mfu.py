#!/usr/bin/env python
"""One full-finetune step of the Wan2.1 T2V 1.3B DiT (random init) at 81 frames of 480x832: tokens/s, model FLOPs
utilisation and peak memory (issue 6's GPU benchmark).

    python launchers/bench_mfu.py                      # on a GPU: bf16 autocast over fp32 master weights, full checkpointing
    python launchers/bench_mfu.py --compile_blocks     # torch.compile each block
    torchrun --nproc_per_node 4 launchers/bench_mfu.py --sp_size 4   # Ulysses SP over 4 GPUs (tokens/s per GPU reported)
    python launchers/bench_mfu.py --flops_only         # the FLOP count alone (no GPU needed)
    python launchers/bench_mfu.py --tiny --device cpu --steps 2   # smoke test of the script on the tiny DiT

The step is the trainer's: `parallelize_wan` (checkpointing, compile, FSDP/SP under torchrun), the flow-matching loss
(`train.flow.flow_matching_loss`), backward, AdamW on fp32 master weights.

FLOPs (counted, not measured). Per transformer block, with S video tokens, L = 512 text tokens, width D, FFN width F
(a matmul of [m,k]x[k,n] is 2mkn FLOPs):
    self-attention projections q,k,v,o    8 S D^2
    self-attention scores QK^T and AV     4 S^2 D
    cross-attention q,o projections       4 S D^2
    cross-attention k,v of the text       4 L D^2
    cross-attention scores and AV         4 S L D
    FFN (D -> F -> D)                     4 S D F
plus the patch embedding (2 S D C p), output projection (2 S D C p) and text embedder (2 L (4096 D + D^2)).
Training = 3 x forward (backward is two matmuls per forward matmul). The recomputation that full checkpointing adds
is *not* counted (model FLOPs, as in PaLM's MFU), so MFU = 3 x forward FLOPs / step time / peak bf16 FLOP/s.
For Wan2.1 1.3B (D 1536, F 8960, 30 blocks, 12 heads) at 21x30x52 = 32,760 tokens: 283.0 TFLOP forward (70% of it the
S^2 attention), 849 TFLOP per training step; 45% MFU on an H100 (989 dense bf16 TFLOP/s) would be 1.91 s/step, 17.2k tokens/s.
"""
import argparse, json, math, os, sys, time

# dense bf16 FLOP/s by the exact name `torch.cuda.get_device_name()` reports: an H100 PCIe is not an SXM H100
PEAK_BF16 = {'NVIDIA H100 80GB HBM3': 989e12, 'NVIDIA H100 PCIe': 756e12, 'NVIDIA H100 NVL': 835e12, 'NVIDIA H200': 989e12,
             'NVIDIA H200 NVL': 835e12, 'NVIDIA GH200 480GB': 989e12, 'NVIDIA A100-SXM4-80GB': 312e12, 'NVIDIA A100-SXM4-40GB': 312e12,
             'NVIDIA A100 80GB PCIe': 312e12, 'NVIDIA A100-PCIE-40GB': 312e12, 'NVIDIA L40S': 362e12, 'NVIDIA B200': 2250e12}


def peak_for(gpu:str, override_tflops=None):
    "(the table entry used, or why none, and its peak dense bf16 FLOP/s or None): exact names only."
    if override_tflops: return f'--peak_tflops {override_tflops}', override_tflops * 1e12
    if gpu in PEAK_BF16: return gpu, PEAK_BF16[gpu]
    return f'none: {gpu!r} is not in PEAK_BF16 (pass --peak_tflops)', None


def forward_flops(cfg:dict, frames:int, height:int, width:int, text_len:int=512) -> dict:
    "FLOPs of one forward of the DiT on one sample, by part (see the module docstring for the formula)."
    pt, ph, pw = cfg['patch_size']
    D = cfg['num_attention_heads'] * cfg['attention_head_dim']
    F, N, C, L = cfg['ffn_dim'], cfg['num_layers'], cfg['in_channels'], text_len
    lt, lh, lw = (frames - 1) // 4 + 1, height // 8, width // 8
    S = (lt // pt) * (lh // ph) * (lw // pw)
    per = dict(self_proj=8 * S * D * D, self_attn=4 * S * S * D, cross_proj=4 * S * D * D + 4 * L * D * D,
               cross_attn=4 * S * L * D, ffn=4 * S * D * F)
    parts = {k: v * N for k, v in per.items()}
    parts['embed_head'] = 2 * S * D * C * pt * ph * pw * 2 + 2 * L * (cfg['text_dim'] * D + D * D)
    return dict(tokens=S, parts=parts, total=sum(parts.values()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='Wan2.1-T2V-1.3B', help='a name of videorecipes.zoo.WAN_MODELS')
    ap.add_argument('--tiny', action='store_true', help='the tiny zoo DiT instead (smoke test)')
    ap.add_argument('--frames', type=int, default=81); ap.add_argument('--height', type=int, default=480); ap.add_argument('--width', type=int, default=832)
    ap.add_argument('--steps', type=int, default=6, help='timed steps (after --warmup)'); ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--checkpointing', default='full', choices=['full', 'none']); ap.add_argument('--every_n', type=int, default=1)
    ap.add_argument('--compile_blocks', action='store_true'); ap.add_argument('--sp_size', type=int, default=1)
    ap.add_argument('--device', default=None); ap.add_argument('--peak_tflops', type=float, default=None, help='peak dense bf16 TFLOP/s of the GPU')
    ap.add_argument('--flops_only', action='store_true'); ap.add_argument('--out', default=None, help='write the figures as JSON here')
    a = ap.parse_args(argv)
    import torch
    from videorecipes.zoo import transformer_config
    cfg = transformer_config('tiny-t2v' if a.tiny else a.model)
    if a.tiny: a.frames, a.height, a.width = min(a.frames, 9), min(a.height, 32), min(a.width, 32)
    fl = forward_flops(cfg, a.frames, a.height, a.width)
    print(f"{'tiny' if a.tiny else a.model}: {a.frames}x{a.height}x{a.width} -> {fl['tokens']:,} tokens; forward "
          f"{fl['total'] / 1e12:.1f} TFLOP/sample (" + ', '.join(f"{k} {v / fl['total']:.0%}" for k, v in fl['parts'].items()) + ')')
    if a.flops_only: return 0
    device = a.device or ('cuda' if torch.cuda.is_available() else None)
    if device is None: sys.exit("bench_mfu.py needs a CUDA GPU (or --device cpu with --tiny for a smoke test, or --flops_only)")
    from diffusers import WanTransformer3DModel
    from videorecipes.config import parse_args
    from videorecipes.parallel.mesh import ParallelDims, init_distributed, build_mesh, close_distributed, is_main
    from videorecipes.parallel.parallelize import parallelize_wan
    from videorecipes.train.flow import flow_matching_loss, step_generator
    rank, world = init_distributed()
    flags = ['--num_gpus', world, '--sp_size', a.sp_size, '--mixed_precision', 'bf16' if device.startswith('cuda') else 'no',
             '--compile_blocks', a.compile_blocks, '--gradient_checkpointing_every_n', a.every_n]
    if a.checkpointing == 'full': flags += ['--enable_gradient_checkpointing_type', 'full']
    c = parse_args([str(x) for x in flags])
    dims = ParallelDims.from_config(c, world); build_mesh(dims)
    if device == 'cuda': device = f'cuda:{torch.cuda.current_device()}'
    torch.manual_seed(0)
    with torch.device(device): dit = WanTransformer3DModel.from_config(cfg).float()
    n_params = sum(p.numel() for p in dit.parameters())
    dit = parallelize_wan(dit.train(), dims, c)
    opt = torch.optim.AdamW([p for p in dit.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    lt, lh, lw = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    batch = dict(latents=torch.randn(1, 16, lt, lh, lw), text_embeddings=torch.randn(1, 512, cfg['text_dim']),
                 text_mask=torch.ones(1, 512, dtype=torch.bool), indices=torch.tensor([0]))
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if device.startswith('cuda') else torch.autocast('cpu', enabled=False)
    sync = torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)
    if device.startswith('cuda'): torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(a.warmup + a.steps):
        sync(); t0 = time.perf_counter()
        with amp: loss, _ = flow_matching_loss(dit, batch, step_generator(0, i), device=device)
        (loss * dims.loss_scale).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        sync(); dt = time.perf_counter() - t0
        if i >= a.warmup: times.append(dt)
        if is_main(): print(f"step {i + 1}: {dt:.3f} s, loss {loss.item():.4f}{'  (warm-up)' if i < a.warmup else ''}")
    step_s = sorted(times)[len(times) // 2]
    train_flops = 3 * fl['total'] / dims.sp          # each SP rank does 1/sp of the sample's work
    gpu = torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'
    peak_entry, peak = peak_for(gpu, a.peak_tflops)
    if is_main(): print(f'peak bf16 FLOP/s from: {peak_entry}')
    res = dict(model='tiny' if a.tiny else a.model, device=gpu, world=world, sp=a.sp_size, params=n_params, tokens=fl['tokens'],
               checkpointing=a.checkpointing, every_n=a.every_n, compile=a.compile_blocks, median_step_s=step_s,
               tokens_per_s_per_gpu=fl['tokens'] / dims.sp / step_s, train_tflop_per_step_per_gpu=train_flops / 1e12,
               achieved_tflops_per_gpu=train_flops / step_s / 1e12, peak_tflops=peak / 1e12 if peak else None, peak_entry=peak_entry,
               mfu=train_flops / step_s / peak if peak else None,
               peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if device.startswith('cuda') else None)
    if is_main():
        print(json.dumps(res, indent=1))
        if a.out:
            with open(a.out, 'w') as f: json.dump(res, f, indent=1)
    close_distributed()
    return 0


if __name__ == '__main__': sys.exit(main())
