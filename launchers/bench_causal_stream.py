#!/usr/bin/env python
"""Streaming speed of a causal Wan student: time to the first chunk, seconds per chunk and frames/s, with the full KV cache
and with the rolling one (nbs/64_recipes.self_forcing.ipynb). Random weights at a named model's shapes (no checkpoint
needed): the work per chunk is the same as a trained model's.

  python launchers/bench_causal_stream.py                                  # GPU: Wan2.1-T2V-1.3B at 480x832, 2x 81 frames
  python launchers/bench_causal_stream.py --model tiny-t2v --height 256 --width 256 --latent_frames 24 --device cpu --dtype fp32
"""
import argparse, json, time
import torch

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='Wan2.1-T2V-1.3B', help="a videorecipes.zoo model name (random weights), e.g. tiny-t2v")
    ap.add_argument('--height', type=int, default=480); ap.add_argument('--width', type=int, default=832)
    ap.add_argument('--latent_frames', type=int, default=42, help="frames to stream (the 1.3B recipe trains on 21: 81 frames)")
    ap.add_argument('--chunk', type=int, default=3); ap.add_argument('--steps', type=int, default=4)
    ap.add_argument('--local_attn_size', type=int, default=21); ap.add_argument('--sink_size', type=int, default=3)
    ap.add_argument('--dtype', default='bf16', choices=('bf16', 'fp16', 'fp32'))
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--decode', type=int, default=1, help="1: decode each chunk with a (random) Wan2.1 VAE, as streaming does")
    ap.add_argument('--json', default=None, help="also write the results here")
    a = ap.parse_args()
    from diffusers import WanTransformer3DModel, AutoencoderKLWan
    from videorecipes.zoo import transformer_config, as_dtype
    from videorecipes.kernels.causal import make_causal, chunk_forward
    from videorecipes.recipes.self_forcing import causal_rollout, StreamingDecoder
    from videorecipes.recipes.dmd2 import student_sigmas
    from videorecipes.data.loader import LatentStats
    dev, dt = torch.device(a.device), as_dtype(a.dtype)
    torch.manual_seed(0)
    with torch.device(dev): dit = WanTransformer3DModel(**transformer_config(a.model)).to(dt).eval()
    vae = AutoencoderKLWan().to(dev, dt).eval() if a.decode else None
    sig = student_sigmas([1000, 750, 500, 250][:a.steps], 5.0).to(dev)
    text = torch.randn(1, 512, dit.config.text_dim, device=dev, dtype=dt)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == 'cuda' else (lambda: None)
    res = dict(model=a.model, height=a.height, width=a.width, latent_frames=a.latent_frames, frames=(a.latent_frames - 1) * 4 + 1,
               chunk=a.chunk, steps=a.steps, dtype=a.dtype, device=str(torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'), runs={})
    for name, local, sink in (('full cache', -1, 0), ('rolling cache', a.local_attn_size, a.sink_size)):
        h = make_causal(dit, a.chunk, local, sink)
        for warm in (True, False):
            n = a.chunk if warm else a.latent_frames
            noise = torch.randn(1, 16, n, a.height // 8, a.width // 8, generator=torch.Generator().manual_seed(0)).to(dev, dt)
            cache, dec, times, nframes = h.backend.new_cache(dit), StreamingDecoder(vae, LatentStats.load(vae)) if vae else None, [], [0]
            batch = dict(text_embeddings=text)
            run = lambda x, s, f, w: chunk_forward(dit, batch, x.to(dt), s, cache, f, w)
            def done(frame, x0):
                if dec is not None: nframes.append(nframes[-1] + dec(x0.to(dt)).shape[2])
                sync(); times.append(time.perf_counter())
            sync(); t0 = time.perf_counter()
            with torch.no_grad(): causal_rollout(run, noise, sig, a.chunk, [torch.Generator().manual_seed(1)], on_chunk=done)
            if dec is not None: dec.close()
        per = [b - x for x, b in zip([t0] + times, times)]
        res['runs'][name] = dict(local_attn_size=local, sink_size=sink, first_chunk_s=round(per[0], 4), chunk_s=[round(x, 4) for x in per],
                                 total_s=round(times[-1] - t0, 3), fps=round(nframes[-1] / (times[-1] - t0), 2) if vae else None,
                                 latent_fps=round(a.latent_frames / (times[-1] - t0), 2),
                                 max_memory_GiB=round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == 'cuda' else None)
        h.remove()
        if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    for name, r in res['runs'].items():
        c = r['chunk_s']
        print(f"{name:14s} window {r['local_attn_size']:>3} sink {r['sink_size']}: first chunk {r['first_chunk_s']:.3f}s; chunk s first/mid/last "
              f"{c[0]:.3f}/{c[len(c) // 2]:.3f}/{c[-1]:.3f}; {r['total_s']:.2f}s for {res['frames']} frames = {r['fps']} frames/s "
              f"({r['latent_fps']} latent frames/s); peak {r['max_memory_GiB']} GiB\n    seconds per chunk: {' '.join(f'{x:.3f}' for x in c)}")
    print(json.dumps(res))
    if a.json:
        with open(a.json, 'w') as f: json.dump(res, f, indent=1)

if __name__ == '__main__': main()
