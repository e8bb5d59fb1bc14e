"""LoRA length extension through the real loop: radial attention where it should be (the extended forward, not the
base one), exact resume of both loaders, Ulysses SP 2 with activation checkpointing and FSDP 2 (2 gloo processes)
against one process, radial self-attention on I2V, the seed's config file, and data of the wrong length refused."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from videorecipes.config import parse_args, ConfigError, attention_backend_name
from videorecipes.train.trainer import train, read_metrics

from helpers import ROOT, ENV, torchrun_train, i2v_runner, stop_and_resume


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    from videorecipes.recipes.length_data import create_dataset, preprocess_lengths
    root = tmp_path_factory.mktemp('lenext')
    zoo = tiny_zoo('t2v')
    create_dataset(root / 'data', num_samples=8, progress=False)
    preprocess_lengths(root / 'data', zoo, 32, ['--text_precision', 'fp32', '--preprocess_num_workers', 0], progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')


def flags(d, out, *extra):
    return [str(x) for x in ['--method', 'length_extension', '--model_path', d['zoo'], '--data_dir', d['data'], '--extended_num_frames', 33,
                             '--base_num_frames', 9, '--height', 32, '--width', 32, '--text_max_length', 32, '--train_batch_size', 2,
                             '--dataloader_num_workers', 0, '--cfg_rate', 0, '--mixed_precision', 'no', '--lora_rank', 8, '--lora_alpha', 8,
                             '--learning_rate', 3e-3, '--max_train_steps', 4, '--checkpointing_steps', 2, '--report_to', 'none',
                             '--pattern', 'radial', '--radial_block_size', 4, '--radial_split_threshold', 4, '--dense_layers', 1,
                             '--consistency_weight', 0.5, '--output_dir', out, *extra]]


def metrics(out): return {r['step']: {k: v for k, v in r.items() if k != 's_per_step'} for r in read_metrics(out)}


@pytest.mark.parametrize('pattern,calls', [('radial', 3), ('dense', 0)])
def test_radial_runs_at_the_extended_length_only(data, tmp_path, monkeypatch, pattern, calls):
    "Per step: the extended forward runs the block-sparse kernel in blocks 1-3 (block 0 is dense); the base and consistency forwards never do."
    import videorecipes.kernels.radial as radial
    seen, real = [], radial.block_sparse_attention
    def spy(q, *a, **k): seen.append(q.shape[1]); return real(q, *a, **k)
    monkeypatch.setattr(radial, 'block_sparse_attention', spy)
    train(parse_args(flags(data, tmp_path / 'run', '--max_train_steps', 2, '--pattern', pattern)), progress=False)
    assert seen == [36] * calls * 2   # 9 latent frames x 4 tokens, twice (two steps)


def test_exact_resume_of_both_lengths(data, tmp_path):
    "Stopped after step 3 and resumed from checkpoint-2: every logged value of every step equals the uninterrupted run's."
    train(parse_args(flags(data, tmp_path / 'ref')), progress=False)
    stop_and_resume(lambda out, *x: flags(data, out, *x), tmp_path / 'run', 3, 'latest')
    a, b = metrics(tmp_path / 'ref'), metrics(tmp_path / 'run')
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and all({'base_loss', 'extended_loss', 'consistency_loss'} <= set(a[s]) for s in a)
    assert a == b


@pytest.mark.multiproc
def test_sequence_parallel_with_checkpointing_matches_one_process(data, tmp_path):
    "Ulysses SP 2 (each rank all tokens of half the heads: the radial mask unchanged) with full activation checkpointing = one process."
    ac = ['--enable_gradient_checkpointing_type', 'full', '--max_train_steps', 3]
    train(parse_args(flags(data, tmp_path / 'one', *ac)), progress=False)
    torchrun_train(flags(data, tmp_path / 'sp', *ac, '--num_gpus', 2, '--sp_size', 2))
    a, b = metrics(tmp_path / 'one'), metrics(tmp_path / 'sp')
    for s in a:
        for k in ('loss', 'extended_loss', 'base_loss', 'consistency_loss', 'grad_norm'): assert b[s][k] == pytest.approx(a[s][k], rel=2e-4, abs=1e-6), (s, k)


@pytest.mark.multiproc
def test_fsdp_data_parallel_matches_one_process_and_picks_best_model(data, tmp_path):
    "FSDP over 2 data-parallel ranks (a clip each) = one process with both clips; validation loss and best_model/ agree too."
    val = tmp_path / 'val.json'; val.write_text(json.dumps(['a red circle moving right on a blue background']))
    v = ['--log_validation', 'True', '--validation_steps', 2, '--validation_dataset_file', val, '--validation_sampling_steps', 2]
    train(parse_args(flags(data, tmp_path / 'one', *v)), progress=False)
    torchrun_train(flags(data, tmp_path / 'dp', *v, '--num_gpus', 2, '--train_batch_size', 1))
    a, b = metrics(tmp_path / 'one'), metrics(tmp_path / 'dp')
    for s in a:
        for k in ('loss', 'extended_loss', 'base_loss'): assert b[s][k] == pytest.approx(a[s][k], rel=2e-4), (s, k)
    va, vb = ([json.loads(l) for l in (tmp_path / r / 'validation_loss.jsonl').read_text().splitlines()] for r in ('one', 'dp'))
    assert [r['step'] for r in va] == [r['step'] for r in vb] == [2, 4]
    assert all(x['loss'] == pytest.approx(y['loss'], rel=2e-4) and x['best'] == y['best'] for x, y in zip(va, vb))
    from diffusers import WanPipeline
    for r in ('one', 'dp'):
        WanPipeline.from_pretrained(data['zoo']).load_lora_weights(tmp_path / r / 'best_model')
        assert len(list((tmp_path / r / 'validation' / 'base' / 'step-000004').glob('*.mp4'))) == 1


def test_radial_on_i2v_self_attention():
    "I2V: the image tokens are cross-attention context (dense); self-attention over the video is radial, and trains."
    from videorecipes.kernels.radial import RadialAttention
    from videorecipes.parallel.attention import get_attention_backend
    dit, run = i2v_runner()
    small = dict(block_size=4, split_threshold=4)
    ref = run(get_attention_backend('sdpa'))   # (not diffusers' processor: it takes the last 512 context tokens as text)
    torch.testing.assert_close(run(RadialAttention(dense_layers=len(dit.blocks), **small)), ref, rtol=1e-5, atol=1e-5)
    assert (run(RadialAttention(**small)) - ref).abs().max() > 1e-4
    run(RadialAttention(**small), grad=True).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in dit.parameters() if p.grad is not None)


def test_the_seeds_config_file(data):
    "launchers/configs/lora_length_extension.json has the seed's keys; flags override it."
    cfg = parse_args(['--config', ROOT / 'launchers' / 'configs' / 'lora_length_extension.json', '--data_dir', data['data'], '--lora_rank', 8])
    assert (cfg.model.model_path, cfg.training.num_frames, cfg.training.num_height, cfg.training.num_width) == ('Wan-AI/Wan2.1-T2V-14B-Diffusers', 161, 768, 1280)
    assert (cfg.length_extension.base_num_frames, cfg.lora.lora_rank, cfg.lora.lora_alpha, cfg.radial.decay_factor) == (69, 8, 64, 0.2)
    assert attention_backend_name(cfg) == 'radial' and cfg.training.num_train_epochs == 100 and cfg.training.gradient_accumulation_steps == 4


def test_base_data_of_the_wrong_length_is_refused(data, tmp_path):
    with pytest.raises(ConfigError, match=r'--base_num_frames 13 .*expect latents of 4x4x4 .*--base_data_path .*latents/base holds 3x4x4'):
        train(parse_args(flags(data, tmp_path / 'run', '--base_num_frames', 13)), progress=False)


def test_benchmark_scripts_run():
    "The mask benchmark checks bit-identity (exit 1 otherwise); the attention benchmark's small mode runs its implementations on a CPU."
    p = subprocess.run([sys.executable, 'launchers/bench_radial_mask.py', '--frames', '9', '--tokens_per_frame', '300', '--block_size', '64',
                        '--repeat', '1'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and 'identical: True' in p.stdout, p.stdout + p.stderr
    p = subprocess.run([sys.executable, 'launchers/bench_radial_attention.py', '--small'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.count('sparsity') == 3, p.stdout + p.stderr
    assert all(float(l.split('max |diff| ')[1]) < 1e-5 for l in p.stdout.splitlines() if 'max |diff|' in l)
