#!/usr/bin/env python
"""The training loop's overhead, measured side by side in one process: `videorecipes.train.trainer.train` (full finetune
of the tiny zoo DiT, with the CPU demo's flags: 9x32x32 clips, batch 16, prompts of 32 tokens, AdamW, clipping, cosine
schedule, per-sample noise, logging every step to JSONL and TensorBoard) against a bare PyTorch loop on the same DiT,
the same shapes and the same AdamW, fed with tensors already in memory.

    python launchers/bench_loop.py                      # 2 threads, 300 steps
    python launchers/bench_loop.py --data DIR --steps 500

Both run in one process, strictly alternating: after each trainer step (timed from the end of the previous one, so its
flush, logging and bookkeeping count) the trainer's `on_step` callback times one step of the bare loop. The figure is the
ratio of the medians of their seconds per step, after 10 steps of warm-up.
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path
import torch


class BareLoop:
    "The 20-line loop: DiT forward, MSE to a velocity target, backward, AdamW step; on tensors already in memory."
    def __init__(self, zoo, batch=16, text=32, seed=0):
        from videorecipes.zoo import load_transformer
        torch.manual_seed(seed)
        self.dit = load_transformer(zoo, dtype='fp32').train()
        self.opt = torch.optim.AdamW(self.dit.parameters(), lr=3e-3, weight_decay=0)
        self.x, self.ctx = torch.randn(batch, 16, 3, 4, 4), torch.randn(batch, text, self.dit.config.text_dim)
        self.noise, self.sigma = torch.randn_like(self.x), torch.rand(batch)

    def step(self):
        s = self.sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - s) * self.x + s * self.noise
        pred = self.dit(hidden_states=noisy, timestep=self.sigma * 1000, encoder_hidden_states=self.ctx, return_dict=False)[0]
        loss = (pred.float() - (self.noise - self.x)).pow(2).mean()
        loss.backward()
        self.opt.step(); self.opt.zero_grad(set_to_none=True)


def side_by_side(zoo, data, out, steps):
    "Per-step seconds of `train` (the demo's flags) and of the bare loop, alternating step by step in one run."
    from videorecipes.config import parse_args
    from videorecipes.train.trainer import train
    flags = ['--model_path', zoo, '--data_path', data, '--output_dir', out, '--num_frames', 9, '--num_height', 32, '--num_width', 32,
             '--text_max_length', 32, '--train_batch_size', 16, '--dataloader_num_workers', 0, '--mixed_precision', 'no',
             '--report_to', 'tensorboard', '--weighting_scheme', 'shift', '--discrete_flow_shift', 3, '--lr_scheduler', 'cosine',
             '--lr_warmup_steps', 20, '--weight_decay', 0, '--cfg_rate', 0.1, '--learning_rate', 3e-3, '--max_train_steps', steps,
             '--checkpointing_steps', 10 * steps]
    bare, times, mark = BareLoop(zoo), dict(trainer=[], bare=[]), [None]
    def on_step(step, loss):   # the trainer's step ran from the end of the last callback to now (flush and logging included)
        now = time.perf_counter()
        if mark[0] is not None: times['trainer'].append(now - mark[0])
        t0 = time.perf_counter(); bare.step(); times['bare'].append(time.perf_counter() - t0)
        mark[0] = time.perf_counter()
    train(parse_args([str(f) for f in flags]), progress=False, on_step=on_step)
    return times


def make_data(root, zoo, n):
    from videorecipes.config import parse_args
    from videorecipes.demo import make_colour_dataset
    from videorecipes.data.preprocess import preprocess_dataset
    make_colour_dataset(root / 'clips', n, 0, 9, 32, 32)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'clips', '--data_path', root / 'data', '--num_frames', 9,
                                   '--num_height', 32, '--num_width', 32, '--text_max_length', 32, '--text_precision', 'fp32',
                                   '--samples_per_file', 64, '--preprocess_video_batch_size', 8, '--preprocess_num_workers', 0]), progress=False)
    return root / 'data'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--data', default=None, help='a preprocessed 9x32x32 / 32-token dataset (default: 384 demo clips, made here)')
    ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--num_videos', type=int, default=384)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from videorecipes.zoo import tiny_zoo
    zoo = tiny_zoo('t2v')
    root = Path(tempfile.mkdtemp(prefix='bench_loop_'))
    data = a.data or make_data(root, zoo, a.num_videos)
    t = side_by_side(zoo, data, root / 'run', a.steps + 10)
    mb, ml = statistics.median(t['bare'][10:]), statistics.median(t['trainer'][10:])
    print(json.dumps(dict(threads=a.threads, steps=a.steps, bare_s_per_step=round(mb, 5), trainer_s_per_step=round(ml, 5), ratio=round(ml / mb, 3))))


if __name__ == '__main__':
    main()
