"""What several test files share: a run stopped after a step and resumed, `videorecipes-train` under torchrun (2 gloo
processes), and a tiny I2V DiT run under an attention backend."""
import os, subprocess, sys
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', PYTHONWARNINGS='ignore')


EXIT_ABORT = 'terminate called without an active exception'

def run_torchrun(cmd, timeout=600, env=None, **kw):
    """`subprocess.run(cmd)` of a torchrun command, run once more if a child aborted with the gloo exit-time crash
    (`EXIT_ABORT`, SIGABRT after its work; pytorch/pytorch#179291). Seen twice in 2-worker suite runs, never alone."""
    env = ENV if env is None else env
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if p.returncode != 0 and EXIT_ABORT in p.stderr:
        print(f"torchrun child aborted at exit ({EXIT_ABORT!r}); running it again: {' '.join(map(str, cmd[:8]))} ...", file=sys.stderr)
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    return p


def torchrun_train(args, timeout=900):
    "Run `videorecipes-train args` in 2 processes (torchrun --standalone); fails the test with the stderr tail."
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'videorecipes.train.cli', *map(str, args)]
    p = run_torchrun(cmd, timeout, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]


def i2v_runner(latent_shape=(1, 36, 9, 4, 4), seed=0):
    "(dit, run): the tiny I2V DiT and `run(backend, grad=False)`, its output on fixed inputs under `backend` (kept installed when grad)."
    from videorecipes.zoo import tiny_zoo, load_transformer
    from videorecipes.parallel.attention import set_attention
    dit = load_transformer(tiny_zoo('i2v'), dtype='fp32')
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(*latent_shape, generator=g), torch.tensor([400.])
    txt, img = torch.randn(1, 16, dit.config.text_dim, generator=g), torch.randn(1, 257, dit.config.image_dim, generator=g)
    def run(backend, grad=False):
        h = set_attention(dit, backend)
        try:
            with torch.set_grad_enabled(grad): return dit(x, t, txt, img, return_dict=False)[0]
        finally:
            if not grad: h.remove()
    return dit, run


def stop_and_resume(flags, out, stop_at, resume):
    "Train `flags + --output_dir out`, raise out of the loop after step `stop_at` (a crash), then train again with `--resume_from_checkpoint resume`."
    import pytest
    from videorecipes.config import parse_args
    from videorecipes.train.trainer import train
    class Stop(Exception): pass
    def stop(step, loss):
        if step == stop_at: raise Stop
    with pytest.raises(Stop): train(parse_args(flags(out)), progress=False, on_step=stop)
    return train(parse_args(flags(out, '--resume_from_checkpoint', resume)), progress=False)
