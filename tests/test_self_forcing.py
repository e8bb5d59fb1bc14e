"""Self-forcing (nbs/33_kernels.causal.ipynb, nbs/64_recipes.self_forcing.ipynb), in fp32 on the tiny zoo's DiT: teacher
forcing equals the chunked KV-cache forward; the rolling cache equals the window-plus-sink mask; the warped steps; one
exit step on every rank; no gradient from the no-grad steps; a causal checkpoint that loads into WanTransformer3DModel
key for key; exact resume, and 2 gloo processes (FSDP) against one."""
from pathlib import Path
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from videorecipes.config import parse_args
from videorecipes.kernels.causal import make_causal, causal_forward, chunk_forward, block_causal_mask
from videorecipes.recipes import self_forcing as sf
from videorecipes.recipes.dmd2 import student_sigmas, agreed_step
from videorecipes.train.trainer import train, read_metrics

from helpers import torchrun_train, stop_and_resume
SIZE = ['--num_frames', 21, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]


@pytest.fixture(scope='module')
def dit():
    from videorecipes.zoo import tiny_zoo, load_transformer
    torch.manual_seed(0)
    d = load_transformer(tiny_zoo('t2v'), dtype='fp32').eval()
    with torch.no_grad():                      # (the zoo's output layer starts at zero: give every layer a say)
        for p in d.parameters(): p.add_(0.02 * torch.randn_like(p))
    return d


def _inputs(d, frames, chunk, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, frames, 8, 8, generator=g)
    sig = torch.rand(2, frames // chunk, generator=g).repeat_interleave(chunk, 1)
    return dict(text_embeddings=torch.randn(2, 8, d.config.text_dim, generator=g)), x, sig


@pytest.mark.parametrize('chunk', [1, 3])
def test_teacher_forcing_equals_the_chunked_cache(dit, chunk):
    "One forward of 9 frames under the block-causal mask, chunks at different noise levels, equals the chunks run in order on a KV cache."
    h = make_causal(dit, chunk)
    try:
        batch, x, sig = _inputs(dit, 9, chunk)
        with torch.no_grad():
            tf = causal_forward(dit, batch, x, sig)
            cache = h.backend.new_cache(dit)
            out = torch.cat([chunk_forward(dit, batch, x[:, :, s:s + chunk], sig[:, s], cache, s, write=True) for s in range(0, 9, chunk)], 2)
        assert (tf - out).abs().max() < 1e-5 * tf.abs().max()
        assert tf.abs().max() > 0.1
    finally: h.remove()


@pytest.mark.parametrize('local,sink', [(6, 0), (6, 1), (9, 3), (3, 0)])
def test_rolling_cache_equals_window_plus_sink_mask(dit, local, sink):
    "18 frames in chunks of 3 streamed on a rolling cache equal teacher forcing under the window-plus-sink mask, and the cache stays bounded."
    h = make_causal(dit, 3, local, sink)
    try:
        batch, x, sig = _inputs(dit, 18, 3, seed=1)
        with torch.no_grad():
            tf = causal_forward(dit, batch, x, sig)
            cache, held, outs = h.backend.new_cache(dit), [], []
            for s in range(0, 18, 3):
                outs.append(chunk_forward(dit, batch, x[:, :, s:s + 3], sig[:, s], cache, s, write=True)); held.append(len(cache.frames()))
        assert (torch.cat(outs, 2) - tf).abs().max() < 1e-5 * tf.abs().max()
        assert max(held) <= sink + local - 3
        # and the mask matters: the full-causal forward is different
        h2 = make_causal(dit, 3)
        with torch.no_grad(): full = causal_forward(dit, batch, x, sig)
        assert (full[:, :, 9:] - tf[:, :, 9:]).abs().max() > 1e-4
    finally: dit._vr_attn.remove()


def test_the_warped_steps():
    "1000, 750, 500, 250 on the shift-5 grid: 1000, 937.5, 833.3, 625; and on the 48-step teacher grid at shift 5 exactly."
    s = student_sigmas([1000, 750, 500, 250], 5.0) * 1000
    assert torch.allclose(s, torch.tensor([1000, 937.5, 833.3333, 625]), atol=1e-3)
    g = sf.teacher_grid(48, 5.0)
    assert [int((g - x / 1000).abs().argmin()) for x in s] == [0, 12, 24, 36]
    assert (g[[0, 12, 24, 36]] * 1000 - s).abs().max() < 1e-3


def _ranks(rank, world, port, seeds, q):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    try:
        q.put((rank, [agreed_step(seeds[rank], step, 0, 4) for step in range(1, 50)]))
    except RuntimeError as e: q.put((rank, str(e)))
    finally: dist.destroy_process_group()


def _spawn(seeds):
    import socket
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    ctx = mp.get_context('spawn'); q = ctx.Queue()
    ps = [ctx.Process(target=_ranks, args=(r, 2, port, seeds, q)) for r in range(2)]
    for p in ps: p.start()
    out = dict(q.get(timeout=120) for _ in ps)
    for p in ps: p.join(60)
    return out


def test_the_exit_step_is_the_same_on_every_rank():
    "Two gloo ranks draw the same 49 exit steps (all 4 of them occur); ranks with different seeds are stopped with a clear error."
    out = _spawn([7, 7])
    assert out[0] == out[1] and set(out[0]) == {0, 1, 2, 3}
    bad = _spawn([7, 8])
    assert all(isinstance(v, str) and 'drew rollout step' in v for v in bad.values())


def test_no_gradient_reaches_the_no_grad_steps(dit):
    "With the exit at step 2 of 4 and gradients in the last 3 of 9 frames: only the last chunk's exit-step forward has a graph; the cache holds no graph; the gradient is that forward's."
    h = make_causal(dit, 3)
    try:
        modes, params = [], [p for p in dit.parameters()]
        hook = dit.register_forward_pre_hook(lambda m, a, k: modes.append(torch.is_grad_enabled()), with_kwargs=True)
        batch, x, _ = _inputs(dit, 9, 3)
        for p in params: p.requires_grad_(True)
        cache = h.backend.new_cache(dit)
        inputs = []
        def run(xc, s, f, w):
            if torch.is_grad_enabled(): inputs.append((xc.detach().clone(), s, f, [t.clone() for t in cache.k], list(cache.ids)))
            return chunk_forward(dit, batch, xc, s, cache, f, w)
        sig = student_sigmas([1000, 750, 500, 250], 5.0)
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        x0 = sf.causal_rollout(run, x, sig, 3, gens, exit_step=2, grad_frames=3)
        hook.remove()
        # chunks 0, 1: 3 steps + a cache refresh each; chunk 2: 3 steps; only the very last forward records a graph
        assert modes == [False] * 10 + [True]
        assert all(not t.requires_grad for t in cache.k + cache.v if t is not None)
        g = torch.autograd.grad(x0.sum(), params, allow_unused=True)
        # the same gradient from that one forward alone, on the cache as it was
        (xc, s, f, ks, ids), = inputs
        cache2 = h.backend.new_cache(dit)
        with torch.no_grad():
            for c0 in (0, 3): chunk_forward(dit, batch, x0[:, :, c0:c0 + 3].detach(), torch.zeros(2), cache2, c0, True)
        y = sf.to_x0(xc, chunk_forward(dit, batch, xc, s, cache2, f, False), sig[2])
        g2 = torch.autograd.grad(y.sum(), params, allow_unused=True)
        for a, b in zip(g, g2):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6, rtol=1e-4))
    finally:
        h.remove()
        for p in dit.parameters(): p.requires_grad_(False)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    from videorecipes.synthetic import make_synthetic_dataset
    from videorecipes.data.preprocess import preprocess_dataset
    root = tmp_path_factory.mktemp('sf')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=4, num_frames=21, height=32, width=32, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data', *SIZE,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    sf.ode_pairs([str(x) for x in ['--model_path', zoo, '--data_path', root / 'data', '--output_dir', root / 'ode', *SIZE[:6], '--text_max_length', 32,
                                   '--ode_steps', 8, '--ode_guidance_scale', 3, '--ode_precision', 'fp32', '--dit_precision', 'fp32']])
    return dict(root=root, zoo=zoo, data=root / 'data', ode=root / 'ode')


def ode_flags(d, out, *extra):
    return [str(x) for x in ['--method', 'ode_init', '--model_path', d['zoo'], '--data_path', d['ode'], *SIZE, '--train_batch_size', 2,
                             '--dataloader_num_workers', 0, '--cfg_rate', 0, '--mixed_precision', 'no', '--learning_rate', 1e-3,
                             '--max_train_steps', 4, '--checkpointing_steps', 4, '--report_to', 'none', '--output_dir', out, *extra]]


def sf_flags(d, student, out, *extra):
    return [str(x) for x in ['--method', 'self_forcing', '--model_path', student, '--teacher_model_path', d['zoo'], '--data_path', d['data'],
                             *SIZE, '--train_batch_size', 2, '--dataloader_num_workers', 0, '--cfg_rate', 0, '--mixed_precision', 'no',
                             '--learning_rate', 1e-4, '--fake_score_learning_rate', 4e-4, '--adam_beta1', 0, '--generator_update_interval', 2,
                             '--ema_decay', 0.9, '--dmd_denoising_steps', '1000,750,500,250', '--flow_shift', 5, '--max_train_steps', 4,
                             '--checkpointing_steps', 1, '--report_to', 'none', '--output_dir', out, *extra]]


@pytest.fixture(scope='module')
def student(data):
    return train(parse_args(ode_flags(data, data['root'] / 'ode_run')), progress=False).final


def test_a_causal_checkpoint_loads_into_wan_key_for_key(data, student):
    "The ODE-initialised student's transformer/ loads with WanTransformer3DModel.from_pretrained: the zoo's keys and shapes, trained values."
    from diffusers import WanTransformer3DModel
    a = WanTransformer3DModel.from_pretrained(student, subfolder='transformer').state_dict()
    b = WanTransformer3DModel.from_pretrained(data['zoo'], subfolder='transformer').state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert sf.read_causal_config(student)['num_frame_per_block'] == 3


def metrics(out): return {r['step']: {k: v for k, v in r.items() if k != 's_per_step'} for r in read_metrics(out)}


def test_exact_resume(data, student, tmp_path):
    "Self-forcing stopped after step 3 and resumed from checkpoint-2: every logged value and the exported student equal the uninterrupted run's."
    train(parse_args(sf_flags(data, student, tmp_path / 'ref')), progress=False)
    stop_and_resume(lambda out, *x: sf_flags(data, student, out, *x), tmp_path / 'run', 3, tmp_path / 'run' / 'checkpoint-2')
    assert metrics(tmp_path / 'ref') == metrics(tmp_path / 'run')
    from safetensors.torch import load_file
    a, b = (load_file(str(p / 'final' / 'transformer' / 'diffusion_pytorch_model.safetensors')) for p in (tmp_path / 'ref', tmp_path / 'run'))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_gloo_processes_match_one(data, student, tmp_path):
    "FSDP over 2 processes (batch 1 each) against one process (batch 2): the same DMD and critic losses of the causal rollouts."
    train(parse_args(sf_flags(data, student, tmp_path / 'one', '--checkpointing_steps', 4)), progress=False)
    torchrun_train(sf_flags(data, student, tmp_path / 'two', '--checkpointing_steps', 4, '--train_batch_size', 1, '--num_gpus', 2))
    m1, m2 = metrics(tmp_path / 'one'), metrics(tmp_path / 'two')
    assert m1.keys() == m2.keys()
    for s in m1:
        for k in ('loss', 'critic_loss', 'dmd_normaliser'):
            if k in m1[s]: assert m1[s][k] == pytest.approx(m2[s][k], rel=1e-4), (s, k)
