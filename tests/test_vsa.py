"""VSA through the real loop: FSDP 2 and Ulysses SP 2 with activation checkpointing (2 gloo processes) against one
process, exact resume, the sparsity schedule as the loop sees it, LoRA with the gates trainable or frozen, the gates
surviving final/, reload and LoRA export into sampling, I2V, and the generate command."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file
from videorecipes.config import parse_args
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.train.trainer import train, read_metrics
from videorecipes.train.method import BACKEND_FILE

from helpers import ROOT, ENV, torchrun_train, i2v_runner, stop_and_resume
SIZE = ['--num_frames', 33, '--num_height', 128, '--num_width', 128]     # 9 x 8 x 8 tokens: 12 tiles (3 x 2 x 2)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('vsa')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=4, num_frames=33, height=128, width=128, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data', *SIZE,
                                   '--text_max_length', 32, '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')


def flags(d, out, *extra):
    return [str(x) for x in ['--model_path', d['zoo'], '--data_path', d['data'], *SIZE, '--text_max_length', 32, '--train_batch_size', 2,
                             '--dataloader_num_workers', 0, '--cfg_rate', 0, '--mixed_precision', 'no', '--learning_rate', 1e-3,
                             '--max_train_steps', 3, '--checkpointing_steps', 1, '--report_to', 'none', '--attention_backend', 'vsa',
                             '--VSA_sparsity', 0.75, '--output_dir', out, *extra]]


def metrics(out): return {r['step']: {k: v for k, v in r.items() if k != 's_per_step'} for r in read_metrics(out)}


def gates(folder): return load_file(str(Path(folder) / BACKEND_FILE))


def test_vsa_runs_in_the_loop_at_the_scheduled_sparsity(data, tmp_path, monkeypatch):
    "Each self-attention runs VSA at the schedule's sparsity of its step (0.25, 0.5, 0.75 at steps 1-3): 9, 6, 3 of the 12 tiles kept."
    import videorecipes.kernels.vsa as vsa
    seen, real = [], vsa.select_tiles
    def spy(scores, k): seen.append(k); return real(scores, k)
    monkeypatch.setattr(vsa, 'select_tiles', spy)
    train(parse_args(flags(data, tmp_path / 'run', '--VSA_decay_rate', 0.25, '--VSA_decay_interval_steps', 1)), progress=False)
    assert seen == [9] * 4 + [6] * 4 + [3] * 4          # the tiny DiT's 4 blocks, each step
    assert [m['vsa_sparsity'] for m in metrics(tmp_path / 'run').values()] == [0.25, 0.5, 0.75]   # and metrics.jsonl says so


def test_exact_resume_and_the_gates_in_every_checkpoint(data, tmp_path):
    "Stopped after step 2 and resumed from checkpoint-1: every logged value equals the uninterrupted run's; the gates trained."
    train(parse_args(flags(data, tmp_path / 'ref')), progress=False)
    stop_and_resume(lambda out, *x: flags(data, out, *x), tmp_path / 'run', 2, tmp_path / 'run' / 'checkpoint-1')
    assert metrics(tmp_path / 'ref') == metrics(tmp_path / 'run')
    a, b = gates(tmp_path / 'ref' / 'final'), gates(tmp_path / 'run' / 'final')
    assert len(a) == 8 and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.abs().sum() > 0 for v in a.values())                          # trained away from zero
    w = load_file(str(tmp_path / 'ref' / 'final' / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    assert not any('gate' in k for k in w)                                     # diffusers' weights stay diffusers'


def test_gates_reload_into_training_and_sampling(data, tmp_path):
    "final/ as --model_path gives the next run its gates back (frozen by --VSA_train_gate False: kept exactly); the sampler loads them and they matter."
    train(parse_args(flags(data, tmp_path / 'a')), progress=False)
    g = gates(tmp_path / 'a' / 'final')
    train(parse_args(flags(data, tmp_path / 'b', '--model_path', tmp_path / 'a' / 'final', '--VSA_train_gate', 'False')), progress=False)
    b = gates(tmp_path / 'b' / 'final')
    assert b.keys() == g.keys() and all(torch.equal(b[k], g[k]) for k in g)
    from videorecipes.zoo import load_transformer
    from videorecipes.kernels.vsa import apply_vsa
    from videorecipes.parallel.attention import backend_parameters
    dit = load_transformer(tmp_path / 'a' / 'final', dtype='fp32').eval()
    h = apply_vsa(dit, 0.75, [tmp_path / 'a' / 'final'])
    assert h.gates_from == [str(tmp_path / 'a' / 'final' / BACKEND_FILE)]
    assert all(torch.equal(p, g[k]) for k, p in backend_parameters(dit).items())
    x, txt, t = torch.randn(1, 16, 9, 16, 16), torch.randn(1, 32, dit.config.text_dim), torch.tensor([600.])
    with torch.no_grad():
        out = dit(x, t, txt, return_dict=False)[0]
        for p in backend_parameters(dit).values(): p.zero_()
        assert (dit(x, t, txt, return_dict=False)[0] - out).abs().max() > 1e-6


@pytest.mark.parametrize('train_gate', [True, False])
def test_lora_with_gates_trainable_or_frozen(data, tmp_path, train_gate):
    "A LoRA run writes the adapter and the gates beside it (trained, or zero when frozen); generation loads both."
    lora = ['--lora_training', 'True', '--lora_rank', 4, '--lora_alpha', 4, '--VSA_train_gate', str(train_gate)]
    r = train(parse_args(flags(data, tmp_path / 'lora', *lora)), progress=False)
    g = gates(r.final)
    assert all((v.abs().sum() > 0) == train_gate for v in g.values())
    assert not any('gate' in k for k in load_file(str(r.final / 'pytorch_lora_weights.safetensors')))
    from videorecipes.sampling import generate_cli
    paths = generate_cli(['--model_path', data['zoo'], '--lora_checkpoint_dir', r.final, '--attention_backend', 'vsa', '--VSA_sparsity', 0.75,
                          '--prompt', 'a red circle moving right on a blue background', '--num_frames', 33, '--height', 128, '--width', 128,
                          '--num_inference_steps', 2, '--text_max_length', 32, '--output_dir', tmp_path / 'gen'])
    assert len(paths) == 1 and paths[0].stat().st_size > 0


@pytest.mark.multiproc
def test_sequence_parallel_and_fsdp_match_one_process(data, tmp_path):
    "Ulysses SP 2 with full activation checkpointing (each rank: every token, in tile order, of half the heads), and FSDP over 2 data-parallel ranks (a clip each) = one process; so do the trained gates."
    ac = ['--enable_gradient_checkpointing_type', 'full']
    train(parse_args(flags(data, tmp_path / 'one', *ac)), progress=False)
    torchrun_train(flags(data, tmp_path / 'sp', *ac, '--num_gpus', 2, '--sp_size', 2))
    torchrun_train(flags(data, tmp_path / 'dp', '--num_gpus', 2, '--train_batch_size', 1))
    a = metrics(tmp_path / 'one')
    for run in ('sp', 'dp'):
        b = metrics(tmp_path / run)
        for s in a:
            for k in ('loss', 'grad_norm'): assert b[s][k] == pytest.approx(a[s][k], rel=5e-4, abs=1e-6), (run, s, k)
        ga, gb = gates(tmp_path / 'one' / 'final'), gates(tmp_path / run / 'final')
        assert all(torch.allclose(ga[k], gb[k], rtol=1e-3, atol=1e-6) for k in ga), run


def test_vsa_on_i2v_self_attention():
    "I2V: the CLIP image tokens stay cross-attention context (dense); self-attention is VSA (dense at sparsity 0 with zero gates), and trains."
    from videorecipes.parallel.attention import get_attention_backend
    from videorecipes.kernels.vsa import VideoSparseAttention
    dit, run = i2v_runner((1, 36, 9, 16, 16))      # 9 x 8 x 8 tokens: 12 tiles
    ref = run(get_attention_backend('sdpa'))
    torch.testing.assert_close(run(VideoSparseAttention(0.0)), ref, rtol=1e-4, atol=1e-4)
    assert (run(VideoSparseAttention(0.75)) - ref).abs().max() > 1e-4
    run(VideoSparseAttention(0.75), grad=True).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in dit.parameters() if p.grad is not None)
    assert all(p.grad is not None for n, p in dit.named_parameters() if 'to_gate_compress' in n)


def test_the_launcher_and_the_benchmark():
    "launchers/finetune_vsa_t2v.sh is FastVideo's recipe; the benchmark runs (tiny shape, CPU) and prints its ratio."
    from videorecipes.train.cli import launcher_argv
    cfg = parse_args(launcher_argv('finetune_vsa_t2v') + ['--num_gpus', 4], prog='test')
    assert (cfg.engine.attention_backend, cfg.vsa.VSA_sparsity, cfg.vsa.VSA_decay_rate, cfg.vsa.VSA_decay_interval_steps) == ('vsa', 0.9, 0.03, 50)
    assert (cfg.optimizer.learning_rate, cfg.training.discrete_flow_shift, cfg.training.num_frames, cfg.training.num_height) == (1e-6, 1.0, 81, 480)
    p = subprocess.run([sys.executable, str(ROOT / 'launchers' / 'bench_vsa.py'), '--grid', '8', '8', '8', '--heads', '2', '--head_dim', '32', '--repeats', '1'],
                       env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'VSA / dense' in p.stdout and 'tiles/s' in p.stdout
