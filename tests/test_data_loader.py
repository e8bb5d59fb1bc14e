"""The latent loader (issue 3): sampler properties over many shapes, exact resume with DataLoader workers,
seeded classifier-free-guidance dropout, normalisation statistics from every source."""
import json
from pathlib import Path
import pytest
import torch
from hypothesis import given, settings, strategies as st

from videorecipes.config import parse_args
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.data.loader import (ParallelSampler, LatentDataset, LatentLoader, LatentStats, Collator, build_loader,
                                      cfg_dropped, normalize_latents, dp_rank_and_size)


@given(n=st.integers(1, 60), dp=st.integers(1, 5), sp=st.integers(1, 3), seed=st.integers(0, 2**31), epoch=st.integers(0, 5),
       drop_last=st.booleans())
@settings(max_examples=150, deadline=None)
def test_sampler_partitions_epochs(n, dp, sp, seed, epoch, drop_last):
    if drop_last and n < dp: return
    ranks = {g: list(ParallelSampler(n, g // sp, dp, seed, epoch, drop_last=drop_last)) for g in range(dp * sp)}
    for g in range(dp * sp): assert ranks[g] == ranks[g - g % sp], "SP partners see the same samples"
    per_dp = [ranks[d * sp] for d in range(dp)]
    assert len({len(x) for x in per_dp}) == 1, "every DP rank does the same number of steps"
    flat = [i for x in per_dp for i in x]
    if drop_last:
        assert len(set(flat)) == len(flat) == n - n % dp, "disjoint, and only the remainder is dropped"
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // dp) * dp, "every sample, padded by wrapping"
    assert per_dp[0] == list(ParallelSampler(n, 0, dp, seed, epoch, drop_last=drop_last)), "deterministic"


@given(n=st.integers(4, 40), dp=st.integers(1, 4), dp2=st.integers(1, 4), k=st.integers(0, 10), seed=st.integers(0, 99))
@settings(max_examples=100, deadline=None)
def test_sampler_resumes_exactly(n, dp, dp2, k, seed):
    "After k steps on dp ranks, resuming on dp2 ranks yields exactly the rest of the epoch's order."
    if n < max(dp, dp2): return
    s = ParallelSampler(n, 0, dp, seed, epoch=3)
    k = min(k, len(s))
    sd = s.state_dict(consumed=k)
    order = ParallelSampler(n, 0, 1, seed, epoch=3, drop_last=False).order()
    rest = []
    for r in range(dp2):
        t = ParallelSampler(n, r, dp2, 0, 0); t.load_state_dict(sd)
        assert t.epoch == 3 and t.seed == seed
        rest.append(list(t))
    got = sorted(i for x in rest for i in x)
    total2 = n - n % dp2
    assert got == sorted(order[k * dp:total2]) if k * dp <= total2 else got == []


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('loader')
    zoo = tiny_zoo('t2v', root / 'zoo')
    make_synthetic_dataset(root / 'merged', num_videos=12, progress=False)
    cfg = parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data', '--num_frames', 17,
                      '--num_height', 64, '--num_width', 64, '--samples_per_file', 5, '--text_precision', 'fp32'])
    preprocess_dataset(cfg, progress=False)
    return dict(root=root, zoo=zoo, path=root / 'data', cfg=cfg)


def batches(loader, stop=None):
    out = []
    for b in loader:
        out.append(b)
        if stop and len(out) == stop: break
    return out


def same(a, b):
    assert [x['indices'].tolist() for x in a] == [x['indices'].tolist() for x in b]
    assert [x['cfg_dropped'].tolist() for x in a] == [x['cfg_dropped'].tolist() for x in b]
    for x, y in zip(a, b):
        torch.testing.assert_close(x['latents'], y['latents']); torch.testing.assert_close(x['text_embeddings'], y['text_embeddings'])


def test_workers_and_exact_resume(data):
    "With 2 worker processes prefetching, the state after k batches still points at batch k+1."
    mk = lambda w: LatentLoader(LatentDataset(data['path']), 2, dp_rank=1, dp_size=2, seed=5, epoch=2, num_workers=w, cfg_rate=0.4)
    whole = batches(mk(0))
    assert len(whole) == 3 == len(mk(0))
    l = mk(2)
    first = batches(l, stop=1)
    sd = json.loads(json.dumps(l.state_dict()))   # checkpoints store it as JSON
    assert sd['position'] == 4 and sd['epoch'] == 2
    r = mk(2); r.load_state_dict(sd)
    assert len(r) == 2
    same(whole, first + batches(r))
    r.set_epoch(3)
    assert [b['indices'].tolist() for b in batches(r)] != [b['indices'].tolist() for b in whole]


def test_cfg_dropout_and_text_padding(data):
    ds = LatentDataset(data['path'])
    all_drop = Collator(text_max_length=512, cfg_rate=0.999999, empty_embedding=None)([ds[0], ds[1]])
    assert all_drop['cfg_dropped'].all() and not all_drop['text_mask'].any() and all_drop['text_embeddings'].abs().max() == 0
    none = Collator(text_max_length=8, cfg_rate=0.0)([ds[0]])
    assert none['text_mask'].sum() == 8 and torch.equal(none['text_embeddings'][0], ds[0]['text_embedding'][:8]), "truncated to the model's length"
    drops = [[cfg_dropped(s, e, i, 0.3) for i in range(50)] for s in (0, 1) for e in (0, 1)]
    assert all(a != b for j, a in enumerate(drops) for b in drops[j + 1:]), "seed and epoch change the draws"


def test_stats_sources_agree(data):
    from videorecipes.zoo import load_vae
    a = LatentStats.load(data['path'])
    for src in (data['zoo'], data['zoo'] / 'vae', load_vae(data['zoo']), json.loads((data['path'] / 'dataset_info.json').read_text())):
        b = LatentStats.load(src)
        assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std), src
    with pytest.raises(ValueError, match='latents_mean'): LatentStats.load(dict(foo=1))
    custom = LatentStats.load(dict(latents_mean=[1.0] * 16, latents_std=[2.0] * 16))
    ds = LatentDataset(data['path'], latent_stats=custom)
    raw = LatentDataset(data['path'], latent_stats=dict(latents_mean=[0.0] * 16, latents_std=[1.0] * 16))
    torch.testing.assert_close(ds[3]['latents'], (raw[3]['latents'] - 1) / 2)
    torch.testing.assert_close(normalize_latents(raw[3]['latents'], custom), ds[3]['latents'])


def test_build_loader_from_flags(data):
    cfg = parse_args(['--data_path', data['path'], '--train_batch_size', 3, '--cfg_rate', 0.0, '--text_max_length', 32,
                      '--dataloader_num_workers', 0])
    assert dp_rank_and_size(sp_size=2) == (0, 1)   # no process group: one rank
    l = build_loader(cfg, dp_rank=0, dp_size=2)
    b = next(iter(l))
    assert b['latents'].shape == (3, 16, 5, 8, 8) and b['text_embeddings'].shape == (3, 32, 64) and not b['cfg_dropped'].any()
    assert len(l) == 2
    with pytest.raises(FileNotFoundError, match='no Parquet shards'): LatentDataset(data['root'])
