"""Preprocessing end to end (issue 3): synthetic merged dataset -> Parquet -> loader, T2V and I2V, every bad input
reported, interrupted runs resumed, two torchrun ranks writing disjoint shards, Hugging Face inputs."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}

from videorecipes.config import parse_args
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.data.video import remux_faststart, read_merged_dataset, load_clip
from videorecipes.data.preprocess import (data_cli, preprocess_dataset, list_shards, shard_meta, summarize, validate_dataset,
                                          row_tensor)
import videorecipes.data.preprocess as prep
from videorecipes.data.loader import LatentDataset, LatentLoader, denormalize_latents


def run(cmd, ok=True, timeout=300):
    r = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    if ok: assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('zoo')
    return dict(t2v=tiny_zoo('t2v', root), i2v=tiny_zoo('i2v', root))


def flags(model, src, out, *extra):
    return ['--model_path', model, '--data_merge_path', src, '--preprocess_output_dir', out, '--num_frames', 17,
            '--num_height', 64, '--num_width', 64, '--text_precision', 'fp32', *extra]


def spoil(src, good):
    "Add one input of every bad kind to a merged dataset; return the reasons expected in the report."
    v = src / 'videos'
    (v / 'junk.mp4').write_bytes(b'\x00' * 64)
    fs = remux_faststart(v / good[0]['path'], src / 'fs.mp4').read_bytes()
    (v / 'cut.mp4').write_bytes(fs[:len(fs) * 2 // 3])
    short = make_synthetic_dataset(src / 'short', num_videos=1, num_frames=5, progress=False)[0]
    shutil.copy(src / 'short' / 'videos' / short['path'], v / 'short.mp4')
    bad = [dict(good[0], path='junk.mp4'), dict(good[0], path='cut.mp4'), dict(good[0], path='short.mp4'),
           dict(good[0], path='gone.mp4'), dict(good[0], cap=['  ']), dict(good[0], path='../../outside.mp4'), 42,
           dict(good[0], cap=None)]
    return bad, {'unreadable': 1, 'truncated': 1, 'too_few_frames': 1, 'missing': 1, 'empty_caption': 1, 'malformed_entry': 2,
                 'path_escapes': 1}


def test_cli_t2v_round_trip(zoo, tmp_path):
    "The console script as a user runs it: create -> preprocess -> validate; then the loader gives back the clips."
    src, out = tmp_path / 'src', tmp_path / 'out'
    run([BIN / 'videorecipes-data', 'create', '--out', src, '--num_videos', 5, '--seed', 3])
    r = run([BIN / 'videorecipes-data', 'preprocess', *flags(zoo['t2v'], src, out, '--samples_per_file', 2)])
    assert '5 samples in 3 shards' in r.stdout, r.stdout
    r = run([BIN / 'videorecipes-data', 'validate', out])
    assert r.stdout.strip().endswith('ok') and 'latent_shape       [16, 5, 8, 8]' in r.stdout, r.stdout
    ds = LatentDataset(out)
    batch = next(iter(LatentLoader(ds, batch_size=5, shuffle=False, text_max_length=512)))
    assert batch['latents'].shape == (5, 16, 5, 8, 8) and batch['text_embeddings'].shape == (5, 512, 64)
    assert batch['text_mask'].sum(1).tolist() == [len(c.split()) + 1 for c in batch['captions']]
    from videorecipes.zoo import load_vae
    vae = load_vae(zoo['t2v'])
    ents = {e.id: e for e in read_merged_dataset(src)[0]}
    x = torch.stack([torch.from_numpy(load_clip(ents[i], 17, 64, 64, 16.0).frames) for i in batch['ids']])
    x = x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.no_grad():
        rec = vae.decode(denormalize_latents(batch['latents'], ds.stats)).sample.clamp(-1, 1)
        direct = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    torch.testing.assert_close(rec, direct, atol=1e-4, rtol=1e-4)
    from videorecipes.zoo import tiny_vae_dir
    report = json.loads((tiny_vae_dir() / 'training_report.json').read_text())
    psnr = 10 * torch.log10(4 / (rec - x).pow(2).mean()).item()
    if 'heldout_psnr_db' in report:   # the shipped VAE is trained: the round trip is as good as its report says
        assert psnr >= report['heldout_psnr_db'] - 3, (psnr, report)


def test_i2v_with_images(zoo, tmp_path):
    "I2V rows carry the condition latent and CLIP features; an image is a one-frame sample; loaders keep kinds apart."
    from PIL import Image
    src = tmp_path / 'src'
    good = make_synthetic_dataset(src, num_videos=3, progress=False)
    Image.fromarray(np.full((30, 50, 3), (40, 80, 220), np.uint8)).save(src / 'videos' / 'blue.jpg')
    (src / 'videos2caption.json').write_text(json.dumps(good + [dict(path='blue.jpg', cap=['a blue picture'])]))
    cfg = parse_args(flags(zoo['i2v'], src, tmp_path / 'out', '--model_type', 'i2v', '--preprocess_video_batch_size', 4))
    preprocess_dataset(cfg, progress=False)
    v = validate_dataset(tmp_path / 'out', progress=False)
    assert (v['videos'], v['images'], v['problems']) == (3, 1, []), v
    vids = LatentDataset(tmp_path / 'out', media_type='video')
    imgs = LatentDataset(tmp_path / 'out', media_type='image')
    assert (len(vids), len(imgs)) == (3, 1)
    b = next(iter(LatentLoader(vids, batch_size=3)))
    assert b['first_frame_latents'].shape == (3, 16, 5, 8, 8) and b['clip_features'].shape[:2] == (3, 17)
    assert imgs[0]['latents'].shape == (16, 1, 8, 8) and imgs[0]['first_frame_latents'].shape == (16, 1, 8, 8)
    with pytest.raises(ValueError, match='different latent shapes'):
        next(iter(LatentLoader(LatentDataset(tmp_path / 'out'), batch_size=4, shuffle=False)))


def test_every_bad_input_is_reported(zoo, tmp_path):
    src = tmp_path / 'src'
    good = make_synthetic_dataset(src, num_videos=2, progress=False)
    bad, expected = spoil(src, good)
    (src / 'videos2caption.json').write_text(json.dumps(good[:1] + bad + good[1:]))
    out = tmp_path / 'out'
    assert data_cli(['preprocess', *flags(zoo['t2v'], src, out, '--samples_per_file', 3)]) == 0
    s = json.loads((out / 'report.json').read_text())
    assert s['rows'] == 2 and s['by_reason'] == expected, s
    lines = [json.loads(l) for l in (out / 'report-rank000.jsonl').read_text().splitlines()]
    files = {l['file']: l['reason'] for l in lines}
    for f, reason in [('junk.mp4', 'unreadable'), ('cut.mp4', 'truncated'), ('short.mp4', 'too_few_frames'),
                      ('gone.mp4', 'missing'), ('../../outside.mp4', 'path_escapes')]:
        assert files.get(f) == reason, (f, files)
    assert all(l['detail'] for l in lines)
    # nothing good at all: every input reported, and the command fails
    (src / 'videos2caption.json').write_text(json.dumps(bad))
    out2 = tmp_path / 'out2'
    assert data_cli(['preprocess', *flags(zoo['t2v'], src, out2)]) == 1
    assert json.loads((out2 / 'report.json').read_text())['by_reason'] == expected


def test_interrupted_run_resumes(zoo, tmp_path, monkeypatch):
    src = tmp_path / 'src'
    make_synthetic_dataset(src, num_videos=7, progress=False)
    out = tmp_path / 'out'
    cfg = parse_args(flags(zoo['t2v'], src, out, '--samples_per_file', 2, '--preprocess_video_batch_size', 1))
    real, calls = prep._encode_batch, []

    def crash(*a, **kw):
        calls.append(1)
        if len(calls) == 4: raise KeyboardInterrupt   # in the middle of the second shard
        return real(*a, **kw)
    monkeypatch.setattr(prep, '_encode_batch', crash)
    with pytest.raises(KeyboardInterrupt): preprocess_dataset(cfg, progress=False)
    monkeypatch.setattr(prep, '_encode_batch', real)
    assert [p.name for p in list_shards(out)] == ['rank000-00000.parquet']
    assert not [p for p in out.iterdir() if p.name.startswith('.')], "no temporary file left under a real name"
    first = (out / 'rank000-00000.parquet').stat().st_mtime_ns
    res = preprocess_dataset(cfg, progress=False)
    assert (res['shards_resumed'], res['shards_written'], res['shards_left']) == (1, 3, 0), res
    assert (out / 'rank000-00000.parquet').stat().st_mtime_ns == first
    ids = [i for p in list_shards(out) for i in pq.read_table(p, columns=['id']).column('id').to_pylist()]
    assert sorted(ids) == sorted(e.id for e in read_merged_dataset(src)[0])
    # --preprocess_max_shards stops early on purpose; the next run finishes
    out3 = tmp_path / 'out3'
    cfg3 = parse_args(flags(zoo['t2v'], src, out3, '--samples_per_file', 2, '--preprocess_max_shards', 3))
    assert preprocess_dataset(cfg3, progress=False)['shards_left'] == 1
    assert preprocess_dataset(cfg3, progress=False)['shards_written'] == 1
    assert summarize(out3)['rows'] == 7


def test_stale_shard_is_redone(zoo, tmp_path):
    src = tmp_path / 'src'
    good = make_synthetic_dataset(src, num_videos=4, progress=False)
    out = tmp_path / 'out'
    cfg = parse_args(flags(zoo['t2v'], src, out, '--samples_per_file', 2))
    preprocess_dataset(cfg, progress=False)
    (src / 'videos2caption.json').write_text(json.dumps(good[::-1][:3]))   # other inputs: chunk ids change
    res = preprocess_dataset(cfg, progress=False)
    assert (res['shards_resumed'], res['shards_written']) == (0, 2), res
    assert sorted(shard_meta(list_shards(out)[0])['chunk_ids']) == sorted([good[3]['path'], good[2]['path']])
    assert summarize(out)['rows'] == 3


def test_torchrun_two_ranks_disjoint(zoo, tmp_path, capsys):
    "Two CPU processes (gloo) split the inputs: disjoint shards that cover every input exactly once."
    src = tmp_path / 'src'
    good = make_synthetic_dataset(src, num_videos=7, progress=False)
    (src / 'videos' / 'junk.mp4').write_bytes(b'junk')
    (src / 'videos2caption.json').write_text(json.dumps(good + [dict(good[0], path='junk.mp4')]))
    out = tmp_path / 'out'
    cmd = [BIN / 'torchrun', '--standalone', '--nproc_per_node', 2, '--no-python', BIN / 'videorecipes-data', 'preprocess',
           *flags(zoo['t2v'], src, out, '--samples_per_file', 2, '--preprocess_num_workers', 1)]
    r = run(cmd)
    shards = list_shards(out)
    by_rank = {r_: [p for p in shards if p.name.startswith(f'rank{r_:03d}-')] for r_ in (0, 1)}
    assert [len(v) for v in by_rank.values()] == [2, 2], [p.name for p in shards]
    ids = {r_: [i for p in ps for i in pq.read_table(p, columns=['id']).column('id').to_pylist()] for r_, ps in by_rank.items()}
    assert not set(ids[0]) & set(ids[1])
    reported = [json.loads(l)['file'] for f in out.glob('report-rank*.jsonl') for l in f.read_text().splitlines()]
    assert sorted(ids[0] + ids[1] + reported) == sorted([g['path'] for g in good] + ['junk.mp4'])
    assert json.loads((out / 'report.json').read_text())['rows'] == 7
    assert {shard_meta(p)['world_size'] for p in shards} == {2}
    r = run(cmd)   # everything done: both ranks resume without writing
    assert r.stdout.count('0 shards written, 2 already done') == 2, r.stdout
    # a different number of ranks would mix two splits: refused, naming the setting
    assert data_cli(['preprocess', *flags(zoo['t2v'], src, out, '--samples_per_file', 2)]) == 2
    assert 'world_size: 2 -> 1' in capsys.readouterr().err


def test_hugging_face_inputs(zoo, tmp_path):
    "A `datasets` folder from save_to_disk (videos as bytes) and a CSV folder with relative paths."
    import datasets
    src = tmp_path / 'src'
    good = make_synthetic_dataset(src, num_videos=3, progress=False)
    vids = [(src / 'videos' / g['path']).read_bytes() for g in good]
    datasets.Dataset.from_dict({'clip': vids, 'text': [g['cap'][0] for g in good]}).save_to_disk(str(tmp_path / 'hf'))
    out = tmp_path / 'out'
    argv = ['--model_path', zoo['t2v'], '--dataset_path', tmp_path / 'hf', '--hf_video_column', 'clip', '--hf_caption_column', 'text',
            '--preprocess_output_dir', out, '--num_frames', 17, '--num_height', 64, '--num_width', 64, '--text_precision', 'fp32']
    assert data_cli(['preprocess', *argv]) == 0
    rows = pq.read_table(list_shards(out)[0]).to_pylist()
    assert [r['caption'] for r in rows] == [g['cap'][0] for g in good]
    assert row_tensor(rows[0], 'vae_latent').shape == (16, 5, 8, 8)
    # a VideoFolder: videos beside a metadata.csv (the `Video` feature is read undecoded: no torchcodec needed)
    vf = tmp_path / 'videofolder'; (vf / 'v').mkdir(parents=True)
    for g in good: shutil.copy(src / 'videos' / g['path'], vf / 'v' / g['path'])
    (vf / 'metadata.csv').write_text('file_name,caption\n' + ''.join(f"v/{g['path']},{g['cap'][0]}\n" for g in good))
    out2 = tmp_path / 'out2'
    argv2 = ['--model_path', zoo['t2v'], '--dataset_path', vf, '--preprocess_output_dir', out2, '--num_frames', 17,
             '--num_height', 64, '--num_width', 64, '--text_precision', 'fp32']
    assert data_cli(['preprocess', *argv2]) == 0
    assert summarize(out2)['rows'] == 3
    # relative paths in a saved dataset resolve inside its folder, and may not leave it
    sv = tmp_path / 'saved'
    datasets.Dataset.from_dict({'video': [f"v/{good[0]['path']}", '../src/videos/' + good[1]['path'], 'v/none.mp4'],
                                'caption': ['ok', 'escape', 'missing']}).save_to_disk(str(sv))
    (sv / 'v').mkdir(); shutil.copy(src / 'videos' / good[0]['path'], sv / 'v' / good[0]['path'])
    out3 = tmp_path / 'out3'
    argv3 = [sv if a == vf else out3 if a == out2 else a for a in argv2]
    assert data_cli(['preprocess', *argv3]) == 0
    s = json.loads((out3 / 'report.json').read_text())
    assert s['rows'] == 1 and s['by_reason'] == {'path_escapes': 1, 'missing': 1}, s
