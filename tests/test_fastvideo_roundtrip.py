"""A round trip with the real FastVideo package (issue 16): shards written here decode under FastVideo 0.2.1's own reader
(`read_row_from_parquet_file` + `collate_rows_from_parquet_schema`, what `LatentsParquetMapStyleDataset.__getitems__` runs)
and its Wan normalisation (`normalize_dit_input`) to what our loader yields; shards made by FastVideo's own record creators
(`basic_t2v_record_creator` / `i2v_record_creator`) and writer (`ParquetDatasetWriter`) train here with --model_path. T2V and I2V.

Optional (marker `fastvideo`): skipped, with the reason, where fastvideo cannot be imported. Install it without touching torch:
`bash tests/install_fastvideo.sh`, then `pytest -m fastvideo tests/test_fastvideo_roundtrip.py`.
torchvision cannot be imported on these machines (its wheel is CUDA-linked) and FastVideo's dataset modules import a few
of its names at module level; the reader never calls them, so they are bound to placeholders that raise if called."""
import importlib.abc, importlib.machinery, os, subprocess, sys, types
from pathlib import Path
from types import SimpleNamespace
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.fastvideo
ROOT = Path(__file__).resolve().parents[1]


class _Absent:
    "A torchvision name FastVideo imports but its latents reader never calls: calling it fails the test."
    def __init__(self, name): self._n = name
    def __getattr__(self, k): return _Absent(f'{self._n}.{k}')
    def __call__(self, *a, **k): raise RuntimeError(f'{self._n} called, but torchvision is not available here')
    def __mro_entries__(self, bases): return (object,)


class _Names(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == 'torchvision' or name.startswith('torchvision.'): return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec):
        m = types.ModuleType(spec.name); m.__path__ = []
        def name(k):
            if k.startswith('__'): raise AttributeError(k)    # (dunder lookups: the import system's own probes)
            return _Absent(f'{spec.name}.{k}')
        m.__getattr__ = name
        return m
    def exec_module(self, m): pass


def _fastvideo():
    try: import torchvision  # noqa: F401   (a working torchvision needs no placeholders)
    except Exception:
        import transformers.models.auto.image_processing_auto, transformers.image_utils  # noqa: F401  (decide before the placeholders)
        for k in [k for k in sys.modules if k == 'torchvision' or k.startswith('torchvision.')]: del sys.modules[k]
        sys.meta_path.insert(0, _Names())
    from fastvideo.dataset.parquet_dataset_map_style import read_row_from_parquet_file
    from fastvideo.dataset.utils import collate_rows_from_parquet_schema
    from fastvideo.dataset.dataloader.schema import pyarrow_schema_t2v, pyarrow_schema_i2v
    from fastvideo.dataset.dataloader.record_schema import basic_t2v_record_creator, i2v_record_creator
    from fastvideo.dataset.dataloader.parquet_io import ParquetDatasetWriter, records_to_table
    from fastvideo.pipelines.pipeline_batch_info import PreprocessBatch
    from fastvideo.training.training_utils import normalize_dit_input
    return SimpleNamespace(**locals())


try:
    import importlib.util
    if importlib.util.find_spec('fastvideo') is None: raise ImportError('fastvideo is not installed (bash tests/install_fastvideo.sh)')
    FV = _fastvideo()
except Exception as e:
    pytest.skip(f"FastVideo cannot be imported here: {type(e).__name__}: {str(e)[:200]}", allow_module_level=True)

from videorecipes.config import parse_args
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.data.preprocess import preprocess_dataset, list_shards, row_tensor
from videorecipes.data.loader import LatentDataset, LatentStats, Collator
import pyarrow.parquet as pq

SIZE = ['--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('fvrt')
    make_synthetic_dataset(root / 'merged', num_videos=4, num_frames=9, height=32, width=32, progress=False)
    return dict(root=root, merged=root / 'merged', t2v=tiny_zoo('t2v'), i2v=tiny_zoo('i2v'))


def prep(src, kind, out):
    preprocess_dataset(parse_args([str(x) for x in ['--model_path', src[kind], '--model_type', kind, '--data_merge_path', src['merged'],
                                                    '--preprocess_output_dir', out, *SIZE, '--preprocess_num_workers', 0]]), progress=False)
    return LatentDataset(out)


def fastvideo_batch(folder, kind, n):
    "The batch FastVideo's map-style dataset makes of rows 0..n-1 (its own reader and collation)."
    files = [str(f) for f in list_shards(folder)]
    lengths = [pq.read_metadata(f).num_rows for f in files]
    rows = [FV.read_row_from_parquet_file(files, i, lengths) for i in range(n)]
    return FV.collate_rows_from_parquet_schema(rows, FV.pyarrow_schema_i2v if kind == 'i2v' else FV.pyarrow_schema_t2v, 32)


@pytest.mark.parametrize('kind', ['t2v', 'i2v'])
def test_our_shards_read_by_fastvideo(src, tmp_path, kind):
    ours = prep(src, kind, tmp_path / 'out')
    b = fastvideo_batch(tmp_path / 'out', kind, len(ours))
    st = ours.stats
    vae = SimpleNamespace(latents_mean=st.mean.tolist(), latents_std=st.std.tolist())   # (FastVideo's VAE carries these attributes)
    ref = Collator(text_max_length=32)([ours[i] for i in range(len(ours))])
    torch.testing.assert_close(FV.normalize_dit_input('wan', b['vae_latent'], vae), ref['latents'], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b['text_embedding'], ref['text_embeddings'].float(), rtol=0, atol=0)
    assert torch.equal(b['text_attention_mask'].bool(), ref['text_mask'].bool())
    if kind == 'i2v':
        torch.testing.assert_close(b['first_frame_latent'], ref['first_frame_latents'], rtol=0, atol=0)   # used by FastVideo as stored
        torch.testing.assert_close(b['clip_feature'], ref['clip_features'], rtol=0, atol=0)
        assert b['pil_image'].shape == (len(ours), 0)


@pytest.mark.parametrize('kind', ['t2v', 'i2v'])
def test_fastvideo_shards_read_and_trained_here(src, tmp_path, kind):
    ours = prep(src, kind, tmp_path / 'out')
    st = ours.stats
    raw = [ours.raw_row(i) for i in range(len(ours))]
    lat = [row_tensor(r, 'vae_latent').numpy() for r in raw]                  # FastVideo stores the VAE latent raw
    batch = FV.PreprocessBatch(data_type='video', video_file_name=[r['id'] for r in raw], prompt=[r['caption'] for r in raw], width=[32] * 4, height=[32] * 4,
                               fps=[16.0] * 4, num_frames=[9] * 4, latents=lat, prompt_embeds=[row_tensor(r, 'text_embedding').numpy() for r in raw])
    if kind == 'i2v':
        batch.image_embeds = [np.stack([row_tensor(r, 'clip_feature').numpy() for r in raw])]
        batch.image_latent = np.stack([row_tensor(r, 'first_frame_latent').numpy() for r in raw])     # normalised, its convention
        batch.pil_image = None
    records = (FV.i2v_record_creator if kind == 'i2v' else FV.basic_t2v_record_creator)(batch)
    w = FV.ParquetDatasetWriter(str(tmp_path / 'combined_parquet_dataset'), samples_per_file=2)
    w.append_table(FV.records_to_table(records, FV.pyarrow_schema_i2v if kind == 'i2v' else FV.pyarrow_schema_t2v))
    w.flush(num_workers=1, write_remainder=True)
    fv = tmp_path / 'combined_parquet_dataset'
    assert list(fv.glob('worker_*/*.parquet')) and not (fv / 'dataset_info.json').exists()
    theirs = LatentDataset(fv, latent_stats=src[kind])
    want = {ours[i]['id']: ours[i] for i in range(len(ours))}
    assert len(theirs) == len(ours)
    for i in range(len(theirs)):
        s = theirs[i]; o = want[s['id']]
        torch.testing.assert_close(s['latents'], o['latents'], rtol=0, atol=0)
        if kind == 'i2v': torch.testing.assert_close(s['first_frame_latents'], o['first_frame_latents'], rtol=0, atol=0)
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    r = subprocess.run([str(Path(sys.executable).parent / 'videorecipes-train'), '--data_path', str(fv), '--model_path', str(src[kind]),
                        '--model_type', kind, *map(str, SIZE), '--max_train_steps', '2', '--mixed_precision', 'no', '--dataloader_num_workers', '0',
                        '--report_to', 'none', '--output_dir', str(tmp_path / 'run')], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
