"""LoRA tools (nbs/50_lora_tools.ipynb): the command line end to end, both adapter layouts through diffusers' own
loaders, the optimality of the factorisation, bad input, sharded merges, single-file models, LPIPS and the benchmark."""
import copy, json, math, os, re, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from videorecipes.lora_tools import (LoraError, MissingExtraError, Weights, LoraAdapter, COMFY_LORA_NAME, DIFFUSERS_LORA_NAME, MUSUBI_LORA_NAME,
                                     FULL_DELTAS_NAME, diffusers_to_wan, extract_lora, save_adapter, load_adapter, merge_into,
                                     merge_lora, low_rank, lpips_frames, to_comfy_keys, weight_report)
from videorecipes.zoo import tiny_zoo, load_transformer, transformer_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
torch.set_num_threads(1)


def run(cmd, ok=True):
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if ok: assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
    return {k: tiny_zoo(k) for k in ('t2v', 'i2v')}


def finetune(dit, seed=0, linear_only=False, rank=4):
    """A copy of `dit` with a rank-`rank`-plus-noise change of every linear weight; `linear_only`: False (change every tensor),
    True (only the linear weights) or 'biases' (the linear layers' weights and biases: all a LoRA file can carry)."""
    ft, g = copy.deepcopy(dit), torch.Generator().manual_seed(seed)
    params = dict(ft.named_parameters())
    with torch.no_grad():
        for n, p in params.items():
            if p.ndim == 2 and n.endswith('.weight'):
                o, i = p.shape
                p += 0.05 * torch.randn(o, rank, generator=g) @ torch.randn(rank, i, generator=g) / math.sqrt(i) + 2e-3 * torch.randn(o, i, generator=g)
            elif not linear_only or (linear_only == 'biases' and n.endswith('.bias') and params[n[:-5] + '.weight'].ndim == 2):
                p += 0.01 * torch.randn(p.shape, generator=g)
    return ft


def as_pipeline(dit, base, out):
    import shutil
    shutil.copytree(base, out, ignore=shutil.ignore_patterns('transformer'))
    dit.save_pretrained(Path(out) / 'transformer')
    return Path(out)


def dit_inputs(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36 if kind == 'i2v' else 16, 2, 8, 8, generator=g)
    kw = dict(timestep=torch.tensor([600]), encoder_hidden_states=torch.randn(1, 12, 64, generator=g), return_dict=False)
    if kind == 'i2v': kw['encoder_hidden_states_image'] = torch.randn(1, 17, 64, generator=g)
    return x, kw


def forward(dit, kind):
    x, kw = dit_inputs(kind)
    with torch.no_grad(): return dit(x, **kw)[0]


def rel(a, b): return float((a - b).abs().max() / b.abs().max())


# --- the command line, end to end -----------------------------------------------------------------------------------

def test_cli_full_rank_roundtrip_i2v(zoo, tmp_path):
    "extract --full_rank --full_deltas --comfy, then merge from the ComfyUI file: every tensor of the finetune comes back."
    base = zoo['i2v']
    ft = as_pipeline(finetune(load_transformer(base, 'fp32')), base, tmp_path / 'ft')
    r = run([BIN / 'videorecipes-lora', 'extract', '--base', base, '--finetuned', ft, '--full_rank', '--full_deltas', '--comfy',
             '--out', tmp_path / 'lora'])
    assert 'stored as full deltas' in r.stdout, r.stdout
    names = sorted(f.name for f in (tmp_path / 'lora').iterdir())
    assert names == sorted([COMFY_LORA_NAME, DIFFUSERS_LORA_NAME, FULL_DELTAS_NAME, 'extraction_report.json'])
    report = json.loads((tmp_path / 'lora' / 'extraction_report.json').read_text())
    assert report['info']['rank'] == 'full' and report['info']['lora_layers'] == report['info']['linear_layers'] > 50
    run([BIN / 'videorecipes-lora', 'merge', '--base', base, '--lora', tmp_path / 'lora' / COMFY_LORA_NAME, '--out', tmp_path / 'merged'])
    wf, wm = Weights(ft), Weights(tmp_path / 'merged')
    assert sorted(wf) == sorted(wm)
    worst = max(float(torch.linalg.norm(wm[k].float() - wf[k].float()) / torch.linalg.norm(wf[k].float())) for k in wf)
    assert worst < 1e-5, worst
    # the diffusers-layout folder (with its full_deltas sidecar) merges to the same
    ad = load_adapter(tmp_path / 'lora')
    assert len(ad.full) > 0 and ad.info['layout'] == 'diffusers'
    m = load_transformer(base, 'fp32'); merge_into(m, ad)
    assert max(float((m.state_dict()[k] - wm[k]).abs().max()) for k in wm) < 1e-6


def test_cli_compare_writes_report(zoo, tmp_path):
    base = zoo['t2v']
    ft = as_pipeline(finetune(load_transformer(base, 'fp32'), linear_only=True), base, tmp_path / 'ft')
    run([BIN / 'videorecipes-lora', 'extract', '--base', base, '--finetuned', ft, '--rank', '16', '--out', tmp_path / 'lora'])
    r = run([BIN / 'videorecipes-lora', 'compare', '--model_a', base, '--adapter_a', tmp_path / 'lora', '--model_b', ft,
             '--prompt', 'a red circle moving right on a blue background', '--num_inference_steps', '2',
             '--out', tmp_path / 'cmp.json', '--video_dir', tmp_path / 'videos'])
    rep = json.loads((tmp_path / 'cmp.json').read_text())
    v = rep['videos'][0]
    assert len(v['ssim']) == 17 and 0.5 < v['min_ssim'] <= 1 and rep['model_a']['adapter'].endswith('lora')
    assert rep['weights']['tensors'] == 123 and 0 < rep['weights']['max_rel_diff'] < 0.5
    try: import lpips  # noqa: F401
    except Exception: assert 'metrics' in rep['lpips_error'] and v['lpips'] is None
    assert len(list((tmp_path / 'videos' / 'a').glob('*.mp4'))) == 1 and 'SSIM mean' in r.stdout



def test_the_guides_three_commands_as_written(zoo, tmp_path):
    """The finetuning guide's extract_lora.py / merge_lora.py / lora_inference_comparison.py commands, literally (the scripts live in
    data_scripts/lora_extraction/), on the tiny zoo: an adapter file, a merged pipeline that is the finetune up to rank 32, a report."""
    base = zoo['t2v']
    ft = as_pipeline(finetune(load_transformer(base, 'fp32'), linear_only=True), base, tmp_path / 'ft')
    S = ROOT / 'data_scripts' / 'lora_extraction'
    def guide(*cmd):
        env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
        r = subprocess.run([sys.executable, *map(str, cmd)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        return r
    guide(S / 'extract_lora.py', '--base', base, '--ft', ft, '--out', 'adapter_r32.safetensors', '--rank', '32')
    assert (tmp_path / 'adapter_r32.safetensors').is_file() and load_adapter(tmp_path / 'adapter_r32.safetensors').peft_metadata()['r'] == 32
    r = guide(S / 'merge_lora.py', '--base', base, '--adapter', 'adapter_r32.safetensors', '--ft', ft, '--output', 'merged_model')
    assert (tmp_path / 'merged_model' / 'model_index.json').exists() and 'merged vs --ft' in r.stdout, r.stdout
    wr = weight_report(ft, tmp_path / 'merged_model')
    assert 0 < wr['max_rel_diff'] < 0.1, wr['max_rel_diff']          # rank 32 of a rank-4-plus-noise change
    r = guide(S / 'lora_inference_comparison.py', '--base', 'merged_model', '--ft', ft, '--adapter', 'NONE', '--output-dir', 'results',
              '--prompt', 'A cat sitting on a windowsill', '--compute-ssim', '--compute-lpips')
    rep = json.loads((tmp_path / 'results' / 'comparison.json').read_text())
    assert rep['model_a']['adapter'] is None and 0.5 < rep['summary']['mean_ssim'] <= 1 and list((tmp_path / 'results').rglob('*.mp4'))
    assert 'SSIM mean' in r.stdout and 'LPIPS' in r.stdout
    # --full-rank: the merge gives the finetune back
    guide(S / 'extract_lora.py', '--base', base, '--ft', ft, '--out', 'adapter_full.safetensors', '--full-rank')
    guide(S / 'merge_lora.py', '--base', base, '--adapter', 'adapter_full.safetensors', '--ft', ft, '--output', 'merged_full')
    assert weight_report(ft, tmp_path / 'merged_full')['max_rel_diff'] < 1e-5


# --- diffusers' loaders accept what we write, and compute what the merge computes ------------------------------------

@pytest.mark.parametrize('kind', ['t2v', 'i2v'])
def test_both_layouts_load_in_diffusers_and_equal_merge(zoo, tmp_path, kind):
    "Rank 8, alpha 4, clamped small layers, bias changes: pipe.load_lora_weights(folder or ComfyUI file) == merge."
    from diffusers import WanPipeline, WanImageToVideoPipeline
    cls = WanImageToVideoPipeline if kind == 'i2v' else WanPipeline
    base = zoo[kind]
    dit = load_transformer(base, 'fp32')
    ft = finetune(dit, seed=3, linear_only='biases')  # linear weights and biases: all a LoRA file can carry
    ad = extract_lora(dit, ft, rank=80, alpha=4.0, clamp_rank=True, full_deltas=True, progress=False)
    md = ad.peft_metadata()
    assert md['r'] == 80 and md['lora_alpha'] == 4.0 and md['rank_pattern'] and md['lora_bias'] and not ad.full
    assert md['rank_pattern']['^condition_embedder.text_embedder.linear_1'] == 64
    out = save_adapter(ad, tmp_path / 'lora', comfy=True, dtype='fp32')
    merged = copy.deepcopy(dit); merge_into(merged, ad)
    want = forward(merged, kind)
    assert rel(forward(dit, kind), want) > 1e-3
    for src in (out, out / COMFY_LORA_NAME):
        pipe = cls.from_pretrained(base)
        pipe.load_lora_weights(src)
        assert rel(forward(pipe.transformer, kind), want) < 1e-5, src
    from safetensors.torch import load_file  # the ComfyUI file: original-Wan names, alphas only inside the blocks
    keys = load_file(str(out / COMFY_LORA_NAME))
    assert 'diffusion_model.blocks.0.self_attn.q.alpha' in keys and 'diffusion_model.head.head.lora_A.weight' in keys
    assert not any(k.endswith('.alpha') and not k.startswith('diffusion_model.blocks.') for k in keys)
    if kind == 'i2v':
        assert 'diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight' in keys and 'diffusion_model.img_emb.proj.1.lora_B.weight' in keys


def test_to_comfy_keys_of_a_peft_state_dict(zoo):
    "The trainer's use: a peft state dict plus lora_alpha -> ComfyUI keys that diffusers converts back to the same update."
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers
    g = torch.Generator().manual_seed(0)
    sd = {'blocks.1.attn2.to_out.0.lora_A.weight': torch.randn(4, 128, generator=g), 'blocks.1.attn2.to_out.0.lora_B.weight': torch.randn(128, 4, generator=g),
          'blocks.1.ffn.net.0.proj.lora_A.weight': torch.randn(4, 128, generator=g), 'blocks.1.ffn.net.0.proj.lora_B.weight': torch.randn(256, 4, generator=g),
          'condition_embedder.time_proj.lora_A.weight': torch.randn(4, 128, generator=g), 'condition_embedder.time_proj.lora_B.weight': torch.randn(768, 4, generator=g)}
    c = to_comfy_keys(sd, alpha=16)
    back = _convert_non_diffusers_wan_lora_to_diffusers(dict(c))  # diffusers folds alpha/rank into A and B
    for m in ('blocks.1.attn2.to_out.0', 'blocks.1.ffn.net.0.proj', 'condition_embedder.time_proj'):
        torch.testing.assert_close(back[f'transformer.{m}.lora_B.weight'] @ back[f'transformer.{m}.lora_A.weight'],
                                   4.0 * sd[f'{m}.lora_B.weight'] @ sd[f'{m}.lora_A.weight'])


# --- the factorisation is optimal -----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(m=st.integers(8, 96), n=st.integers(8, 96), frac=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_rank_r_error_equals_eckart_young(m, n, frac, seed):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, n, generator=g) * torch.logspace(0, -3, n)[None, :]  # a decaying spectrum
    r = max(1, int(frac * min(m, n)))
    sv = torch.linalg.svdvals(D.double())
    opt = float(sv[r:].pow(2).sum().sqrt() / sv.pow(2).sum().sqrt())
    lr = low_rank(D, r, 'exact')
    assert abs(lr.rel_error - opt) <= 1e-4 * opt + 1e-5 and abs(lr.optimum - opt) <= 1e-4 * opt + 1e-6  # float32 round-off
    fast = low_rank(D, r, 'randomized', niter=3, oversample=8)
    assert fast.rel_error >= opt * (1 - 1e-4) - 1e-6  # nothing beats the optimum


@pytest.mark.parametrize('shape', [(600, 200), (200, 600), (384, 384)])
def test_auto_path_within_one_percent_of_optimum(shape):
    g = torch.Generator().manual_seed(1)
    m, n = shape
    U = torch.linalg.qr(torch.randn(m, 48, generator=g)).Q; V = torch.linalg.qr(torch.randn(n, 48, generator=g)).Q
    D = (U * torch.exp(-torch.arange(48) / 12.0)) @ V.T + 0.02 * torch.randn(m, n, generator=g)
    for r in (8, 16, 32):
        lr = low_rank(D, r, 'auto', verify=True)
        assert lr.method == 'randomized' and lr.optimum <= lr.rel_error * (1 + 1e-6) <= 1.01 * lr.optimum, (r, lr)


def test_full_rank_adapter_reproduces_finetune_in_fp32(zoo):
    dit = load_transformer(zoo['t2v'], 'fp32'); ft = finetune(dit, seed=5)
    ad = extract_lora(dit, ft, full_rank=True, full_deltas=True, progress=False)
    m = copy.deepcopy(dit); merge_into(m, ad)
    fs = ft.state_dict()
    assert max(float(torch.linalg.norm(v - fs[k]) / torch.linalg.norm(fs[k])) for k, v in m.state_dict().items()) < 1e-5


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,part', [('t2v', 'attention'), ('t2v', 'blocks'), ('i2v', 'attention')])
def test_three_layouts_load_in_diffusers_with_equal_outputs_and_merge_equal(zoo, tmp_path, kind, part):
    """An adapter of the blocks' attention only (from block 1 on, so block 0 is padding) or of every linear layer of the blocks,
    alpha != rank: the diffusers folder, the ComfyUI file and the musubi file load in diffusers to the same outputs, merge here to
    the same weights, and the musubi file reads back without its padding. A musubi file as musubi-tuner writes it (no padding,
    no metadata) merges here too (it used to be refused)."""
    import warnings
    from diffusers import WanPipeline, WanImageToVideoPipeline
    from safetensors.torch import load_file, save_file
    cls = WanImageToVideoPipeline if kind == 'i2v' else WanPipeline
    base = zoo[kind]
    dit = load_transformer(base, 'fp32')
    ad = extract_lora(dit, finetune(dit, seed=5, linear_only=True), rank=4, alpha=8.0, progress=False)
    keep = (lambda m: m.startswith('blocks.') and not m.startswith('blocks.0.') and ('attn' in m)) if part == 'attention' else (lambda m: m.startswith('blocks.'))
    ad.layers = {m: l for m, l in ad.layers.items() if keep(m)}
    assert ad.layers and (part != 'attention' or kind == 't2v' or any('add_k_proj' in m for m in ad.layers))
    with warnings.catch_warnings():
        warnings.simplefilter('error')   # blocks only: musubi's file leaves nothing out
        out = save_adapter(ad, tmp_path / 'lora', formats=('comfy', 'musubi'), shapes=Weights(base).shapes())
    files = {'diffusers': out, 'comfy': out / COMFY_LORA_NAME, 'musubi': out / MUSUBI_LORA_NAME}
    outs = {}
    for name, src in files.items():
        pipe = cls.from_pretrained(base)
        pipe.load_lora_weights(src)
        outs[name] = forward(pipe.transformer, kind)
    assert rel(forward(dit, kind), outs['diffusers']) > 1e-3
    for name in ('comfy', 'musubi'): assert rel(outs[name], outs['diffusers']) < 1e-5, name
    merged = {name: Weights(merge_lora(base, src, tmp_path / f'm_{name}') / 'transformer') for name, src in files.items()}
    for k in merged['diffusers']:
        for name in ('comfy', 'musubi'): torch.testing.assert_close(merged[name][k], merged['diffusers'][k], rtol=0, atol=1e-6)
    back = load_adapter(files['musubi'])
    assert back.info['layout'] == 'musubi' and sorted(back.layers) == sorted(ad.layers)
    for m, l in ad.layers.items(): torch.testing.assert_close(back.layers[m].delta(), l.delta())
    keys = load_file(str(files['musubi']))
    assert 'lora_unet_blocks_1_self_attn_q.lora_down.weight' in keys and 'lora_unet_blocks_1_self_attn_q.alpha' in keys
    assert ('lora_unet_blocks_0_ffn_0.lora_up.weight' in keys) and (part != 'attention' or not keys['lora_unet_blocks_0_ffn_0.lora_up.weight'].any())
    # as musubi-tuner itself writes it: only the trained layers, no metadata
    pad = set(json.loads(__import__('safetensors').safe_open(str(files['musubi']), 'pt').metadata()['videorecipes_padding']))
    flat = lambda m: 'lora_unet_' + diffusers_to_wan(m).replace('.', '_')
    own = {k: v for k, v in keys.items() if k.split('.')[0] not in {flat(m) for m in pad}}
    save_file(own, str(tmp_path / 'musubi_own.safetensors'))
    r = run([BIN / 'videorecipes-lora', 'merge', '--base', base, '--lora', tmp_path / 'musubi_own.safetensors', '--out', tmp_path / 'm_own'])
    w = Weights(tmp_path / 'm_own' / 'transformer')
    for k in w: torch.testing.assert_close(w[k], merged['diffusers'][k], rtol=0, atol=1e-6)


def test_bad_inputs_name_the_key_or_file(zoo, tmp_path):
    from diffusers import WanTransformer3DModel
    t2v, i2v = zoo['t2v'], zoo['i2v']
    # keys that do not match: a T2V base against an I2V finetune
    with pytest.raises(LoraError, match=r'add_k_proj.*not the same architecture'): extract_lora(t2v, i2v, progress=False)
    # shapes that do not match
    other = WanTransformer3DModel(**transformer_config('tiny-t2v', ffn_dim=320))
    with pytest.raises(LoraError, match=r'blocks\.0\.ffn\.net\.0\.proj\.bias: shape \[256\].*\[320\]'): extract_lora(t2v, other, progress=False)
    # an adapter for another architecture (I2V adapter on the T2V base; a wider FFN's adapter)
    dit_i = load_transformer(i2v, 'fp32')
    ad_i = save_adapter(extract_lora(dit_i, finetune(dit_i, linear_only=True), rank=4, progress=False), tmp_path / 'i2v_lora', comfy=True)
    with pytest.raises(LoraError, match=r'i2v_lora.*add_k_proj.*another architecture'): merge_lora(t2v, ad_i, tmp_path / 'm')
    with pytest.raises(LoraError, match=re.escape(COMFY_LORA_NAME) + '.*add_k_proj'): merge_lora(t2v, ad_i / COMFY_LORA_NAME, tmp_path / 'm')
    ad_o = extract_lora(other, finetune(other, linear_only=True), rank=4, progress=False)
    with pytest.raises(LoraError, match=r'ffn\.net\.0\.proj: the adapter updates a 320x128 weight but .* has \[256, 128\]'):
        merge_into(load_transformer(t2v, 'fp32'), ad_o)
    assert not (tmp_path / 'm').exists()
    # a rank larger than a matrix, before any work
    with pytest.raises(LoraError, match=r'condition_embedder\.text_embedder\.linear_1\.weight: rank 65 .* 128x64'):
        extract_lora(t2v, t2v, rank=65, progress=False)
    # pickles: tensors load (weights_only=True); anything else is refused, naming the file
    sd = {k: v.clone() for k, v in load_transformer(t2v, 'fp32').state_dict().items()}
    torch.save(sd, tmp_path / 'ok.bin')
    assert sorted(Weights(tmp_path / 'ok.bin')) == sorted(Weights(t2v))

    class Evil:
        def __reduce__(self): return (os.system, ('echo pwned > ' + str(tmp_path / 'pwned'),))
    torch.save({'a': torch.zeros(1), 'b': Evil()}, tmp_path / 'evil.pt')
    with pytest.raises(LoraError, match=r'evil\.pt: refused to load this pickle file with weights_only=True'): Weights(tmp_path / 'evil.pt')
    with pytest.raises(LoraError, match=r'evil\.pt: refused'): load_adapter(tmp_path / 'evil.pt')
    assert not (tmp_path / 'pwned').exists()
    # unreadable and missing files
    (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(LoraError, match=r'junk\.safetensors: not a readable safetensors file'): Weights(tmp_path / 'junk.safetensors')
    with pytest.raises(LoraError, match=r'no_such_model'): Weights(tmp_path / 'no_such_model')
    r = run([BIN / 'videorecipes-lora', 'merge', '--base', t2v, '--lora', tmp_path / 'evil.pt', '--out', tmp_path / 'mm'], ok=False)
    assert r.returncode == 2 and 'evil.pt: refused' in r.stderr, r.stderr


# --- merging ---------------------------------------------------------------------------------------------------------

def test_merge_writes_a_sharded_pipeline_in_the_base_dtypes(zoo, tmp_path):
    from diffusers import WanPipeline
    base = as_pipeline(load_transformer(zoo['t2v'], 'bf16'), zoo['t2v'], tmp_path / 'base_bf16')  # a bf16 base
    wb = Weights(base)
    dit = load_transformer(base, 'fp32')
    ad = extract_lora(dit, finetune(dit, linear_only=True), rank=8, progress=False)
    out = merge_lora(base, ad, tmp_path / 'merged', max_shard_size='200KB', link=False)
    shards = sorted((out / 'transformer').glob('diffusion_pytorch_model-*.safetensors'))
    assert len(shards) > 2 and (out / 'transformer' / 'diffusion_pytorch_model.safetensors.index.json').exists()
    assert (out / 'model_index.json').read_text() == (base / 'model_index.json').read_text()
    assert not os.path.samefile(out / 'vae' / 'config.json', base / 'vae' / 'config.json')  # link=False copies
    wm = Weights(out)
    assert {k: wm.dtype(k) for k in wm} == {k: wb.dtype(k) for k in wb}
    pipe = WanPipeline.from_pretrained(out)
    v = pipe('a red circle', height=64, width=64, num_frames=5, num_inference_steps=1, output_type='np',
             generator=torch.Generator().manual_seed(0)).frames
    assert v.shape == (1, 5, 64, 64, 3) and np.isfinite(v).all()
    with pytest.raises(FileExistsError, match='merged'): merge_lora(base, ad, out)
    merge_lora(base, ad, out, overwrite=True)


def test_single_file_models(zoo, tmp_path):
    "Base as one original-Wan-layout .safetensors (ComfyUI's checkpoint naming), finetune as a folder; merge back to a file."
    from safetensors.torch import save_file, load_file
    dit = load_transformer(zoo['t2v'], 'fp32')
    ft = as_pipeline(finetune(dit, seed=2, linear_only=True), zoo['t2v'], tmp_path / 'ft')
    f = tmp_path / 'wan_base.safetensors'
    save_file({'model.diffusion_model.' + diffusers_to_wan(k): v.contiguous() for k, v in dit.state_dict().items()}, str(f))
    a1 = extract_lora(f, ft, rank=8, method='exact', progress=False)
    a2 = extract_lora(zoo['t2v'], ft, rank=8, method='exact', progress=False)
    for m in a2.layers: torch.testing.assert_close(a1.layers[m].delta(), a2.layers[m].delta())
    out = merge_lora(f, a1, tmp_path / 'merged.safetensors')
    sd = load_file(str(out))
    assert sorted(sd) == sorted(load_file(str(f)))  # the base's key layout
    w = Weights(out)
    m = copy.deepcopy(dit); merge_into(m, a2)
    assert max(float((w[k] - v).abs().max()) for k, v in m.state_dict().items()) < 1e-6
    with pytest.raises(LoraError, match='writes a .safetensors file'): merge_lora(f, a1, tmp_path / 'merged_dir')


def test_weight_report_sees_adapters(zoo, tmp_path):
    dit = load_transformer(zoo['t2v'], 'fp32')
    ad = extract_lora(dit, finetune(dit, linear_only=True), rank=8, progress=False)
    m = copy.deepcopy(dit); merge_into(m, ad)
    assert weight_report(dit, m, adapter_a=ad)['max_rel_diff'] < 1e-6
    r = weight_report(dit, m)
    assert r['differing'] == len(ad.layers) and r['worst'][0][1] == r['max_rel_diff'] > 0


# --- LPIPS -----------------------------------------------------------------------------------------------------------

def _lpips_import_error():
    try: import lpips  # noqa: F401
    except Exception as e: return f"{type(e).__name__}: {e}"
    return None


def test_lpips_missing_gives_a_clear_message(monkeypatch):
    import videorecipes.lora_tools as lt
    monkeypatch.setitem(sys.modules, 'lpips', None)  # as if not installed
    monkeypatch.setattr(lt, '_LPIPS', {})
    v = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(MissingExtraError, match=r"videorecipes\[metrics\]"): lpips_frames(v, v)


@pytest.mark.skipif(_lpips_import_error() is not None, reason=f"lpips does not import here ({_lpips_import_error()}); "
                    "install the `metrics` extra with a torchvision that matches torch")
def test_lpips_scores_frames():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    noisy = np.clip(v + rng.normal(0, 40, v.shape), 0, 255).astype(np.uint8)
    same, diff = lpips_frames(v, v), lpips_frames(v, noisy)
    assert same.shape == (3,) and np.all(same < 1e-4) and np.all(diff > same + 0.01)


# --- the benchmark runs ----------------------------------------------------------------------------------------------

def test_benchmark_script_smoke(tmp_path):
    r = run([sys.executable, 'launchers/bench_lora_extract.py', '--blocks', '1', '--total_blocks', '3', '--dim', '192', '--ffn', '384',
             '--text_dim', '96', '--freq_dim', '64', '--out_dim', '16', '--rank', '8', '--signal_rank', '16', '--threads', '1',
             '--json', tmp_path / 'b.json'])
    assert 'speed-up' in r.stdout and 'EXTRAPOLATED to 3 blocks' in r.stdout
    res = json.loads((tmp_path / 'b.json').read_text())
    assert len(res['layers']) == 16 and res['max_ratio'] <= 1.01
