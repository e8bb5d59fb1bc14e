"""A two-network method for tests/test_train_engine.py, run as a script (under torchrun or not):

    python tests/engine_two_nets.py [--kill_at N] [--nan_rank R --nan_at S] TRAINING FLAGS...

A *generator* (the tiny DiT, with an EMA) learns flow matching on the data and steps every 2nd step; a *critic* (a second
tiny DiT) steps every step, learning flow matching on the generator's one-step denoised samples (detached). Both are
Wan DiTs, so under torchrun both are sharded by FSDP and run sequence parallel. `final/` holds both networks.
"""
import os, signal, sys
import torch
from videorecipes.config import parse_args
from videorecipes.zoo import load_transformer
from videorecipes.train.method import FlowMatchingMethod, Network, OptimizerSpec, prepare_dit
from videorecipes.train.flow import flow_matching_loss, sample_generators
from videorecipes.train.trainer import train, NonFiniteLossError


class GeneratorCritic(FlowMatchingMethod):
    name = 'generator_critic'
    nan_rank, nan_at = None, None

    def setup(self, device):
        super().setup(device)
        load = lambda: prepare_dit(load_transformer(self.cfg.model.model_path, dtype='fp32').to(device), self.cfg)
        self.dit, self.critic = load(), load()

    def networks(self): return [Network('generator', self.dit), Network('critic', self.critic, ema=False)]
    def optimizers(self): return [OptimizerSpec('generator', 'generator', every=2), OptimizerSpec('critic', 'critic')]

    def train_step(self, step, batches, loop):
        t, batch = self.cfg.training, next(batches)
        due = 'generator' in self.optimizers_due(step)
        with loop.autocast(), torch.set_grad_enabled(due):
            g_loss, info = self.flow(batch, step)
            fake = (info['noisy'] - info['sigma'].to(self.device).view(-1, 1, 1, 1, 1) * info['pred']).detach()
        with loop.autocast():
            c_loss, _ = flow_matching_loss(self.critic, dict(batch, latents=fake), sample_generators(t.seed, step, 1, batch['indices']),
                                           t.weighting_scheme, t.discrete_flow_shift, device=self.device)
        rank = int(os.environ.get('RANK', 0))
        if step == self.nan_at and rank == self.nan_rank: c_loss = c_loss * float('nan')   # one rank's critic goes NaN
        loop.backward(c_loss, 'critic'); loop.step('critic')
        if due: loop.backward(g_loss, 'generator'); loop.step('generator')
        return {}

    def save_final(self, folder):
        from pathlib import Path
        from videorecipes.parallel.parallelize import export_transformer
        from videorecipes.train.full import write_pipeline_folder
        g, c = export_transformer(self.dit), export_transformer(self.critic)   # collectives
        if g is None: return Path(folder)
        out = write_pipeline_folder(self.cfg.model.model_path, g, Path(folder) / 'generator')
        c.save_pretrained(Path(folder) / 'critic', safe_serialization=True)
        return Path(folder)


if __name__ == '__main__':
    argv, kill_at = sys.argv[1:], None
    def opt(name):
        global argv
        if name not in argv: return None
        i = argv.index(name); v = int(argv[i + 1]); argv = argv[:i] + argv[i + 2:]; return v
    kill_at, GeneratorCritic.nan_rank, GeneratorCritic.nan_at = opt('--kill_at'), opt('--nan_rank'), opt('--nan_at')
    cfg = parse_args(argv)
    def on_step(step, loss):
        if step == kill_at and int(os.environ.get('RANK', 0)) == 0: os.kill(os.getpid(), signal.SIGKILL)
    try: train(cfg, GeneratorCritic(cfg), progress=False, on_step=on_step)
    except NonFiniteLossError as e:
        print(f"rank {os.environ.get('RANK', 0)} stopped: {e}", flush=True)
        sys.exit(3)
