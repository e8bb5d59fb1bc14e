"Selective finetuning (--ff/--ffid) and block swapping: property-based selection tests, training through the trainer, swap ≡ no swap, slice files, resume, the benchmark's CPU side."
import math, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, HealthCheck
from videorecipes.config import parse_args, ConfigError
from videorecipes.train import selective as S
from videorecipes.train.selective import (select, tensor_kind, num_slices, slice_budget, keyed_permutation, _cumulative, SelectiveFinetune,
                                          load_slice, save_slice, apply_slice, estimate_memory, model_hash)
from videorecipes.train.trainer import train, read_metrics, list_checkpoints
from videorecipes.zoo import tiny_zoo, load_transformer, transformer_config

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')


@pytest.fixture(scope='module')
def tiny_shapes():
    from diffusers import WanTransformer3DModel
    with torch.device('meta'): dit = WanTransformer3DModel(**transformer_config('tiny-t2v'))
    return S._shapes(dit)


# --- selection: properties ------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ff=st.floats(1e-4, 1.0, allow_nan=False), data=st.data(), kinds=st.sampled_from([('attn', 'ffn'), ('all',), ('attn',), ('ffn', 'norm', 'bias')]))
def test_selection_deterministic_disjoint_exact(tiny_shapes, ff, data, kinds):
    "Same (model, F, K) → same elements; different K never overlap; every slice has exactly the budget, spread by tensor size."
    m = num_slices(ff)
    k1 = data.draw(st.integers(0, m - 1)); k2 = data.draw(st.integers(0, m - 1).filter(lambda k: k != k1)) if m > 1 else None
    a = select(tiny_shapes, ff, k1, kinds)
    again = select(dict(reversed(list(tiny_shapes.items()))), ff, k1, kinds)   # order of the input does not matter
    assert all(torch.equal(a.indices[n], again.indices[n]) for n in a.indices)
    assert a.count == a.budget == slice_budget(a.n_eligible, ff) and abs(a.budget - ff * a.n_eligible) < 1 + 1e-9
    assert a.budget * m <= a.n_eligible
    for n, ix in a.indices.items():
        assert len(ix) == len(ix.unique()) and (len(ix) == 0 or (0 <= ix.min() and ix.max() < math.prod(tiny_shapes[n])))
        # each tensor gets its share: Webster rounds each count by < 1, and the common divisor absorbs the T roundings
        # in proportion to size, at each end of the slice
        s_t, T = math.prod(tiny_shapes[n]), len(a.indices)
        assert abs(len(ix) - a.budget * s_t / a.n_eligible) <= 2 * (1 + T * s_t / a.n_eligible)
    if k2 is not None:
        b = select(tiny_shapes, ff, k2, kinds)
        assert b.count == a.count
        for n in a.indices: assert not np.intersect1d(a.indices[n].numpy(), b.indices[n].numpy()).size


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8), ff=st.floats(0.02, 1.0))
def test_all_slices_partition_without_overlap(sizes, ff):
    "For any tensor sizes and F, the ⌊1/F⌋ slices are pairwise disjoint, each exactly B elements; K = ⌊1/F⌋ is an error."
    shapes = {f'blocks.{i}.attn1.to_q.weight': (s,) for i, s in enumerate(sizes)}
    m, N = num_slices(ff), sum(sizes)
    if slice_budget(N, ff) == 0:
        with pytest.raises(ConfigError, match='is 0'): select(shapes, ff, 0)
        return
    sl = [select(shapes, ff, k) for k in range(m)]
    for n, s in shapes.items():
        allk = np.concatenate([x.indices[n].numpy() for x in sl])
        assert len(np.unique(allk)) == len(allk)
    assert {x.count for x in sl} == {slice_budget(N, ff)}
    with pytest.raises(ConfigError, match=f'--ffid {m} with --ff'): select(shapes, ff, m)


@settings(max_examples=30, deadline=None)
@given(size=st.integers(1, 5000), seed=st.integers(0, 2**32))
def test_keyed_permutation_is_a_bijection(size, seed):
    keys = S._round_keys('x', (size,), seed)
    p = keyed_permutation(np.arange(size, dtype=np.uint64), size, keys)
    assert sorted(p.tolist()) == list(range(size))


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 10**6), min_size=1, max_size=6), data=st.data())
def test_cumulative_is_exact_and_monotone(sizes, data):
    N = sum(sizes)
    x = data.draw(st.integers(0, N)); y = data.draw(st.integers(x, N))
    cx, cy = _cumulative(sizes, x), _cumulative(sizes, y)
    assert sum(cx) == x and sum(cy) == y and all(0 <= a <= b <= s for a, b, s in zip(cx, cy, sizes))


def test_ffid_past_the_slices_is_a_config_error():
    with pytest.raises(ConfigError, match=r'--ffid 10 with --ff 0.1'): parse_args(['--ff', '0.1', '--ffid', '10'])
    with pytest.raises(ConfigError, match='--blocks_to_swap needs selective training'): parse_args(['--blocks_to_swap', '2'])
    with pytest.raises(ConfigError, match='--ff_kinds'): parse_args(['--ff', '0.1', '--ff_kinds', 'attn', 'heads'])
    cfg = parse_args(['--ff', '0.1', '--ffid', '9', '--ff_kinds', 'attn,norm'])
    assert cfg.selective.ffid == 9 and list(cfg.selective_extra.ff_kinds) == ['attn', 'norm']


def test_14b_selection_and_memory_estimate():
    "The 14B architecture on the meta device: an exact 0.1% slice in seconds; the estimator's rows."
    from diffusers import WanTransformer3DModel
    with torch.device('meta'): dit = WanTransformer3DModel(**transformer_config('Wan2.1-T2V-14B'))
    s = select(dit, 0.001, 999)
    assert s.count == s.budget and abs(s.budget - 0.001 * s.n_eligible) < 1
    _, _, M = s.table()
    assert M.shape == (40, 10) and np.ptp(M, axis=0).max() <= 10   # every block gets the same count per kind (± a few ties)
    rows = dict(estimate_memory(dit, 0.001, blocks_to_swap=39, prefetch=1, tokens=1950))
    assert rows['trainable fp32 masters (proxies)'] == 4 * s.budget
    assert rows['total'] < estimate_memory(dit, 0.001, blocks_to_swap=0, tokens=1950)[-1][1] / 5


# --- training through the trainer ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.synthetic import make_synthetic_dataset
    from videorecipes.data.preprocess import preprocess_dataset
    root = tmp_path_factory.mktemp('selective')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=4, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data',
                                   '--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_precision', 'fp32',
                                   '--preprocess_num_workers', 0]), progress=False)
    return dict(zoo=zoo, data=root / 'data')


def _cfg(d, out, *extra):
    return parse_args([str(x) for x in ['--model_path', d['zoo'], '--data_path', d['data'], '--output_dir', out, '--num_frames', 9,
                                        '--num_height', 32, '--num_width', 32, '--train_batch_size', 2, '--dataloader_num_workers', 0,
                                        '--mixed_precision', 'no', '--dit_precision', 'fp32', '--learning_rate', 1e-2,
                                        '--max_train_steps', 6, '--checkpointing_steps', 3, '--report_to', 'none', '--cfg_rate', 0.2,
                                        '--ff', 0.2, '--ffid', 3, *extra]])


def _run(cfg, **kw): return train(cfg, method=SelectiveFinetune(cfg), progress=False, **kw)


def test_swap_and_checkpointing_equal_plain_training(data, tmp_path):
    "Block swapping (3 of 4 blocks, with and without prefetch) and gradient checkpointing give bit-identical losses and slices."
    ref = _run(_cfg(data, tmp_path / 'ref'))
    for name, extra in [('swap', ['--blocks_to_swap', 3]), ('swap_ckpt', ['--blocks_to_swap', 4, '--blocks_prefetch', 0,
                                                                          '--enable_gradient_checkpointing_type', 'full'])]:
        r = _run(_cfg(data, tmp_path / name, *extra))
        assert r.losses == ref.losses, name
        a, b = load_slice(ref.final / 'slice.safetensors'), load_slice(r.final / 'slice.safetensors')
        assert all(torch.equal(a.values[n], b.values[n]) for n in a.values), name
    # only selected elements changed, and each trained element moved
    base, final = load_transformer(data['zoo'], 'fp32').state_dict(), load_transformer(ref.final, 'fp32').state_dict()
    sl = load_slice(ref.final / 'slice.safetensors')
    changed = 0
    for n, w in final.items():
        ch = set((w != base[n]).reshape(-1).nonzero().flatten().tolist())
        assert ch <= set(sl.indices.get(n, torch.empty(0, dtype=torch.long)).tolist()), n
        changed += len(ch)
    assert changed > 0.9 * sum(len(i) for i in sl.indices.values())
    assert sl.meta['ff'] == 0.2 and sl.meta['ffid'] == 3 and sl.meta['model_hash'] == model_hash(load_transformer(data['zoo'], 'fp32').config)


def test_resume_is_exact(data, tmp_path):
    "Interrupted after step 4 (checkpoint at 3) and resumed with 'latest': the same losses and slice as an uninterrupted run."
    ref = _run(_cfg(data, tmp_path / 'ref', '--lr_scheduler', 'cosine', '--lr_warmup_steps', 2))
    class Stop(Exception): pass
    def on_step(step, loss):
        if step == 4: raise Stop
    with pytest.raises(Stop): _run(_cfg(data, tmp_path / 'run', '--lr_scheduler', 'cosine', '--lr_warmup_steps', 2), on_step=on_step)
    assert [c.name for c in list_checkpoints(tmp_path / 'run')] == ['checkpoint-3']
    r = _run(_cfg(data, tmp_path / 'run', '--lr_scheduler', 'cosine', '--lr_warmup_steps', 2, '--resume_from_checkpoint', 'latest'))
    assert sorted(r.losses) == [4, 5, 6]
    assert {s: ref.losses[s] for s in (4, 5, 6)} == r.losses
    a, b = load_slice(ref.final / 'slice.safetensors'), load_slice(r.final / 'slice.safetensors')
    assert all(torch.equal(a.values[n], b.values[n]) for n in a.values)
    # a checkpoint of another slice cannot resume this one
    with pytest.raises(RuntimeError, match='do not match this selection'):
        _run(_cfg(data, tmp_path / 'run', '--ffid', 2, '--max_train_steps', 9, '--resume_from_checkpoint', str(tmp_path / 'run' / 'checkpoint-6')))


def test_slices_stack_on_folders(data, tmp_path):
    "Slice 3 of the trained run applied to the base pipeline folder gives its final model; errors name the file."
    r = _run(_cfg(data, tmp_path / 'run', '--max_train_steps', 2, '--checkpointing_steps', 2))
    out = apply_slice(data['zoo'], r.final / 'slice.safetensors', out=tmp_path / 'applied')
    a, b = load_transformer(out, 'fp32').state_dict(), load_transformer(r.final, 'fp32').state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)
    sl = load_slice(r.final / 'slice.safetensors')
    save_slice(tmp_path / 'other.safetensors', sl.indices, sl.values, model_hash='0123456789abcdef')
    with pytest.raises(ValueError, match='other.safetensors: made for another transformer architecture'):
        apply_slice(load_transformer(data['zoo'], 'fp32'), tmp_path / 'other.safetensors')
    save_slice(tmp_path / 'far.safetensors', {'proj_out.weight': torch.tensor([10**9])}, {'proj_out.weight': torch.tensor([1.0])})
    with pytest.raises(ValueError, match='far.safetensors: proj_out.weight has indices outside'):
        apply_slice(load_transformer(data['zoo'], 'fp32'), tmp_path / 'far.safetensors')


# --- the GPU benchmark's CPU side ------------------------------------------------------------------------

def test_bench_dry_run_and_no_cuda():
    bench = ROOT / 'launchers' / 'bench_selective_14b.py'
    p = subprocess.run([sys.executable, bench, '--dry_run'], env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'selective slice 0 of 1000' in p.stdout and 'total' in p.stdout
    if not torch.cuda.is_available():
        p = subprocess.run([sys.executable, bench], env=ENV, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and 'needs a CUDA GPU' in p.stderr
    p = subprocess.run([sys.executable, bench, '--model', 'tiny-t2v', '--device', 'cpu', '--ff', '0.05', '--blocks_to_swap', '3',
                        '--steps', '2', '--num_frames', '9', '--height', '32', '--width', '32', '--text_len', '8'],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 's/step' in p.stdout


def test_bf16_base_mixed_precision_swap(data, tmp_path):
    "A bf16 frozen base, bf16 autocast, checkpointing and swapping: trains, and only the slice's elements differ from the bf16 base."
    r = _run(_cfg(data, tmp_path / 'bf16', '--dit_precision', 'bf16', '--mixed_precision', 'bf16', '--blocks_to_swap', 2,
                  '--enable_gradient_checkpointing_type', 'full', '--max_train_steps', 3))
    assert all(np.isfinite(list(r.losses.values())))
    base, final = load_transformer(data['zoo'], 'bf16').state_dict(), load_transformer(r.final, 'bf16').state_dict()
    sl = load_slice(r.final / 'slice.safetensors')
    assert all(set((w != base[n]).reshape(-1).nonzero().flatten().tolist()) <= set(sl.indices.get(n, torch.empty(0, dtype=torch.long)).tolist())
               for n, w in final.items())
    assert sum(int((w != base[n]).sum()) for n, w in final.items()) > 0


@pytest.mark.parametrize('kinds,ckpt', [(('all',), False), (('norm', 'bias', 'modulation', 'embed'), True)])
def test_proxy_gradients_equal_masked_full_gradients(kinds, ckpt):
    "For every kind of tensor (embeddings, modulation tables, norms, biases too), with or without checkpointing: dL/dv is dL/dW at the slice."
    from videorecipes.train.flow import flow_matching_loss, step_generator
    from videorecipes.train.selective import SliceProxies
    g = torch.Generator().manual_seed(0)
    batch = dict(latents=torch.randn(2, 16, 3, 4, 4, generator=g), text_embeddings=torch.randn(2, 8, 64, generator=g))
    ref = load_transformer(tiny_zoo('t2v'), 'fp32')
    flow_matching_loss(ref, batch, step_generator(0, 1))[0].backward()
    dit = load_transformer(tiny_zoo('t2v'), 'fp32').requires_grad_(False)
    if ckpt: dit.enable_gradient_checkpointing(); dit.train(); ref.train()
    sel = select(dit, 0.25, 1, kinds)
    px = SliceProxies(dit, sel, 'cpu')
    flow_matching_loss(dit, batch, step_generator(0, 1))[0].backward()
    rp = dict(ref.named_parameters())
    assert px.values and all(torch.equal(v.grad, rp[n].grad.reshape(-1)[sel.indices[n]]) for n, v in px.values.items())
    assert {tensor_kind(n)[2] for n in px.values} == (set(S.KINDS) if 'all' in kinds else set(kinds))


def test_proxies_and_their_gradients_stay_on_the_compute_device_under_swapping(data):
    """The contract an 8-bit optimizer relies on (bitsandbytes' AdamW8bit fails when a parameter and its gradient are on different
    devices, seed note 2): with block swapping, what the optimizer steps are the proxies (leaves on the compute device, gradients
    there too), never the swapped module tensors, whose gradients the hook takes away."""
    from videorecipes.train.flow import flow_matching_loss, step_generator
    from videorecipes.train.selective import SliceProxies
    from videorecipes.train.blockswap import BlockSwapper
    g = torch.Generator().manual_seed(0)
    batch = dict(latents=torch.randn(2, 16, 3, 4, 4, generator=g), text_embeddings=torch.randn(2, 8, 64, generator=g))
    dit = load_transformer(data['zoo'], 'fp32').requires_grad_(False)
    sel = select(dit, 0.2, 0)
    sw = BlockSwapper(dit, 3, 'cpu', prefetch=1)
    px = SliceProxies(dit, sel, 'cpu')
    sw.on_install.append(px.write_block)
    for _ in range(2): flow_matching_loss(dit, batch, step_generator(0, 1))[0].backward()
    module = {id(p) for p in dit.parameters()}
    assert px.parameters() and not any(id(v) in module for v in px.parameters())
    for n, v in px.values.items():
        assert v.is_leaf and v.device == px.device and v.grad is not None and v.grad.device == v.device and v.grad.dtype == torch.float32, n
    assert all(p.grad is None for p in dit.parameters()), "a module tensor kept a gradient: an optimizer over it would see another device"
    sw.remove()


@pytest.mark.cuda
@pytest.mark.parametrize('opt', ['bitsandbytes.optim.AdamW8bit', 'torchao.optim.AdamW8bit'])
def test_8bit_optimizers_with_slices_and_block_swapping_on_a_gpu(data, tmp_path, opt):
    "On a GPU: --optimizer AdamW8bit (bitsandbytes, torchao) with --ff and --blocks_to_swap trains (the seed's note 2 failed here)."
    if not torch.cuda.is_available(): pytest.skip("needs a CUDA GPU")
    pytest.importorskip(opt.split('.')[0])
    r = _run(_cfg(data, tmp_path / 'o8', '--optimizer', opt, '--blocks_to_swap', 3, '--max_train_steps', 4, '--checkpointing_steps', 0,
                  '--enable_gradient_checkpointing_type', 'full'))
    assert len(r.losses) == 4 and all(math.isfinite(v) for v in r.losses.values())
    assert load_slice(r.final / 'slice.safetensors').values


def test_sequence_or_tensor_parallel_slices_are_refused(data, tmp_path):
    "Slices are data parallel only: SP or TP is one clear ConfigError naming the flags, before any model work."
    from videorecipes.parallel.mesh import ParallelDims
    m = SelectiveFinetune(_cfg(data, tmp_path / 'sp'))
    with pytest.raises(ConfigError, match=r'data parallel only: --sp_size 2 and --tp_size 1 must be 1'): m.parallelize(ParallelDims(2, 1, 1, 2, 1))


def test_block_swapping_switches_checkpointing_on_because_autograd_keeps_the_weights(data):
    """The mechanism of issue 19's fault 2, on CPU: without checkpointing, what autograd saves in a block's forward shares storage
    with the block's weights (F.linear keeps the weight for the input's gradient), so a swapped block's device copy could not
    be freed before backward; with checkpointing nothing of the blocks' weights is kept. So --blocks_to_swap switches it on, saying so."""
    import warnings
    from videorecipes.train.flow import flow_matching_loss, step_generator
    from videorecipes.train.selective import SliceProxies
    g = torch.Generator().manual_seed(0)
    batch = dict(latents=torch.randn(2, 16, 3, 4, 4, generator=g), text_embeddings=torch.randn(2, 8, 64, generator=g))
    dit = load_transformer(data['zoo'], 'fp32').requires_grad_(False)
    SliceProxies(dit, select(dit, 0.2, 0), 'cpu')
    weights = {p.untyped_storage().data_ptr() for p in dit.blocks.parameters()}
    def kept_weights(ckpt):
        if ckpt: dit.enable_gradient_checkpointing(); dit.train()
        kept = set()
        def pack(t):
            if t.untyped_storage().data_ptr() in weights: kept.add(t.untyped_storage().data_ptr())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = flow_matching_loss(dit, batch, step_generator(0, 1))[0]
        loss.backward()
        return kept
    assert len(kept_weights(False)) > len(dit.blocks)          # every block's matrices are held until backward
    assert kept_weights(True) == set()
    with pytest.warns(UserWarning, match='switched on'):
        cfg = parse_args(['--ff', '0.1', '--blocks_to_swap', '2'])
    assert cfg.memory.enable_gradient_checkpointing_type == 'full'
    assert parse_args(['--ff', '0.1', '--blocks_to_swap', '2', '--enable_gradient_checkpointing_type', 'ops']).memory.enable_gradient_checkpointing_type == 'ops'


def test_autocast_keeps_no_stale_casts_of_slice_tensors():
    """Issue 19's fault 3 on CPU autocast: the cast cache reuses a bf16 copy of a requires-grad weight after its data changed
    (what the slices' in-place writes and block swapping do). The loop's autocast turns the cache off when --ff trains."""
    from videorecipes.train.trainer import autocast
    lin = torch.nn.Linear(4, 4, bias=False); x = torch.randn(2, 4)
    def twice(cfg):
        with autocast(cfg, 'cpu'):
            a = lin(x)
            with torch.no_grad(): lin.weight.data.mul_(2)     # the data changes inside one autocast region
            b = lin(x)
        with torch.no_grad(): lin.weight.data.div_(2)
        return torch.equal(a, b)
    assert twice(parse_args(['--mixed_precision', 'bf16']))                     # the cache: the second call used the stale copy
    assert not twice(parse_args(['--mixed_precision', 'bf16', '--ff', '0.1']))  # no cache with slices: it sees the new data


def test_slices_take_the_attention_backend_and_compile(data, tmp_path):
    "--attention_backend and --compile_blocks with --ff are applied to the sliced DiT (one process's plan on every rank), not ignored."
    from videorecipes.train.method import method_from_config
    from videorecipes.parallel.mesh import ParallelDims
    cfg = _cfg(data, tmp_path / 'radial', '--pattern', 'radial', '--decay_factor', 0.2, '--radial_block_size', 16, '--compile_blocks', 'True')
    m = method_from_config(cfg); m.setup('cpu'); m.parallelize(ParallelDims())
    assert type(m.dit._vr_attn.backend).__name__.lower().startswith('radial'), m.dit._vr_attn.backend
    assert all(getattr(b, '_compiled_call_impl', None) is not None for b in m.dit.blocks)
