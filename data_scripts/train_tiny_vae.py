#!/usr/bin/env python
"""Train the tiny Wan VAE of the model zoo on synthetic videos and write it into the package.

    python data_scripts/train_tiny_vae.py                     # the committed weights (3000 steps: ~15 min alone on 2 CPU cores, 30 min shared)
    python data_scripts/train_tiny_vae.py --steps 200 --out /tmp/vae   # a quick look

The VAE is the real diffusers `AutoencoderKLWan` (causal 3D convolutions, 4x temporal and 8x spatial
compression, 16 latent channels, as in Wan2.1) at a small width, with the residual down/up blocks of the Wan2.2
VAE (`is_residual=True`: parameter-free space-to-channel shortcuts around each resampling). Without those
shortcuts a from-scratch Wan2.1-style VAE this small sits at the "predict the mean colour" plateau (~10 dB) for
hundreds of steps; with them it learns in minutes. It is trained as a plain autoencoder on the posterior mean
(plus a tiny KL term that keeps the posterior well defined), on a mix of single frames (the first, image-like
chunk) and 5/9-frame clips (causal temporal chunks), on real mp4 files written by
`videorecipes.synthetic.make_synthetic_dataset`, and scored by PSNR on held-out clips (other seeds, 17 frames at
64x64) decoded from mp4. The per-channel latent mean and std over the training clips are stored as `latents_mean`/`latents_std` in
the config, exactly where diffusers keeps them for the real Wan VAE. Weights are saved in fp16 (< 5 MB).
"""
import argparse, json, math, random, sys, time
from pathlib import Path
import numpy as np
import torch

def psnr(a, b):
    "PSNR in dB between two tensors in [-1, 1]."
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))

def load_clips(folder, n, seed, frames, size):
    from videorecipes.synthetic import make_synthetic_dataset
    from videorecipes.videoio import read_video
    folder = Path(folder)
    if not (folder / 'videos2caption.json').exists():
        make_synthetic_dataset(folder, num_videos=n, seed=seed, num_frames=frames, height=size, width=size)
    ents = json.loads((folder / 'videos2caption.json').read_text())
    vids = np.stack([read_video(folder / 'videos' / e['path'])[0] for e in ents])
    return torch.from_numpy(vids).permute(0, 4, 1, 2, 3).contiguous()  # [N,3,T,H,W] uint8

def to_model(x): return x.float() / 127.5 - 1

def decode_unclamped(vae, z):
    "`AutoencoderKLWan._decode` without its final clamp to [-1, 1], which would zero the gradient of saturated pixels."
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    outs = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        outs.append(vae.decoder(x[:, :, i:i+1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(i == 0)))
    vae.clear_cache()
    return torch.cat(outs, 2)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(Path(__file__).resolve().parents[1] / 'videorecipes' / 'assets' / 'tiny_vae'))
    ap.add_argument('--work', default='.cache/tiny_vae_data', help='where the synthetic mp4s are written')
    ap.add_argument('--steps', type=int, default=3000)
    ap.add_argument('--frames_per_batch', type=int, default=24, help='frames per step: 12 single frames, 4 clips of 5 or 2 clips of 9')
    ap.add_argument('--crop', type=int, default=32, help='random spatial crop for training (the VAE is convolutional)')
    ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--base_dim', type=int, default=14)
    ap.add_argument('--num_train', type=int, default=384)
    ap.add_argument('--num_heldout', type=int, default=32)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--log_every', type=int, default=100)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads); torch.manual_seed(a.seed); rng = random.Random(a.seed)
    from diffusers import AutoencoderKLWan
    train = load_clips(Path(a.work) / 'train', a.num_train, 1000, 17, 64)
    held = load_clips(Path(a.work) / 'heldout', a.num_heldout, 2000, 17, 64)
    print(f"train clips {tuple(train.shape)}, held-out clips {tuple(held.shape)}", flush=True)
    vae = AutoencoderKLWan(base_dim=a.base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                           temperal_downsample=[False, True, True], is_residual=True,
                           latents_mean=[0.0] * 16, latents_std=[1.0] * 16)
    print(f"VAE parameters: {sum(p.numel() for p in vae.parameters())/1e6:.2f} M", flush=True)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    warm = 50
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s / a.steps, 1)))))

    def evaluate(n=16):
        n = min(n, len(held))
        vae.eval()
        with torch.no_grad():
            x = to_model(held[:n])
            rec = torch.cat([vae.decode(vae.encode(x[i:i+4]).latent_dist.mode()).sample for i in range(0, n, 4)])
        vae.train()
        return psnr(rec, x)

    t0 = time.time()
    for step in range(1, a.steps + 1):
        T = rng.choices([1, 5, 9], weights=[0.4, 0.3, 0.3])[0]
        idx = [rng.randrange(len(train)) for _ in range(max(1, a.frames_per_batch // (2 if T == 1 else T)))]  # 12 frames, 4x5, 2x9
        clips = []
        for i in idx:
            t = rng.randrange(0, 17 - T + 1); y = rng.randrange(0, 64 - a.crop + 1); x = rng.randrange(0, 64 - a.crop + 1)
            c = train[i, :, t:t+T, y:y+a.crop, x:x+a.crop]
            clips.append(c.flip(-1) if rng.random() < 0.5 else c)
        x = to_model(torch.stack(clips))
        post = vae.encode(x).latent_dist
        rec = decode_unclamped(vae, post.mode())
        kl = post.kl().mean() / x[0].numel()
        loss = (rec - x).pow(2).mean() + 0.1 * (rec - x).abs().mean() + 1e-4 * kl
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step(); sched.step()
        if step % a.log_every == 0 or step == a.steps:
            print(f"step {step:5d}  loss {loss.item():.5f}  train-psnr {psnr(rec.detach(), x):.2f}  "
                  f"held-out psnr {evaluate(8):.2f} dB  {time.time()-t0:.0f}s", flush=True)

    # latent statistics for normalisation, as diffusers stores them for Wan
    vae.eval()
    with torch.no_grad():
        zs = torch.cat([vae.encode(to_model(train[i:i+8])).latent_dist.mode() for i in range(0, min(len(train), 128), 8)])
    mean = zs.mean(dim=(0, 2, 3, 4)); std = zs.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=[round(v, 5) for v in mean.tolist()], latents_std=[round(v, 5) for v in std.tolist()])
    final = evaluate(len(held))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    vae.to(torch.float16).save_pretrained(out, safe_serialization=True)
    report = dict(heldout_psnr_db=round(final, 3), heldout_clips=len(held), clip_shape=[17, 64, 64], steps=a.steps,
                  frames_per_batch=a.frames_per_batch, crop=a.crop, base_dim=a.base_dim, train_clips=len(train), seconds=round(time.time() - t0),
                  params=sum(p.numel() for p in vae.parameters()), torch=torch.__version__)
    (out / 'training_report.json').write_text(json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)

if __name__ == '__main__':
    sys.exit(main())
