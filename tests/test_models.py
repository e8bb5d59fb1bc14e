"""The models of the design documents' tables on their tiny zoo twins: Wan2.2 A14B T2V/I2V experts (routing, per-expert optimizers and
adapters, resume, validation, slices with block swapping per expert), Wan2.2 TI2V (48-channel VAE, per-token timesteps) and Wan2.1-Fun InP
(first and last frame)."""
import json
from pathlib import Path
import numpy as np
import pytest
import torch
from videorecipes.config import parse_args, ConfigError
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.data.loader import LatentDataset
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.train.trainer import train, read_metrics
from videorecipes.train.experts import expert_at
from videorecipes.zoo import tiny_zoo, load_transformer, pipeline_config

SHAPE = ['--num_frames', 17, '--num_height', 64, '--num_width', 64]


def _data(root, kind, model, *extra):
    "Preprocess 6 synthetic clips with `model`'s encoders into root/data-<kind>."
    if not (root / 'merged').exists(): make_synthetic_dataset(root / 'merged', num_videos=6, progress=False)
    out = root / f'data-{kind}'
    preprocess_dataset(parse_args(['--model_path', model, '--model_type', 'i2v' if kind in ('wan2.2-i2v', 'fun-inp') else 't2v',
                                   '--data_merge_path', root / 'merged', '--data_path', out, *SHAPE, '--text_precision', 'fp32',
                                   '--preprocess_num_workers', 0, *extra]), progress=False)
    return out


def _flags(model, data, out, *extra):
    return ['--model_path', model, '--data_path', data, *SHAPE, '--train_batch_size', 2, '--dataloader_num_workers', 0, '--cfg_rate', 0,
            '--mixed_precision', 'no', '--max_train_steps', 4, '--checkpointing_steps', 2, '--report_to', 'none', '--learning_rate', 1e-3,
            '--output_dir', out, *extra]


@pytest.fixture(scope='module')
def root(tmp_path_factory): return tmp_path_factory.mktemp('models')

def _clip(root) -> Path:
    "One of the synthetic clips (its first frame, or its last, conditions validation)."
    if not (root / 'merged').exists(): make_synthetic_dataset(root / 'merged', num_videos=6, progress=False)
    return root / 'merged' / 'videos' / sorted(p.name for p in (root / 'merged' / 'videos').iterdir())[0]


def test_wan22_i2v_experts_without_clip_train_and_validate(root):
    "Wan2.2 A14B I2V: no CLIP (empty clip_feature columns, no image tokens), both experts train with LoRA, validation samples with both."
    zoo = tiny_zoo('wan2.2-i2v')
    assert pipeline_config(zoo) == dict(kind='i2v', experts=2, boundary_ratio=0.9, expand_timesteps=False, clip=False)
    data = _data(root, 'wan2.2-i2v', zoo)
    ds = LatentDataset(data)
    assert 'clip_features' not in ds[0] and ds[0]['first_frame_latents'].shape[0] == 16
    (root / 'val.json').write_text(json.dumps([dict(caption='a red circle', image_path=str(_clip(root)))]))
    r = train(parse_args(_flags(zoo, data, root / 'i2v22', '--model_type', 'i2v', '--lora_training', 'True', '--lora_rank', 4,
                                '--boundary_ratio', 0.5, '--log_validation', 'True', '--validation_dataset_file', root / 'val.json',
                                '--validation_steps', 4, '--validation_sampling_steps', 2)), progress=False)
    m = {x['step']: x for x in read_metrics(root / 'i2v22')}
    assert [m[n]['high_noise'] for n in range(1, 5)] == [float(expert_at(n, 42, 0.5) == 'high') for n in range(1, 5)]
    assert list((root / 'i2v22' / 'validation' / 'step-000004').glob('*.mp4'))
    assert (root / 'i2v22' / 'final' / 'transformer_2' / 'pytorch_lora_weights.safetensors').exists()
    assert r.method.frozen == {}   # both trained: nothing loaded twice


def test_experts_resume_bit_exact(root):
    "A two-expert full finetune stopped at step 2 and resumed ends with the same weights as an uninterrupted run."
    from tests.helpers import stop_and_resume
    zoo = tiny_zoo('wan2.2-t2v')
    data = _data(root, 't2v', tiny_zoo('t2v'))
    flags = lambda out, *x: _flags(zoo, data, out, '--boundary_ratio', 0.5, *x)
    train(parse_args(flags(root / 'straight')), progress=False)
    stop_and_resume(flags, root / 'resumed', 3, 'latest')
    for sub in ('transformer', 'transformer_2'):
        a, b = (load_transformer(root / d / 'final', 'fp32', sub).state_dict() for d in ('straight', 'resumed'))
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_selective_slices_per_expert_with_block_swap(root):
    "--ff with --blocks_to_swap on both experts: each expert's slice trains, the rest of it is bit-identical; a slice file per expert."
    zoo = tiny_zoo('wan2.2-t2v')
    data = _data(root, 't2v', tiny_zoo('t2v'))
    train(parse_args(_flags(zoo, data, root / 'sel', '--boundary_ratio', 0.5, '--ff', 0.01, '--blocks_to_swap', 2,
                            '--learning_rate', 1e-2)), progress=False)
    from videorecipes.train.selective import load_slice
    for sub in ('transformer', 'transformer_2'):
        a, z = load_transformer(root / 'sel' / 'final', 'fp32', sub).state_dict(), load_transformer(zoo, 'fp32', sub).state_dict()
        changed = sum(int((a[k] != z[k]).sum()) for k in a)
        total = sum(v.numel() for v in a.values())
        assert 0 < changed <= 0.011 * total, (sub, changed, total)
        assert (root / 'sel' / 'final' / sub / 'slice.safetensors').exists()
    with pytest.raises(ConfigError, match='blocks_to_swap'):
        train(parse_args(_flags(zoo, data, root / 'sel2', '--ff', 0.01, '--offload_inactive_dit', 'True')), progress=False)


def test_ti2v_trains_t2v_and_i2v(root):
    "Wan2.2 TI2V: 48-channel latents at 16x spatial compression; per-token timesteps; --i2v_ratio 0.5 trains both modes; loss goes down."
    zoo = tiny_zoo('ti2v')
    data = _data(root, 'ti2v', zoo)
    ds = LatentDataset(data)
    assert tuple(ds[0]['latents'].shape) == (48, 5, 4, 4)
    clip = _clip(root)
    (root / 'val-ti2v.json').write_text(json.dumps([dict(caption='a red circle'), dict(caption='a red circle', image_path=str(clip))]))
    r = train(parse_args(_flags(zoo, data, root / 'ti2v', '--i2v_ratio', 0.5, '--max_train_steps', 12, '--learning_rate', 3e-3,
                                '--log_validation', 'True', '--validation_dataset_file', root / 'val-ti2v.json', '--validation_steps', 12,
                                '--validation_sampling_steps', 2)), progress=False)
    l = [r.losses[s] for s in sorted(r.losses)]
    assert np.mean(l[-4:]) < np.mean(l[:4]), l
    assert len(list((root / 'ti2v' / 'validation' / 'step-000012').glob('*.mp4'))) == 2   # one from text, one from the clip's first frame
    from diffusers import WanPipeline
    p = WanPipeline.from_pretrained(root / 'ti2v' / 'final')
    assert p.config.expand_timesteps and p.vae.config.z_dim == 48


def test_fun_inp_first_and_last_frame(root):
    "Wan2.1-Fun InP: preprocessing with --i2v_last_frame encodes [first, zeros, last]; the mask marks both; it trains."
    zoo = tiny_zoo('fun-inp')
    plain, last = _data(root, 'fun-inp', zoo), None
    last = root / 'data-fun-inp-last'
    preprocess_dataset(parse_args(['--model_path', zoo, '--model_type', 'i2v', '--data_merge_path', root / 'merged', '--data_path', last,
                                   *SHAPE, '--text_precision', 'fp32', '--preprocess_num_workers', 0, '--i2v_last_frame', 'True']), progress=False)
    a, b = LatentDataset(plain)[0], LatentDataset(last)[0]
    assert not a['last_frame'] and b['last_frame']
    assert torch.allclose(a['first_frame_latents'][:, 0], b['first_frame_latents'][:, 0], atol=1e-5)   # (the causal VAE: frame 0 alone)
    assert not torch.allclose(a['first_frame_latents'][:, -1], b['first_frame_latents'][:, -1], atol=1e-3)
    clip = _clip(root)
    (root / 'val-fun.json').write_text(json.dumps([dict(caption='a red circle', image_path=str(clip), last_image_path=str(clip))]))
    r = train(parse_args(_flags(zoo, last, root / 'fun', '--model_type', 'i2v', '--lora_training', 'True', '--lora_rank', 4,
                                '--log_validation', 'True', '--validation_dataset_file', root / 'val-fun.json', '--validation_steps', 4,
                                '--validation_sampling_steps', 2)), progress=False)
    assert all(np.isfinite(v) for v in r.losses.values()) and (root / 'fun' / 'final' / 'pytorch_lora_weights.safetensors').exists()
    assert list((root / 'fun' / 'validation' / 'step-000004').glob('*.mp4'))   # sampled from the clip's first and last frames


@pytest.mark.cuda
def test_offloaded_expert_waits_in_cpu_memory_on_a_gpu(root):
    "On a GPU: with --offload_inactive_dit the idle expert's weights and Adam state are in (pinned) CPU memory, the active one's on the GPU; same weights as without."
    if not torch.cuda.is_available(): pytest.skip("needs a CUDA GPU")
    zoo = tiny_zoo('wan2.2-t2v')
    data = _data(root, 't2v', tiny_zoo('t2v'))
    flags = lambda out, *x: _flags(zoo, data, out, '--boundary_ratio', 0.5, '--max_train_steps', 6, '--checkpointing_steps', 0, *x)
    seen = []
    def watch(step, loss):
        m = r_method[0]
        for e, inner in m.experts.items():
            seen.append((e == m.residency.active, next(inner.dit.parameters()).device.type))
    r_method = []
    from videorecipes.train.method import method_from_config
    cfg = parse_args(flags(root / 'gpu-off', '--offload_inactive_dit', 'True'))
    r_method.append(method_from_config(cfg))
    train(cfg, method=r_method[0], progress=False, on_step=watch)
    assert seen and all((dev == 'cuda') == active for active, dev in seen), seen
    train(parse_args(flags(root / 'gpu-on')), progress=False)
    for sub in ('transformer', 'transformer_2'):
        a, b = (load_transformer(root / d / 'final', 'fp32', sub).state_dict() for d in ('gpu-off', 'gpu-on'))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), sub
