#!/usr/bin/env python
"""DiT time per video of a DMD2 student against its teacher, with and without VSA, side by side in one process
(nbs/63_recipes.dmd2.ipynb; random weights: the time does not depend on them).

  python launchers/bench_dmd.py                                   # Wan2.1 T2V 1.3B at 81x480x832 (21 x 30 x 52 tokens), bf16
  python launchers/bench_dmd.py --tiny --frames 9 --height 32 --width 32 --teacher_steps 4 --device cpu   # a CPU check

The teacher takes --teacher_steps steps, each two DiT forwards (classifier-free guidance: with and without the
prompt); the student takes its --student_steps steps, one forward each. The same DiT is timed dense (SDPA) and with VSA
at --sparsity (VSA's fine stage: FlexAttention or the `vsa` package on a GPU, the masked-SDPA reference on a CPU,
which is slower than dense: there the VSA row only shows that the path runs). VAE decoding and text encoding are not
counted (FastVideo's "DiT time"; it reports 95.2 s for 50 steps, 2.88 s with DMD and 0.98 s with VSA + DMD + compile on
an H200).
"""
import argparse, time
import torch


def timed(fn, sync):
    fn(); sync()                               # warm-up (compilation, allocator)
    t0 = time.perf_counter(); fn(); sync()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', default='Wan2.1-T2V-1.3B'); ap.add_argument('--tiny', action='store_true', help='the tiny zoo DiT instead')
    ap.add_argument('--frames', type=int, default=81); ap.add_argument('--height', type=int, default=480); ap.add_argument('--width', type=int, default=832)
    ap.add_argument('--teacher_steps', type=int, default=50); ap.add_argument('--student_steps', type=int, default=3)
    ap.add_argument('--sparsity', type=float, default=0.8); ap.add_argument('--text_len', type=int, default=512)
    ap.add_argument('--compile', action='store_true', help='torch.compile each block'); ap.add_argument('--device', default=None)
    a = ap.parse_args()
    from diffusers import WanTransformer3DModel
    from videorecipes.zoo import transformer_config
    from videorecipes.kernels.vsa import apply_vsa
    dev = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = torch.bfloat16 if dev.type == 'cuda' else torch.float32
    sync = torch.cuda.synchronize if dev.type == 'cuda' else (lambda: None)
    cfg = transformer_config('tiny-t2v' if a.tiny else a.model)
    with torch.device(dev): dit = WanTransformer3DModel.from_config(cfg).to(dtype).eval().requires_grad_(False)
    if a.compile:
        from videorecipes.parallel.parallelize import apply_compile
        apply_compile(dit)
    lt, h, w = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, cfg['in_channels'], lt, h, w, device=dev, dtype=dtype, generator=g)
    text = torch.randn(1, a.text_len, cfg['text_dim'], device=dev, dtype=dtype, generator=g)
    def sample(steps, cfg_forwards):
        def run():
            with torch.no_grad():
                for i in range(steps):
                    t = torch.tensor([1000.0 * (1 - i / steps)], device=dev)
                    for _ in range(cfg_forwards): dit(x, t, text, return_dict=False)
        return run
    rows = []
    for att in ('dense', f'VSA {a.sparsity}'):
        if att != 'dense': handle = apply_vsa(dit, a.sparsity)
        tt = timed(sample(a.teacher_steps, 2), sync)
        ts = timed(sample(a.student_steps, 1), sync)
        rows.append((att, tt, ts))
    name = 'tiny zoo DiT' if a.tiny else a.model
    print(f"{dev.type} {torch.cuda.get_device_name() if dev.type == 'cuda' else ''} {dtype}: {name}, {a.frames}x{a.height}x{a.width} "
          f"({lt} x {h // 2} x {w // 2} tokens), compile {a.compile}")
    print("| attention | teacher, %d steps x 2 (CFG) | student, %d steps | speedup |" % (a.teacher_steps, a.student_steps))
    print("|---|---|---|---|")
    for att, tt, ts in rows: print(f"| {att} | {tt:.2f} s | {ts:.3f} s | {tt / ts:.1f}x |")
    print(f"student with VSA vs teacher dense: {rows[0][1] / rows[1][2]:.1f}x")


if __name__ == '__main__':
    main()
