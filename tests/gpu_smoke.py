"""The GPU smoke test (issue 19): the paths that only run on CUDA, on the tiny zoo, in a few minutes on one H100/H200.

    pytest tests/gpu_smoke.py -v -s            # on a machine with a GPU (two GPUs add the last step)

Every test is marked `cuda` and skips with its reason where there is none (this file is not part of `tests/run.sh`'s
collection: it is run by name). The steps:
 1. NCCL start-up, the mesh, a barrier, `mean_over_dp`;
 2. `parallelize_wan`-style FSDP2 with bf16 mixed precision, checkpointing, compile, autocast and AdamW: losses equal the
    eager run's, and the timestep reaches the model in fp32;
 3. the same with FSDP's CPU offload;
 4. fp16 with a GradScaler: an injected inf skips the step, the run goes on;
 5. a DCP checkpoint round trip: a run stopped and resumed ends where an uninterrupted one does;
 6. SP and TP on 1-rank groups: forward and backward equal to the plain model's;
 7. block swapping with prefetch 0 and 1: bit-identical to no swapping, masters pinned, peak memory with and without
    checkpointing and with fp32 vs bf16 frozen weights (printed);
 8. a 2-step validation;
 9. the preprocessing encoders on the GPU (two clips);
10. LoRA extraction on CUDA;
11. one step of `bench_mfu` and `bench_selective_14b` at tiny size;
12. with two GPUs: the group steps on 2 ranks (real reduce-scatter and all-to-all) and a 2-GPU FSDP + SP training run.
"""
import json, os, subprocess, sys, textwrap, time
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU smoke test needs a CUDA GPU")]
ENV = dict(os.environ, OMP_NUM_THREADS='4', PYTHONWARNINGS='ignore')
SHAPE = ['--num_frames', 17, '--num_height', 64, '--num_width', 64]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    "Step 9: four synthetic clips through the tiny zoo's encoders on the GPU."
    from videorecipes.config import parse_args
    from videorecipes.data.preprocess import preprocess_dataset, list_shards
    from videorecipes.synthetic import make_synthetic_dataset
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('gpu')
    make_synthetic_dataset(root / 'merged', num_videos=4, progress=False)
    t0 = time.time()
    preprocess_dataset(parse_args(['--model_path', tiny_zoo('t2v'), '--data_merge_path', root / 'merged', '--data_path', root / 'data',
                                   *SHAPE, '--preprocess_num_workers', 0, '--preprocess_device', 'cuda', '--text_precision', 'bf16']),
                       progress=False)
    assert list_shards(root / 'data')
    print(f"[9] preprocessing 4 clips on {torch.cuda.get_device_name()}: {time.time() - t0:.1f} s")
    (root / 'val.json').write_text(json.dumps([dict(caption='a red circle moving right on a blue background')]))
    return dict(root=root, data=root / 'data', zoo=tiny_zoo('t2v'))


def _flags(d, out, *extra):
    return ['--model_path', d['zoo'], '--data_path', d['data'], *SHAPE, '--train_batch_size', 2, '--dataloader_num_workers', 0,
            '--cfg_rate', 0, '--learning_rate', 1e-3, '--max_train_steps', 4, '--checkpointing_steps', 2, '--report_to', 'none',
            '--output_dir', out, *extra]


def _train(args, **kw):
    from videorecipes.config import parse_args
    from videorecipes.train.trainer import train
    return train(parse_args(args), progress=False, **kw)


GROUP_SCRIPT = textwrap.dedent('''
    import copy, json, os, torch, torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from videorecipes.parallel.mesh import init_distributed, build_mesh, barrier, mean_over_dp, ParallelDims
    from videorecipes.parallel.parallelize import apply_fsdp, apply_ac, apply_compile, apply_tp
    from videorecipes.parallel.attention import enable_sequence_parallel, get_attention_backend
    from videorecipes.zoo import tiny_zoo, load_transformer
    rank, world = init_distributed()                                                      # 1. NCCL start-up
    dev = torch.device('cuda', torch.cuda.current_device())
    dims = ParallelDims(world, 1, world, 1, 1); build_mesh(dims, 'cuda'); barrier()
    out = dict(backend=dist.get_backend(), world=world, mean=mean_over_dp(float(rank), dims))
    g = torch.Generator().manual_seed(0)
    x, txt = torch.randn(2, 16, 5, 8, 8, generator=g).to(dev), torch.randn(2, 16, 64, generator=g).to(dev)
    t = torch.tensor([999.3, 412.6], device=dev)
    def run(m, steps=3, compiled=False):
        seen = []
        m.condition_embedder.timesteps_proj.register_forward_pre_hook(lambda mod, a: seen.append(str(a[0].dtype)))
        opt, losses = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4), []
        for _ in range(steps):
            with torch.autocast('cuda', torch.bfloat16):
                loss = m(x, t, txt, return_dict=False)[0].float().pow(2).mean()
            loss.backward(); opt.step(); opt.zero_grad(set_to_none=True); losses.append(loss.item())
        return losses, sorted(set(seen))
    base = load_transformer(tiny_zoo('t2v'), 'fp32')
    eager, _ = run(copy.deepcopy(base).to(dev))
    for name, offload in (('fsdp', False), ('fsdp_offload', True)):                       # 2., 3.
        m = copy.deepcopy(base).to(dev)
        apply_ac(m, 'full', 1, False); apply_compile(m)
        apply_fsdp(m, init_device_mesh('cuda', (world,)), param_dtype=torch.bfloat16, cpu_offload=offload)
        out[name], out[name + '_timestep_dtype'] = run(m)
    out['eager'] = eager
    grp = dist.new_group(list(range(world)))                                              # 6. SP and TP
    ref = copy.deepcopy(base).to(dev)
    for name in ('sp', 'tp'):
        m = copy.deepcopy(base).to(dev)
        if name == 'sp': enable_sequence_parallel(m, grp, get_attention_backend('sdpa'))
        else: apply_tp(m, init_device_mesh('cuda', (world,)))
        a, b = m(x, t, txt, return_dict=False)[0], ref(x, t, txt, return_dict=False)[0]
        a.float().pow(2).mean().backward(); b.float().pow(2).mean().backward()
        gm = {n: (p.grad.full_tensor() if hasattr(p.grad, 'full_tensor') else p.grad) for n, p in m.named_parameters()}
        out[name] = dict(fwd=float((a - b).abs().max()), bwd=max(float((gm[n] - p.grad).abs().max()) for n, p in ref.named_parameters()))
        ref.zero_grad(set_to_none=True)
    if rank == 0: print('RESULT ' + json.dumps(out))
    dist.destroy_process_group()
''')


def _group_steps(tmp_path, n):
    script = tmp_path / 'group.py'; script.write_text(GROUP_SCRIPT)
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(n), str(script)],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(next(l for l in p.stdout.splitlines() if l.startswith('RESULT '))[7:])
    print(f"[1-3, 6] {n} rank(s):", json.dumps(r))
    assert r['backend'] == 'nccl' and r['mean'] == pytest.approx((n - 1) / 2)
    for name in ('fsdp', 'fsdp_offload'):
        assert r[name + '_timestep_dtype'] == ['torch.float32'], r            # (cast_forward_inputs=False)
        assert r[name] == pytest.approx(r['eager'], rel=2e-2), (name, r[name], r['eager'])   # bf16 params vs fp32 + autocast
    for name in ('sp', 'tp'): assert r[name]['fwd'] < 2e-3 and r[name]['bwd'] < 2e-3, (name, r[name])
    return r


def test_group_steps_on_one_gpu(tmp_path):
    "Steps 1, 2, 3 and 6 in a 1-rank NCCL group."
    _group_steps(tmp_path, 1)


def test_fp16_inf_skips_the_step(data, tmp_path):
    "Step 4: fp16 with a GradScaler; an inf gradient at step 2 leaves the weights as step 1 left them, and the run continues."
    from videorecipes.train.full import FullFinetune
    from videorecipes.config import parse_args
    snaps = {}
    class InfAt2(FullFinetune):
        def loss(self, batch, step, micro=0, opt='main'):
            loss, logs = super().loss(batch, step, micro, opt)
            if step == 2: next(self.dit.parameters()).register_hook(lambda g: torch.full_like(g, float('inf')))
            return loss, logs
    cfg = parse_args(_flags(data, tmp_path / 'fp16', '--mixed_precision', 'fp16', '--checkpointing_steps', 0))
    m = InfAt2(cfg)
    from videorecipes.train.trainer import train
    r = train(cfg, method=m, progress=False,
              on_step=lambda s, l: snaps.__setitem__(s, {n: p.detach().clone() for n, p in m.dit.named_parameters()}))
    assert all(torch.equal(snaps[1][n], snaps[2][n]) for n in snaps[1]), "the inf step was not skipped"
    assert any(not torch.equal(snaps[2][n], snaps[3][n]) for n in snaps[2]) and len(r.losses) == 4


def test_dcp_round_trip(data, tmp_path):
    "Step 5: stopped after step 3 and resumed from its DCP checkpoint (every rank's state, the CUDA RNG) = uninterrupted."
    from tests.helpers import stop_and_resume
    from videorecipes.zoo import load_transformer
    flags = lambda out, *x: _flags(data, out, '--mixed_precision', 'bf16', '--max_train_steps', 5, *x)
    _train(flags(tmp_path / 'straight'))
    stop_and_resume(flags, tmp_path / 'resumed', 3, 'latest')
    a, b = (load_transformer(tmp_path / d / 'final', 'fp32').state_dict() for d in ('straight', 'resumed'))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"[5] resumed vs uninterrupted: max |Δw| = {diff:.2e}")
    assert diff < 1e-5


def test_block_swapping_on_the_gpu(data):
    "Step 7: swap ≡ no swap (prefetch 0 and 1), pinned masters, and the peak memory of each plan (printed)."
    from videorecipes.train.blockswap import BlockSwapper
    from videorecipes.train.flow import flow_matching_loss, step_generator
    from videorecipes.zoo import load_transformer
    g = torch.Generator().manual_seed(0)
    batch = dict(latents=torch.randn(2, 16, 5, 8, 8, generator=g), text_embeddings=torch.randn(2, 16, 64, generator=g),
                 text_mask=torch.ones(2, 16, dtype=torch.long))
    def run(swap, prefetch=1, ckpt=False, dtype='fp32'):
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        dit = load_transformer(data['zoo'], dtype).train().requires_grad_(False)
        dit.blocks[0].requires_grad_(True)
        if ckpt: dit.enable_gradient_checkpointing()
        sw = BlockSwapper(dit, swap, 'cuda', prefetch=prefetch) if swap else None
        if sw is None: dit.to('cuda')
        else: assert all(buf.is_pinned() for buf, _ in sw.flat.values())
        with torch.autocast('cuda', torch.bfloat16):
            loss, _ = flow_matching_loss(dit, batch, step_generator(0, 1), device=torch.device('cuda'))
        loss.backward(); torch.cuda.synchronize()
        grads = {n: p.grad.clone() for n, p in dit.named_parameters() if p.grad is not None}
        if sw is not None: sw.remove()
        return loss.detach(), grads, torch.cuda.max_memory_allocated()
    ref = run(0)
    for pf in (0, 1):
        got = run(3, pf)
        assert torch.equal(got[0], ref[0]) and all(torch.equal(got[1][n], ref[1][n]) for n in ref[1]), f"prefetch {pf}"
    peaks = {f'swap 3, checkpointing {c}, {d}': run(3, 1, c, d)[2] / 2**20 for c in (False, True) for d in ('fp32', 'bf16')}
    print('[7] peak MiB:', json.dumps(peaks))


def test_validation_and_extraction(data, tmp_path):
    "Steps 8 and 10: a 2-step validation at the end of a run, and a LoRA extracted on CUDA that rebuilds the finetune."
    from videorecipes.lora_tools import extract_lora, merge_lora
    from videorecipes.zoo import load_transformer
    r = _train(_flags(data, tmp_path / 'val', '--mixed_precision', 'bf16', '--log_validation', 'True', '--validation_dataset_file',
                      data['root'] / 'val.json', '--validation_steps', 4, '--validation_sampling_steps', 2))
    assert list((tmp_path / 'val' / 'validation').rglob('*.mp4'))
    t0 = time.time()
    ad = extract_lora(data['zoo'], r.final, full_rank=True, full_deltas=True, device='cuda', progress=False)
    merged = merge_lora(data['zoo'], ad, tmp_path / 'merged')
    print(f"[10] full-rank extraction and merge on CUDA: {time.time() - t0:.1f} s")
    a, b = load_transformer(merged, 'fp32').state_dict(), load_transformer(r.final, 'fp32').state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


@pytest.mark.parametrize('cmd', [['launchers/bench_mfu.py', '--tiny', '--steps', '1', '--warmup', '0'],
                                 ['launchers/bench_selective_14b.py', '--model', 'tiny-t2v', '--blocks_to_swap', '2', '--steps', '1']])
def test_benchmarks_run_one_step(cmd):
    "Step 11: the benchmarks at tiny size."
    p = subprocess.run([sys.executable, *cmd], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    print(f"[11] {cmd[0]}:", p.stdout[-800:])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="the 2-GPU mode needs two GPUs")
def test_two_gpus(data, tmp_path):
    "Step 12: the group steps on 2 ranks (real reduce-scatter and all-to-all), and a 2-GPU FSDP + SP run with validation."
    _group_steps(tmp_path, 2)
    args = [str(x) for x in _flags(data, tmp_path / 'two', '--num_gpus', 2, '--sp_size', 2, '--mixed_precision', 'bf16',
                                   '--log_validation', 'True', '--validation_dataset_file', data['root'] / 'val.json',
                                   '--validation_steps', 4, '--validation_sampling_steps', 2)]
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m',
                        'videorecipes.train.cli', *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / 'two' / 'final' / 'model_index.json').exists() and list((tmp_path / 'two' / 'validation').rglob('*.mp4'))
