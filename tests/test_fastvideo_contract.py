"""The FastVideo data contract (issue 16, first part): every stored tensor decodes under FastVideo's rule (bytes + shape as
float32), FastVideo's worker-folder layout without dataset_info.json and with latent-frame `num_frames` validates and
trains with --model_path, temporary files never look like shards and a rerun removes stale ones, merge.txt is an input."""
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from videorecipes.config import parse_args
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.data.preprocess import preprocess_dataset, list_shards, validate_dataset, row_tensor

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
SIZE = ['--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]


def run(cmd, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('fv')
    make_synthetic_dataset(root / 'merged', num_videos=4, num_frames=9, height=32, width=32, progress=False)
    return dict(root=root, merged=root / 'merged', t2v=tiny_zoo('t2v'), i2v=tiny_zoo('i2v'))


def prep(src, kind, out, *extra):
    return preprocess_dataset(parse_args([str(x) for x in ['--model_path', src[kind], '--model_type', kind, '--data_merge_path', src['merged'],
                                                           '--preprocess_output_dir', out, *SIZE, '--preprocess_num_workers', 0, *extra]]), progress=False)


@pytest.mark.parametrize('kind', ['t2v', 'i2v'])
def test_every_stored_tensor_decodes_as_float32(src, tmp_path, kind):
    "Encoders in bf16, yet every tensor column reads back under FastVideo's rule (bytes + shape as float32), equal to ours."
    prep(src, kind, tmp_path / 'out', '--text_precision', 'bf16', '--vae_precision', 'bf16', '--image_precision', 'bf16')
    names = ['vae_latent', 'text_embedding'] + (['first_frame_latent', 'clip_feature'] if kind == 'i2v' else [])
    for row in pq.read_table(list_shards(tmp_path / 'out')[0]).to_pylist():
        for n in names:
            a = np.frombuffer(row[f'{n}_bytes'], dtype=np.float32).reshape(row[f'{n}_shape'])
            assert row[f'{n}_dtype'] == 'float32' and np.array_equal(a, row_tensor(row, n).numpy()), n


def fastvideo_layout(out, dest):
    "`out`'s shards as FastVideo writes them: combined_parquet_dataset/worker_*/data_chunk_*.parquet, num_frames in latent frames, no dataset_info.json."
    for i, s in enumerate(list_shards(out)):
        t = pq.read_table(s)
        lat = [r[1] for r in t.column('vae_latent_shape').to_pylist()]
        t = t.set_column(t.schema.get_field_index('num_frames'), 'num_frames', pa.array(lat, pa.int64()))
        (dest / f'worker_{i}').mkdir(parents=True, exist_ok=True)
        pq.write_table(t, dest / f'worker_{i}' / f'data_chunk_{i}.parquet')
    return dest


def test_fastvideo_layout_validates_and_trains(src, tmp_path):
    "Worker subfolders, latent-frame num_frames, no dataset_info.json: validate finds no problem, and videorecipes-train trains on it with --model_path."
    prep(src, 't2v', tmp_path / 'out', '--samples_per_file', 2, '--text_precision', 'fp32')
    fv = fastvideo_layout(tmp_path / 'out', tmp_path / 'combined_parquet_dataset')
    assert not (fv / 'dataset_info.json').exists() and len(list_shards(fv)) == 2
    v = validate_dataset(fv, progress=False)
    assert v['rows'] == 4 and v['problems'] == [], v['problems']
    train = [BIN / 'videorecipes-train', '--data_path', fv, *SIZE, '--max_train_steps', 2, '--mixed_precision', 'no', '--cfg_rate', 0,
             '--dataloader_num_workers', 0, '--report_to', 'none', '--train_batch_size', 2]
    r = run(train + ['--model_path', src['t2v'], '--output_dir', tmp_path / 'run'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / 'run' / 'final' / 'model_index.json').exists()
    # a --model_path without a VAE: one clear line and exit 2, not a traceback
    r = run(train + ['--model_path', Path(src['t2v']) / 'transformer', '--output_dir', tmp_path / 'bad'])
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert 'no dataset_info.json, so the latents\' statistics come from the VAE of --model_path' in r.stderr.strip().splitlines()[-1], r.stderr[-500:]


def test_no_temporary_looks_like_a_shard_and_a_rerun_removes_them(src, tmp_path, monkeypatch):
    "A write interrupted inside its temporary file leaves nothing named *.parquet; a stale temporary of this rank is removed by the next run."
    import videorecipes.data.preprocess as p
    real, seen = pq.write_table, []
    def crash(table, where, **kw):
        seen.append(Path(where)); real(table, where, **kw); raise KeyboardInterrupt
    monkeypatch.setattr(pq, 'write_table', crash)
    with pytest.raises(KeyboardInterrupt): prep(src, 't2v', tmp_path / 'out', '--text_precision', 'fp32')
    monkeypatch.setattr(pq, 'write_table', real)
    assert seen and seen[0].suffix == '.tmp' and not seen[0].exists()     # (atomic_path removed it)
    assert list(tmp_path.rglob('*.parquet')) == []
    stale = tmp_path / 'out' / '.rank000-00000.parquet.abcd.tmp'; stale.write_bytes(b'half a shard')
    assert list_shards(tmp_path / 'out') == []
    prep(src, 't2v', tmp_path / 'out', '--text_precision', 'fp32')
    assert not stale.exists() and len(list_shards(tmp_path / 'out')) == 1


def test_merge_txt_is_an_input(src, tmp_path):
    "FastVideo's merge.txt (videos_folder,videos2caption.json per line) preprocesses like the folder itself."
    m = tmp_path / 'merge.txt'
    m.write_text(f"{src['merged'] / 'videos'},{src['merged'] / 'videos2caption.json'}\n")
    r = run([BIN / 'videorecipes-data', 'preprocess', '--model_path', src['t2v'], '--data_merge_path', m, '--preprocess_output_dir',
             tmp_path / 'out', *SIZE, '--text_precision', 'fp32', '--preprocess_num_workers', 0])
    assert r.returncode == 0, r.stderr[-2000:]
    assert validate_dataset(tmp_path / 'out', progress=False)['rows'] == 4
    m.write_text("only-one-field\n")
    r = run([BIN / 'videorecipes-data', 'preprocess', '--model_path', src['t2v'], '--data_merge_path', m, '--preprocess_output_dir',
             tmp_path / 'out2', *SIZE])
    assert r.returncode == 2 and "merge.txt:1: expected 'videos_folder,videos2caption.json'" in r.stderr, r.stderr[-1000:]


def test_first_frame_latents_normalised_and_read_in_both_conventions(src, tmp_path):
    """I2V first-frame latents are stored normalised (FastVideo's convention, which its trainer uses as stored); a FastVideo-written
    shard (no videorecipes metadata) reads unchanged, an older shard of ours (raw, no `first_frame_latent` key) is normalised when read."""
    import json, torch
    from videorecipes.config import ConfigError
    from videorecipes.data.loader import LatentDataset, LatentStats, denormalize_latents
    from videorecipes.data.preprocess import SHARD_META_KEY, first_frame_normalized, tensor_to_bytes
    prep(src, 'i2v', tmp_path / 'out', '--text_precision', 'fp32')
    ours = LatentDataset(tmp_path / 'out')
    want = {ours[i]['id']: ours[i]['first_frame_latents'] for i in range(len(ours))}
    # FastVideo's rule: bytes + shape as float32, used as they are
    t = pq.read_table(list_shards(tmp_path / 'out')[0])
    for row in t.to_pylist():
        a = np.frombuffer(row['first_frame_latent_bytes'], dtype=np.float32).reshape(row['first_frame_latent_shape'])
        assert np.array_equal(a, want[row['id']].numpy())
        assert (row['pil_image_bytes'], row['pil_image_shape'], row['pil_image_dtype']) == (b'', [], '')
    assert pq.read_schema(list_shards(tmp_path / 'out')[0]).names[:13] == [
        'id', 'vae_latent_bytes', 'vae_latent_shape', 'vae_latent_dtype', 'text_embedding_bytes', 'text_embedding_shape', 'text_embedding_dtype',
        'clip_feature_bytes', 'clip_feature_shape', 'clip_feature_dtype', 'first_frame_latent_bytes', 'first_frame_latent_shape', 'first_frame_latent_dtype']
    # a shard as FastVideo writes it: no videorecipes metadata, no dataset_info.json
    (tmp_path / 'fv' / 'worker_0').mkdir(parents=True)
    pq.write_table(t.replace_schema_metadata(None), tmp_path / 'fv' / 'worker_0' / 'data_chunk_0.parquet')
    assert first_frame_normalized(tmp_path / 'fv' / 'worker_0' / 'data_chunk_0.parquet')
    fv = LatentDataset(tmp_path / 'fv', latent_stats=src['i2v'])
    for i in range(len(fv)): assert torch.equal(fv[i]['first_frame_latents'], want[fv[i]['id']])
    # an older shard of ours: raw values, shard metadata without the key, dataset_info.json without it
    stats = LatentStats.load(src['i2v'])
    md = json.loads(t.schema.metadata[SHARD_META_KEY]); md.pop('first_frame_latent')
    raw = [tensor_to_bytes(denormalize_latents(want[i], stats)) for i in t.column('id').to_pylist()]
    old = t.set_column(t.schema.get_field_index('first_frame_latent_bytes'), 'first_frame_latent_bytes', pa.array([r[0] for r in raw], pa.binary()))
    old = old.drop_columns(['pil_image_bytes', 'pil_image_shape', 'pil_image_dtype']).replace_schema_metadata({SHARD_META_KEY: json.dumps(md).encode()})
    (tmp_path / 'old').mkdir()
    info = json.loads((tmp_path / 'out' / 'dataset_info.json').read_text()); info.pop('first_frame_latent')
    (tmp_path / 'old' / 'dataset_info.json').write_text(json.dumps(info))
    pq.write_table(old, tmp_path / 'old' / list_shards(tmp_path / 'out')[0].name)
    assert not first_frame_normalized(list_shards(tmp_path / 'old')[0])
    od = LatentDataset(tmp_path / 'old')
    for i in range(len(od)): torch.testing.assert_close(od[i]['first_frame_latents'], want[od[i]['id']], atol=1e-5, rtol=1e-5)
    v = validate_dataset(tmp_path / 'old', progress=False)
    assert v['problems'] == [] and v['first_frame_latent'] == {'raw': 1}, v
    # preprocessing more into the old folder would mix the two: refused, naming the setting
    with pytest.raises(ConfigError, match='first_frame_latent'): prep(src, 'i2v', tmp_path / 'old', '--text_precision', 'fp32')
