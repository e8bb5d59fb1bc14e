"""The parallel engine against one process: FSDP, HSDP (1x2, 2x1), Ulysses SP=2 and TP=2 runs under torchrun (2 CPU
processes, gloo) must reproduce the single-process run's losses and final weights; a checkpoint written at world 2
resumes at world 1; a rank killed under `torchrun --max-restarts` restarts from the last checkpoint and completes.

Every run trains the tiny DiT for 4 plain SGD steps (SGD, unlike Adam, would show a gradient off by a constant factor; the
gradient norms are compared too) on 9x48x48 clips: 3 latent frames of 3x3 patches = 27 tokens, an odd
count, so the SP runs also exercise padding. Runs are marked `multiproc` (about 2 minutes in all on 2 cores)."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch
from safetensors.torch import load_file
from helpers import run_torchrun
from videorecipes.config import parse_args
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.multiproc
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', PYTHONWARNINGS='ignore')
STEPS = 4


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('parallel')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=12, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--model_type', 't2v', '--data_merge_path', root / 'merged',
                                   '--data_path', root / 'data', '--num_frames', 9, '--num_height', 48, '--num_width', 48,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')


def flags(d, out, batch, *extra):
    return [str(x) for x in ['--model_path', d['zoo'], '--data_path', d['data'], '--num_frames', 9, '--num_height', 48,
                             '--num_width', 48, '--train_batch_size', batch, '--dataloader_num_workers', 0, '--cfg_rate', 0.2,
                             '--mixed_precision', 'no', '--optimizer', 'torch.optim.SGD', '--learning_rate', 0.05, '--max_grad_norm', 0, '--max_train_steps', STEPS, '--lr_scheduler', 'constant',
                             '--checkpointing_steps', 2, '--report_to', 'none', '--output_dir', out, *extra]]


def run1(args):
    p = subprocess.run([sys.executable, '-m', 'videorecipes.train.cli', *args], env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]


def run2(args, *torchrun_flags, script=None):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', *torchrun_flags]
    cmd += [script] if script else ['-m', 'videorecipes.train.cli']
    p = run_torchrun(cmd + ['--num_gpus', '2', *args], 600, env=ENV)
    errs = [l for l in (p.stdout + p.stderr).splitlines() if "Error" in l or "error:" in l]
    assert p.returncode == 0, "\n".join(errs[-10:]) + p.stderr[-2000:]
    return p


def metrics(out, key): return {r['step']: r[key] for r in map(json.loads, (Path(out) / 'metrics.jsonl').read_text().splitlines())}
def losses(out): return metrics(out, 'loss')
def weights(out): return load_file(str(Path(out) / 'final' / 'transformer' / 'diffusion_pytorch_model.safetensors'))


def same(out, ref, rtol=1e-4, atol=2e-5):
    la, lb = losses(out), losses(ref)
    assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1))
    for s in la: assert la[s] == pytest.approx(lb[s], rel=rtol), (s, la[s], lb[s])
    ga, gb = metrics(out, 'grad_norm'), metrics(ref, 'grad_norm')   # the gradient's scale, not only its direction
    for s in ga: assert ga[s] == pytest.approx(gb[s], rel=rtol), (s, ga[s], gb[s])
    wa, wb = weights(out), weights(ref)
    assert wa.keys() == wb.keys()
    worst = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    assert worst < atol, f"largest weight difference {worst:.2e}"
    base = load_file(str(Path(ref).parent / 'base.safetensors'))
    moved = max((wa[k].float() - base[k].float()).abs().max().item() for k in wa)
    assert moved > 100 * atol, "the weights did not train"   # the comparison is meaningful
    return worst


@pytest.fixture(scope='module')
def refs(data):
    "Single-process references: batch 2 (for data-parallel runs of 2 × 1) and batch 1 (for SP / TP runs)."
    from videorecipes.zoo import load_transformer
    from safetensors.torch import save_file
    r = data['root']
    save_file({k: v.contiguous() for k, v in load_transformer(data['zoo'], dtype='fp32').state_dict().items()}, str(r / 'base.safetensors'))
    run1(flags(data, r / 'ref2', 2)); run1(flags(data, r / 'ref1', 1))
    return dict(b2=r / 'ref2', b1=r / 'ref1')


@pytest.mark.parametrize('name,extra,ref', [
    ('fsdp', [], 'b2'),
    ('hsdp_1x2', ['--hsdp_replicate_dim', 1, '--hsdp_shard_dim', 2], 'b2'),
    ('hsdp_2x1', ['--hsdp_replicate_dim', 2, '--hsdp_shard_dim', 1], 'b2'),
    ('sp2', ['--sp_size', 2], 'b1'),
    ('tp2', ['--tp_size', 2], 'b1'),
])
def test_matches_single_process(data, refs, name, extra, ref):
    out = data['root'] / name
    run2(flags(data, out, 1, *extra))
    worst = same(out, refs[ref])
    print(f"{name}: largest weight difference to one process {worst:.1e}")


def test_save_at_world_2_resume_at_world_1(data, refs):
    "Steps 1-2 with FSDP on 2 ranks × batch 1, steps 3-4 in one process × batch 2: the same run as one process throughout."
    out = data['root'] / 'resume'
    run2(flags(data, out, 1, '--max_train_steps', 2))
    assert (out / 'checkpoint-2' / 'dcp').is_dir()
    run1(flags(data, out, 2, '--resume_from_checkpoint', 'latest'))
    same(out, refs['b2'])


KILLER = textwrap.dedent("""
    import os, signal, sys
    from videorecipes.config import parse_args
    from videorecipes.train.trainer import train
    attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    def on_step(step, loss):   # the first attempt loses rank 1 after step 3 (the checkpoint of step 2 is complete)
        with open(os.environ['TRACE'], 'a') as f: f.write(f"attempt {attempt} rank {os.environ['RANK']} step {step}\\n")
        if step == 3 and os.environ['RANK'] == '1' and attempt == '0':
            os.kill(os.getpid(), signal.SIGKILL)
    train(parse_args(sys.argv[1:]), progress=False, on_step=on_step)
""")


def test_killed_rank_restarts_from_checkpoint(data, refs, tmp_path):
    script = tmp_path / 'killer.py'; script.write_text(KILLER)
    out = data['root'] / 'restart'
    ENV['TRACE'] = str(tmp_path / 'trace.txt')
    # two restarts allowed: on a loaded 2-core machine a restarted gloo group occasionally fails to connect once
    try: run2(flags(data, out, 1, '--resume_from_checkpoint', 'latest'), '--max-restarts', '2', script=str(script))
    finally: del ENV['TRACE']
    trace = [l.split() for l in (tmp_path / 'trace.txt').read_text().splitlines()]   # ['attempt', a, 'rank', r, 'step', s]
    first = sorted((r, s) for _, a, _, r, _, s in trace if a == '0')
    assert ('1', '3') in first and ('0', '4') not in first          # the first attempt lost rank 1 after step 3
    last = max(a for _, a, *_ in trace)
    assert last != '0' and sorted((r, s) for _, a, _, r, _, s in trace if a == last) == [('0', '3'), ('0', '4'), ('1', '3'), ('1', '4')]
    assert not any(a != '0' and s in ('1', '2') for _, a, _, r, _, s in trace)   # restarts resumed from checkpoint-2
    same(out, refs['b2'])


def test_lora_under_sequence_parallel(data, tmp_path):
    "LoRA with SP=2 (FSDP over the frozen base and the adapters) writes the same adapter as one process."
    lora = ['--lora_training', 'True', '--lora_rank', 4, '--learning_rate', 0.5]
    run1(flags(data, tmp_path / 'one', 1, *lora))
    run2(flags(data, tmp_path / 'sp', 1, '--sp_size', 2, *lora))
    a = load_file(str(tmp_path / 'one' / 'final' / 'pytorch_lora_weights.safetensors'))
    b = load_file(str(tmp_path / 'sp' / 'final' / 'pytorch_lora_weights.safetensors'))
    assert a.keys() == b.keys() and len(a) > 0
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max(a[k].abs().max().item() for k in a if 'lora_B' in k) > 1e-3   # the adapters trained (B starts at zero)


FROZEN = textwrap.dedent("""
    import sys, torch
    from videorecipes.config import parse_args
    from videorecipes.zoo import load_transformer
    from videorecipes.parallel.mesh import ParallelDims, init_distributed, build_mesh, close_distributed
    from videorecipes.parallel.parallelize import shard_frozen
    rank, world = init_distributed()
    dims = ParallelDims.from_config(parse_args(['--num_gpus', '2']), world); build_mesh(dims)
    teacher = load_transformer(sys.argv[1], dtype='fp32')
    full = sum(p.numel() for p in teacher.parameters())
    shard_frozen(teacher, dims, 'blocks')
    local = sum(p.to_local().numel() for p in teacher.parameters())
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 16, 3, 6, 6), torch.randn(1, 512, teacher.config.text_dim)
    with torch.no_grad(): out = teacher(x, torch.tensor([400.]), ctx, return_dict=False)[0]
    if rank == 0: torch.save(dict(out=out, full=full, local=local), sys.argv[2])
    close_distributed()
""")


def test_frozen_teacher_sharded(data, tmp_path):
    "A frozen DiT sharded with `shard_frozen` holds half its weights per rank and computes what the whole one computes."
    from videorecipes.zoo import load_transformer
    script = tmp_path / 'frozen.py'; script.write_text(FROZEN)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(data['zoo']), str(tmp_path / 'o.pt')]
    p = run_torchrun(cmd, 300, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    r = torch.load(tmp_path / 'o.pt')
    assert r['local'] < 0.55 * r['full'], (r['local'], r['full'])   # rank 0's share (uneven dims round up)
    t = load_transformer(data['zoo'], dtype='fp32').eval()
    torch.manual_seed(0)
    x, ctx = torch.randn(1, 16, 3, 6, 6), torch.randn(1, 512, t.config.text_dim)
    with torch.no_grad(): ref = t(x, torch.tensor([400.]), ctx, return_dict=False)[0]
    assert torch.allclose(r['out'], ref, atol=1e-5)


def test_bench_mfu_script(tmp_path):
    "The GPU benchmark counts 32,760 tokens for Wan2.1 1.3B at 81x480x832 and runs end to end on the tiny DiT (CPU smoke test)."
    root = Path(__file__).parents[1]
    p = subprocess.run([sys.executable, 'launchers/bench_mfu.py', '--flops_only'], cwd=root, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0 and '32,760 tokens' in p.stdout and '283.0 TFLOP' in p.stdout, p.stdout + p.stderr
    p = subprocess.run([sys.executable, 'launchers/bench_mfu.py', '--tiny', '--device', 'cpu', '--steps', '1', '--warmup', '0',
                        '--out', str(tmp_path / 'r.json')], cwd=root, env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / 'r.json').read_text())
    assert r['tokens'] == 12 and r['tokens_per_s_per_gpu'] > 0 and r['checkpointing'] == 'full'
    p = subprocess.run([sys.executable, 'launchers/bench_mfu.py'], cwd=root, env=dict(ENV, CUDA_VISIBLE_DEVICES=''), capture_output=True, text=True)
    assert p.returncode != 0 and 'needs a CUDA GPU' in p.stderr


I2V_FWD = textwrap.dedent("""
    import sys, torch
    from videorecipes.config import parse_args
    from videorecipes.zoo import load_transformer
    from videorecipes.parallel.mesh import ParallelDims, init_distributed, build_mesh, close_distributed
    from videorecipes.parallel.parallelize import parallelize_wan
    import torch.nn.functional as F
    masked, _sdpa = [], F.scaled_dot_product_attention     # (does any SDPA call get a mask?)
    F.scaled_dot_product_attention = lambda *a, **k: masked.append(k.get('attn_mask') is not None) or _sdpa(*a, **k)
    rank, world = init_distributed()
    outs = {}
    for flag in ('--sp_size', '--tp_size'):
        cfg = parse_args(['--num_gpus', '2', flag, '2', '--mixed_precision', 'no'])
        dims = ParallelDims.from_config(cfg, world); build_mesh(dims)
        dit = parallelize_wan(load_transformer(sys.argv[1], dtype='fp32').eval(), dims, cfg)
        torch.manual_seed(0)   # 3 latent frames of 6x6 = 27 tokens: SP pads; 257 CLIP tokens + 512 text tokens
        x, ctx, img = torch.randn(1, 36, 3, 6, 6), torch.randn(1, 512, dit.config.text_dim), torch.randn(1, 257, dit.config.image_dim)
        with torch.no_grad(): outs[flag] = dit(x, torch.tensor([400.]), ctx, encoder_hidden_states_image=img, return_dict=False)[0]
    if rank == 0: torch.save(dict(outs=outs, masked=any(masked), calls=len(masked)), sys.argv[2])
    close_distributed()
""")


def test_i2v_forward_under_sp_and_tp(tmp_path):
    "The I2V DiT (image cross-attention branch, 36 input channels) computes the same output under SP 2 (27 tokens: padded, without a mask) and TP 2 as in one process."
    from videorecipes.zoo import tiny_zoo, load_transformer
    zoo = tiny_zoo('i2v')
    script = tmp_path / 'i2v.py'; script.write_text(I2V_FWD)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(zoo), str(tmp_path / 'o.pt')]
    p = run_torchrun(cmd, 300, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    saved = torch.load(tmp_path / 'o.pt')
    outs = saved['outs']
    assert saved['calls'] > 0 and not saved['masked']   # SP's padding is cut off the keys, not masked: SDPA can use flash
    t = load_transformer(zoo, dtype='fp32').eval()
    torch.manual_seed(0)
    x, ctx, img = torch.randn(1, 36, 3, 6, 6), torch.randn(1, 512, t.config.text_dim), torch.randn(1, 257, t.config.image_dim)
    with torch.no_grad(): ref = t(x, torch.tensor([400.]), ctx, encoder_hidden_states_image=img, return_dict=False)[0]
    for flag, out in outs.items():
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5), (flag, (out - ref).abs().max().item())


def test_selective_slices_data_parallel(data, tmp_path):
    """--ff under torchrun: 2 ranks × batch 1 train the same slice as one process × batch 2 (losses, gradient norms, slice values),
    with block swapping too; the proxies are replicated and their gradients averaged, the frozen base is not sharded."""
    from videorecipes.train.selective import load_slice
    sel = ['--ff', 0.2, '--ffid', 1, '--learning_rate', 0.5]
    run1(flags(data, tmp_path / 'one', 2, *sel))
    ref = load_slice(tmp_path / 'one' / 'final' / 'slice.safetensors')
    from videorecipes.zoo import load_transformer
    base = dict(load_transformer(data['zoo'], dtype='fp32').named_parameters())
    moved = max((v - base[n].detach().reshape(-1)[ref.indices[n]]).abs().max().item() for n, v in ref.values.items())
    assert moved > 1e-3, "the slice did not train"
    for name, extra in [('dp', []), ('dp_swap', ['--blocks_to_swap', 2])]:
        run2(flags(data, tmp_path / name, 1, *sel, *extra))
        la, lb = losses(tmp_path / name), losses(tmp_path / 'one')
        assert sorted(la) == sorted(lb) == list(range(1, STEPS + 1))
        for s in la: assert la[s] == pytest.approx(lb[s], rel=1e-4), (name, s, la[s], lb[s])
        ga, gb = metrics(tmp_path / name, 'grad_norm'), metrics(tmp_path / 'one', 'grad_norm')
        for s in ga: assert ga[s] == pytest.approx(gb[s], rel=1e-4), (name, s, ga[s], gb[s])
        got = load_slice(tmp_path / name / 'final' / 'slice.safetensors')
        worst = max((got.values[n] - v).abs().max().item() for n, v in ref.values.items())
        assert got.values.keys() == ref.values.keys() and worst < 2e-5, (name, worst)
        print(f"selective {name}: largest slice difference to one process {worst:.1e} (the slice moved {moved:.1e})")
    # a data-parallel run resumed from its step-2 checkpoint (rank 0 wrote the replicated proxies and optimizer state) ends the same
    import shutil
    shutil.copytree(tmp_path / 'dp', tmp_path / 'dp_resume', ignore=shutil.ignore_patterns('checkpoint-4', 'final'))
    p = run2(flags(data, tmp_path / 'dp_resume', 1, *sel, '--resume_from_checkpoint', 'latest'))
    assert 'at step 2' in p.stdout + p.stderr, (p.stdout + p.stderr)[-1500:]
    got = load_slice(tmp_path / 'dp_resume' / 'final' / 'slice.safetensors')
    assert max((got.values[n] - v).abs().max().item() for n, v in ref.values.items()) < 2e-5
    assert sorted(losses(tmp_path / 'dp_resume')) == list(range(1, STEPS + 1))


FSDP_BF16_SCRIPT = '''
import copy, json, sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from videorecipes.zoo import tiny_zoo, load_transformer
from videorecipes.parallel.parallelize import apply_fsdp
from videorecipes.parallel.mesh import process_group_backend, grad_norm
dist.init_process_group(process_group_backend(False).replace('gloo', 'cpu:gloo'))    # the device-keyed form GPUs get ('cpu:gloo,cuda:nccl')
w = torch.zeros(3, requires_grad=True); w.grad = torch.full((3,), float(dist.get_rank() + 1))
norm = float(grad_norm([w]))     # a CPU gradient (what FSDP's CPU offload leaves) reduced by the CPU backend of the group
dit = load_transformer(tiny_zoo('t2v'), 'fp32'); ref = copy.deepcopy(dit)
seen = {}
for name, m in (('fsdp', dit), ('one', ref)):
    m.condition_embedder.timesteps_proj.register_forward_pre_hook(lambda mod, a, name=name: seen.__setitem__(name, a[0].detach().clone()))
apply_fsdp(dit, init_device_mesh('cpu', (2,)), param_dtype=torch.bfloat16)
g = torch.Generator().manual_seed(0)
x, txt, t = torch.randn(1, 16, 3, 6, 6, generator=g), torch.randn(1, 8, 64, generator=g), torch.tensor([999.3])
with torch.no_grad(), torch.autocast('cpu', torch.bfloat16):
    a, b = dit(x, t, txt, return_dict=False)[0], ref(x, t, txt, return_dict=False)[0]
if dist.get_rank() == 0:
    print('RESULT ' + json.dumps(dict(norm=norm, fsdp_t=seen['fsdp'].tolist(), fsdp_dtype=str(seen['fsdp'].dtype), one_t=seen['one'].tolist(),
                                      diff=float((a.float() - b.float()).abs().max()), scale=float(b.float().abs().max()))))
dist.destroy_process_group()
'''


def test_fsdp_bf16_keeps_the_timestep_in_fp32(tmp_path):
    """FSDP2 with a bf16 MixedPrecisionPolicy casts forward inputs by default: the timestep 999.3 reached the model as 1000 on
    multi-GPU runs only. With cast_forward_inputs=False it arrives as one process's does, and the outputs agree (bf16 autocast)."""
    script = tmp_path / 'fsdp_bf16.py'; script.write_text(FSDP_BF16_SCRIPT)
    p = run2([], script=str(script))
    r = json.loads(next(l for l in p.stdout.splitlines() if l.startswith('RESULT '))[7:])
    assert r['fsdp_dtype'] == 'torch.float32' and r['fsdp_t'] == r['one_t'] == [pytest.approx(999.3, abs=1e-4)], r
    assert r['diff'] < 0.02 * r['scale'], r
    assert r['norm'] == pytest.approx(((3 + 12) / 2) ** 0.5, rel=1e-6)   # replicated plain grads: the mean of the ranks' squared norms


def test_fsdp_cpu_offload_in_one_process_is_an_error(monkeypatch):
    "--fsdp_cpu_offload True in one process used to be ignored without a word (there is nothing to shard): now it is a ConfigError."
    from videorecipes.config import ConfigError
    from videorecipes.parallel.mesh import ParallelDims
    from videorecipes.parallel.parallelize import parallelize_wan
    from videorecipes.zoo import tiny_zoo, load_transformer
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)      # (past the CPU-only check, to the one-process one)
    cfg = parse_args(['--fsdp_cpu_offload', 'True', '--mixed_precision', 'no'])
    with pytest.raises(ConfigError, match='a single process shards nothing'): parallelize_wan(load_transformer(tiny_zoo('t2v'), 'fp32'), ParallelDims(), cfg)


def test_bench_mfu_peak_table_is_exact():
    "An H100 PCIe is not matched to the SXM H100's peak; an unknown GPU gets none and says so; --peak_tflops wins."
    import importlib.util
    spec = importlib.util.spec_from_file_location('bench_mfu', Path(__file__).parents[1] / 'launchers' / 'bench_mfu.py')
    b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b)
    assert b.peak_for('NVIDIA H100 80GB HBM3') == ('NVIDIA H100 80GB HBM3', 989e12)
    assert b.peak_for('NVIDIA H100 PCIe')[1] == 756e12
    entry, peak = b.peak_for('NVIDIA H100 something new')
    assert peak is None and 'not in PEAK_BF16' in entry
    assert b.peak_for('NVIDIA H100 PCIe', 500.0) == ('--peak_tflops 500.0', 500e12)


FOUND_INF_SCRIPT = '''
import json, sys, torch, torch.distributed as dist
from pathlib import Path
from videorecipes.train.trainer import agree_found_inf
dist.init_process_group('gloo')
r, out = dist.get_rank(), {}
for agree in (False, True):
    w = torch.nn.Parameter(torch.ones(4)); opt = torch.optim.SGD([w], lr=0.1)
    s = torch.amp.GradScaler('cpu', init_scale=8.0)
    s.scale(torch.ones(()))                                                 # (the scale starts lazily)
    w.grad = torch.full((4,), float('inf') if r == 1 else 8.0)             # only rank 1's (scaled) gradient overflows
    s.unscale_(opt)
    if agree: agree_found_inf(s, opt)
    s.step(opt); s.update()
    out[str(agree)] = dict(stepped=bool((w.detach() != 1).any()), scale=s.get_scale())
(Path(sys.argv[1]) / f'result{r}.json').write_text(json.dumps(out))   # (a file per rank: two ranks printing to one pipe interleave)
dist.destroy_process_group()
'''


def test_fp16_ranks_agree_on_skipping_a_step(tmp_path):
    "With fp16 a GradScaler skips a step when a gradient overflows; an overflow on one rank only made the other rank step alone (TP ranks drift apart). After `agree_found_inf` all skip."
    script = tmp_path / 'found_inf.py'; script.write_text(FOUND_INF_SCRIPT)
    p = run_torchrun([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(tmp_path)], 300, env=ENV)
    assert p.returncode == 0, p.stderr[-2000:]
    r = {str(k): json.loads((tmp_path / f'result{k}.json').read_text()) for k in (0, 1)}
    assert r['0']['False']['stepped'] and not r['1']['False']['stepped']          # the fault: rank 0 stepped, rank 1 skipped
    assert not r['0']['True']['stepped'] and not r['1']['True']['stepped']        # agreed: both skip
    assert r['0']['True']['scale'] == r['1']['True']['scale'] == 4.0              # and both back off the scale
