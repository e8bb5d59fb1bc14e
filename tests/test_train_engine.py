"""The recipe engine's seams through the real loop: a method with two networks and two optimizers under FSDP 2 + SP 2
(2 gloo processes), exact resume after kill -9, non-finite values agreed across ranks, EMA, attention backends that own
parameters, checkpointing policies, every config group reloading anywhere, and the guards."""
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from helpers import run_torchrun
from videorecipes.config import parse_args, Config
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.train.trainer import train, read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', PYTHONWARNINGS='ignore')
SCRIPT = str(ROOT / 'tests' / 'engine_two_nets.py')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('engine')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=8, num_frames=9, height=48, width=48, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data',
                                   '--num_frames', 9, '--num_height', 48, '--num_width', 48, '--text_max_length', 32,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')


def flags(d, out, *extra):
    return [str(x) for x in ['--model_path', d['zoo'], '--data_path', d['data'], '--num_frames', 9, '--num_height', 48, '--num_width', 48,
                             '--text_max_length', 32, '--train_batch_size', 1, '--dataloader_num_workers', 0, '--cfg_rate', 0.2,
                             '--mixed_precision', 'no', '--learning_rate', 1e-3, '--max_train_steps', 6, '--checkpointing_steps', 2,
                             '--report_to', 'none', '--output_dir', out, *extra]]


def torchrun(args, ok=True):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', SCRIPT, '--num_gpus', '2', *args]
    p = run_torchrun(cmd, 600, env=ENV)
    if ok: assert p.returncode == 0, p.stderr[-3000:]
    return p


def metrics(out): return {r['step']: r for r in read_metrics(out)}


@pytest.mark.multiproc
def test_two_networks_fsdp_sp_kill_and_resume(data, tmp_path):
    "Generator (every 2nd step, EMA) + critic (every step) under FSDP 2 + SP 2: a kill -9 after step 5 and a resume reproduce the uninterrupted run."
    sp = ['--sp_size', '2', '--ema_decay', '0.9', '--ema_final', 'True']
    torchrun(flags(data, tmp_path / 'ref', *sp))
    p = torchrun(flags(data, tmp_path / 'run', *sp, '--kill_at', '5'), ok=False)
    assert p.returncode != 0 and not (tmp_path / 'run' / 'final').exists()
    assert sorted(c.name for c in (tmp_path / 'run').glob('checkpoint-*')) == ['checkpoint-2', 'checkpoint-4']
    torchrun(flags(data, tmp_path / 'run', *sp, '--resume_from_checkpoint', 'latest'))
    a, b = metrics(tmp_path / 'ref'), metrics(tmp_path / 'run')
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [s for s in a if 'generator_loss' in a[s]] == [2, 4, 6] and all('critic_loss' in a[s] for s in a)
    for s in a:   # bit for bit: losses, gradient norms, learning rates of both optimizers
        assert {k: v for k, v in a[s].items() if k != 's_per_step'} == {k: v for k, v in b[s].items() if k != 's_per_step'}, s
    # the checkpoint holds both networks with their optimizers, and the generator's EMA, sharded by DCP
    from torch.distributed.checkpoint import FileSystemReader
    keys = FileSystemReader(str(tmp_path / 'run' / 'checkpoint-4' / 'dcp')).read_metadata().state_dict_metadata
    assert {k.split('.')[0] for k in keys} == {'generator', 'critic', 'ema'} and any(k.startswith('ema.generator.') for k in keys)
    # both networks are exported, equal in both runs; the generator as a pipeline folder (its EMA, with --ema_final)
    for sub in ('generator/transformer', 'critic'):
        wa = load_file(str(tmp_path / 'ref' / 'final' / sub / 'diffusion_pytorch_model.safetensors'))
        wb = load_file(str(tmp_path / 'run' / 'final' / sub / 'diffusion_pytorch_model.safetensors'))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), sub
    from diffusers import WanPipeline, WanTransformer3DModel
    WanPipeline.from_pretrained(tmp_path / 'run' / 'final' / 'generator'); WanTransformer3DModel.from_pretrained(tmp_path / 'run' / 'final' / 'critic')


@pytest.mark.multiproc
def test_one_ranks_nan_stops_every_rank(data, tmp_path):
    "Rank 1's critic loss turns NaN at step 3: both ranks stop at that step with the same message (none hangs), no checkpoint after it."
    p = torchrun(flags(data, tmp_path / 'nan', '--log_every', 2, '--nan_rank', '1', '--nan_at', '3'), ok=False)
    out = p.stdout + p.stderr
    for r in (0, 1): assert f"rank {r} stopped: the loss of optimizer 'critic' is not finite at step 3" in out, out[-3000:]
    assert sorted(c.name for c in (tmp_path / 'nan').glob('checkpoint-*')) == ['checkpoint-2']


def test_config_from_a_process_that_imported_everything_reloads(tmp_path):
    "Every module imported, a config with values in many groups saved; a fresh process that imported only the config reads it back."
    write = textwrap.dedent(f"""
        import importlib, pkgutil, videorecipes
        for m in pkgutil.walk_packages(videorecipes.__path__, 'videorecipes.'): importlib.import_module(m.name)
        from videorecipes.config import parse_args
        cfg = parse_args(['--samples_per_file', '8', '--ff_kinds', 'attn', 'norm', '--report_to', 'none', '--attention_backend', 'sdpa',
                          '--ema_decay', '0.99', '--method', 'full', '--enable_gradient_checkpointing_type', 'ops', '--num_latent_t', '3'])
        cfg.save(r'{tmp_path / 'config.json'}')""")
    subprocess.run([sys.executable, '-c', write], check=True, env=ENV, capture_output=True)
    read = f"import sys, json; from videorecipes.config import Config; c = Config.load(r'{tmp_path / 'config.json'}'); print(json.dumps(c.to_dict()))"
    r = subprocess.run([sys.executable, '-c', read], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d['preprocess']['samples_per_file'] == 8 and d['selective_extra']['ff_kinds'] == ['attn', 'norm'] and d['ema']['ema_decay'] == 0.99
    assert d == json.loads((tmp_path / 'config.json').read_text())


def _gated():
    "A test backend that owns a zero-initialised gate per self-attention module (VSA's pattern); dense attention at first."
    from videorecipes.parallel.attention import AttentionBackend, sdpa_attention, register_attention_backend
    class Gated(AttentionBackend):
        def init_module(self, attn, block, cross): return {} if cross else {'vr_gate': torch.nn.Parameter(torch.zeros(attn.heads))}
        def __call__(self, q, k, v, key_mask=None, ctx=None):
            out = sdpa_attention(q, k, v, key_mask)
            return out if ctx.cross else out * (1 + ctx.module.vr_gate)[None, None, :, None]
    register_attention_backend('gated_test', Gated)


@pytest.mark.parametrize('method', ['full', 'lora'])
def test_backend_parameters_train_checkpoint_and_export(data, tmp_path, method):
    "A backend's own parameters train, are checkpointed and resumed, and land beside the export, not in diffusers' files."
    from videorecipes.parallel.attention import backend_parameters
    from videorecipes.train.method import load_backend_params, BACKEND_FILE
    _gated()
    extra = ['--attention_backend', 'gated_test', '--max_train_steps', 4, '--learning_rate', 1e-2]
    if method == 'lora': extra += ['--lora_training', 'True', '--lora_rank', 4]
    r = train(parse_args(flags(data, tmp_path / 'run', *extra)), progress=False)
    gates = backend_parameters(r.method.dit)
    assert len(gates) == 4 and all(g.abs().sum() > 0 for g in gates.values())            # trained away from zero
    from torch.distributed.checkpoint import FileSystemReader
    keys = FileSystemReader(str(tmp_path / 'run' / 'checkpoint-4' / 'dcp')).read_metadata().state_dict_metadata
    assert any('vr_gate' in k for k in keys)
    saved = load_file(str(r.final / BACKEND_FILE))
    assert saved.keys() == gates.keys() and all(torch.equal(saved[k], gates[k].detach()) for k in saved)
    if method == 'full':
        w = load_file(str(r.final / 'transformer' / 'diffusion_pytorch_model.safetensors'))
        assert not any('vr_gate' in k for k in w)
        from diffusers import WanPipeline
        pipe = WanPipeline.from_pretrained(r.final)             # a plain diffusers pipeline again
        from videorecipes.parallel.attention import set_attention
        set_attention(pipe.transformer, 'gated_test'); load_backend_params(pipe.transformer, r.final)
        assert all(torch.equal(p, gates[k].detach()) for k, p in backend_parameters(pipe.transformer).items())
    else:
        from safetensors import safe_open
        with safe_open(str(r.final / 'pytorch_lora_weights.safetensors'), 'pt') as f: assert not any('vr_gate' in k for k in f.keys())
    # resuming at step 2 ends where the run ended (the gates come back from the checkpoint)
    r2 = train(parse_args(flags(data, tmp_path / 'run2', *extra, '--resume_from_checkpoint', tmp_path / 'run' / 'checkpoint-2')), progress=False)
    assert [r2.losses[s] for s in (3, 4)] == [r.losses[s] for s in (3, 4)]


def test_ema_validation_and_export(data, tmp_path):
    "With --ema_decay the EMA is what validation samples and what final/ holds (--ema_final True); the trained weights come back after."
    val = tmp_path / 'val.json'; val.write_text(json.dumps(['a red circle moving right on a blue background']))
    cfg = parse_args(flags(data, tmp_path / 'ema', '--ema_decay', 0.5, '--ema_final', 'True', '--max_train_steps', 3, '--log_validation', 'True',
                           '--validation_dataset_file', val, '--validation_steps', 3, '--validation_sampling_steps', 2))
    seen = {}
    from videorecipes.train.trainer import Validator
    orig = Validator.__call__
    def spy(self, step, metrics=None):
        seen[step] = {k: v.detach().clone() for k, v in self.transformer().named_parameters()}
        return orig(self, step, metrics)
    Validator.__call__ = spy
    try: r = train(cfg, progress=False)
    finally: Validator.__call__ = orig
    dit = r.method.dit
    w = load_file(str(r.final / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    trained = dict(dit.named_parameters())
    assert any(not torch.equal(w[k], trained[k].detach()) for k in w)                  # final/ is not the trained weights...
    assert all(torch.equal(w[k], seen[3][k]) for k in w)                                # ...it is what validation sampled: the EMA
    assert (tmp_path / 'ema' / 'validation' / 'step-000003').exists()


def test_validation_encoder_precision_and_release(data, tmp_path):
    "Validation encodes the prompts once, in the training precision, and drops the text encoder."
    from videorecipes.train.trainer import Validator
    from videorecipes.zoo import load_transformer
    val = tmp_path / 'val.json'; val.write_text(json.dumps(['a red circle moving right on a blue background']))
    cfg = parse_args(flags(data, tmp_path / 'v', '--mixed_precision', 'bf16', '--log_validation', 'True', '--validation_dataset_file', val,
                           '--validation_sampling_steps', 2))
    v = Validator(cfg, 'cpu', load_transformer(data['zoo'], dtype='fp32'))
    paths = v(1)
    assert len(paths) == 1 and 'text_encoder' not in v.sampler.parts
    assert v.embeds['prompt_embeds'][0].dtype == torch.bfloat16


def test_i2v_at_any_text_length(tmp_path):
    "I2V trains and validates with 32-token prompts: the image/text split comes from the image features, not from 512."
    from videorecipes.zoo import tiny_zoo
    from videorecipes.parallel.attention import uses_context_attention
    zoo = tiny_zoo('i2v')
    make_synthetic_dataset(tmp_path / 'merged', num_videos=4, num_frames=9, height=32, width=32, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--model_type', 'i2v', '--data_merge_path', tmp_path / 'merged',
                                   '--data_path', tmp_path / 'data', '--num_frames', 9, '--num_height', 32, '--num_width', 32,
                                   '--text_max_length', 32, '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    ents = json.loads((tmp_path / 'merged' / 'videos2caption.json').read_text())
    val = tmp_path / 'val.json'; val.write_text(json.dumps([dict(caption=ents[0]['cap'][0], image_path=f"merged/videos/{ents[0]['path']}")]))
    d = dict(zoo=zoo, data=tmp_path / 'data')
    cfg = parse_args(flags(d, tmp_path / 'run', '--model_type', 'i2v', '--num_height', 32, '--num_width', 32, '--max_train_steps', 2,
                           '--log_validation', 'True', '--validation_dataset_file', val, '--validation_sampling_steps', 2))
    r = train(cfg, progress=False)
    assert uses_context_attention(r.method.dit) and all(np.isfinite(v) for v in r.losses.values())
    assert len(list((tmp_path / 'run' / 'validation').glob('step-*/*.mp4'))) == 1


def test_checkpointing_policies_train_the_same(data, tmp_path):
    "none / full / ops / block_skip through the loop: the same losses, bit for bit."
    runs = {}
    for mode in ('none', 'full', 'ops', 'block_skip'):
        extra = [] if mode == 'none' else ['--enable_gradient_checkpointing_type', mode]
        runs[mode] = train(parse_args(flags(data, tmp_path / mode, '--max_train_steps', 3, '--checkpointing_steps', 10, *extra)), progress=False).losses
    assert runs['full'] == runs['none'] and runs['ops'] == runs['none'] and runs['block_skip'] == runs['none']


ORDER_FWD = textwrap.dedent("""
    import sys, math, torch
    from videorecipes.config import parse_args
    from videorecipes.zoo import load_transformer
    from videorecipes.parallel.mesh import ParallelDims, init_distributed, build_mesh, close_distributed
    from videorecipes.parallel.parallelize import parallelize_wan
    from videorecipes.parallel.attention import AttentionBackend, sdpa_attention, register_attention_backend
    class Backwards(AttentionBackend):   # wants the tokens in reverse raster order
        def token_order(self, grid): return torch.arange(math.prod(grid) - 1, -1, -1)
        def __call__(self, q, k, v, key_mask=None, ctx=None): return sdpa_attention(q, k, v, key_mask)
    register_attention_backend('backwards_test', Backwards)
    rank, world = init_distributed()
    cfg = parse_args(['--num_gpus', '2', '--sp_size', '2', '--mixed_precision', 'no', '--attention_backend', 'backwards_test'])
    dims = ParallelDims.from_config(cfg, world); build_mesh(dims)
    dit = parallelize_wan(load_transformer(sys.argv[1], dtype='fp32').eval(), dims, cfg)
    torch.manual_seed(0)   # 27 tokens: SP pads after reordering
    x, txt = torch.randn(1, 16, 3, 6, 6), torch.randn(1, 32, dit.config.text_dim)
    with torch.no_grad(): out = dit(x, torch.tensor([400.]), txt, return_dict=False)[0]
    if rank == 0: torch.save(out, sys.argv[2])
    close_distributed()
""")


@pytest.mark.multiproc
def test_backend_token_order_under_sequence_parallel(tmp_path):
    "A backend that reorders the tokens, under SP 2 (each rank a chunk of the reordered sequence, padded): the output is one process's dense one."
    from videorecipes.zoo import tiny_zoo, load_transformer
    zoo = tiny_zoo('t2v')
    script = tmp_path / 'order.py'; script.write_text(ORDER_FWD)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(zoo), str(tmp_path / 'o.pt')]
    p = run_torchrun(cmd, 300, env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]
    t = load_transformer(zoo, dtype='fp32').eval()
    torch.manual_seed(0)
    x, txt = torch.randn(1, 16, 3, 6, 6), torch.randn(1, 32, t.config.text_dim)
    with torch.no_grad(): ref = t(x, torch.tensor([400.]), txt, return_dict=False)[0]
    out = torch.load(tmp_path / 'o.pt')
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max().item()


def test_num_latent_t_crops_what_the_dit_sees(data, tmp_path):
    "--num_latent_t 2 on 3-latent-frame data: the DiT trains on the first 2 latent frames."
    from videorecipes.train.full import FullFinetune
    seen = []
    class Spy(FullFinetune):
        def loss(self, batch, step, micro=0):
            seen.append(tuple(batch['latents'].shape)); return super().loss(batch, step, micro)
    cfg = parse_args(flags(data, tmp_path / 'lt', '--num_latent_t', 2, '--max_train_steps', 2))
    train(cfg, Spy(cfg), progress=False)
    assert seen == [(1, 16, 2, 6, 6)] * 2
