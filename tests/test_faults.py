"""Kill every writer at many points and restart: nothing half-written is ever read, nothing finished is lost, and a
resumed training run is bit-identical to an uninterrupted one. Each kill is a forked child SIGKILLing itself at the k-th
filesystem operation (see tests/faults.py), so the sweeps are cheap: the tiny zoo, 9x32x32 clips, a few steps."""
import hashlib, json, os, shutil
from pathlib import Path
import pytest
import torch
from faults import run_in_child, sweep
from videorecipes.config import parse_args
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.synthetic import make_synthetic_dataset

os.environ.setdefault('OMP_NUM_THREADS', '1'); torch.set_num_threads(1)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('faults')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=6, num_frames=9, height=32, width=32, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data', *SIZE,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')

SIZE = ['--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]


def flags(d, out, *extra):
    return [str(x) for x in ['--model_path', d['zoo'], '--data_path', d['data'], *SIZE, '--train_batch_size', 2, '--dataloader_num_workers', 0,
                             '--mixed_precision', 'no', '--learning_rate', 1e-3, '--max_train_steps', 6, '--checkpointing_steps', 2,
                             '--checkpoints_total_limit', 10, '--report_to', 'none', '--output_dir', out, *extra]]


def train_ok(argv):
    from videorecipes.train.cli import train_cli
    assert train_cli(argv) == 0


def losses(out): return {r['step']: (r['loss'], r['grad_norm']) for r in map(json.loads, (Path(out) / 'metrics.jsonl').read_text().splitlines())}


def digest(folder):
    "A hash of every file under `folder` (names and bytes)."
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob('*')):
        if p.is_file(): h.update(str(p.relative_to(folder)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


def test_training_killed_anywhere_while_rewriting_checkpoints(data, tmp_path):
    "A run resumed from checkpoint-2 rewrites checkpoint-4 and -6 and final/ over complete ones; killed at any operation from then on, a restart from `latest` ends exactly like the uninterrupted run."
    import videorecipes.train.trainer as T
    assert run_in_child(lambda: train_ok(flags(data, tmp_path / 'ref'))) == 'ok'
    ref = losses(tmp_path / 'ref')
    def check(k, result):
        out = tmp_path / f'k{k}'
        if result == 'killed':
            assert run_in_child(lambda: train_ok(flags(data, out, '--resume_from_checkpoint', 'latest'))) == 'ok', f"restart after kill {k} failed"
        assert result in ('killed', 'ok') and losses(out) == ref, k
        assert (out / 'final' / 'model_index.json').exists()
        shutil.rmtree(out)
    def run(k):
        out = tmp_path / f'k{k}'
        shutil.copytree(tmp_path / 'ref', out)
        return lambda: train_ok(flags(data, out, '--resume_from_checkpoint', out / 'checkpoint-2'))
    n = 0
    for k in range(1, 80):
        r = run_in_child(run(k), k, (T, 'save_checkpoint'))
        check(k, r); n = k
        if r == 'ok': break
    assert n > 5, n
    print(f"killed at {n - 1} points")


@pytest.fixture(scope='module')
def adapter(data):
    "A finetune of the tiny DiT (its weights nudged), its rank-4 LoRA, and the base merged with it at scale 1 (the folder to overwrite)."
    from videorecipes.zoo import load_transformer
    from videorecipes.train.full import write_pipeline_folder
    from videorecipes.lora_tools import lora_cli
    root = data['root']
    dit = load_transformer(data['zoo'], dtype='fp32')
    with torch.no_grad():
        for p in dit.parameters(): p.add_(0.01 * torch.randn_like(p))
    write_pipeline_folder(data['zoo'], dit, root / 'ft')
    assert lora_cli(['extract', '--base', data['zoo'], '--finetuned', root / 'ft', '--rank', 4, '--out', root / 'lora']) == 0
    assert lora_cli(['merge', '--base', data['zoo'], '--lora', root / 'lora', '--out', root / 'merged_model', '--copy']) == 0
    return dict(root=root, zoo=data['zoo'], lora=root / 'lora', merged=root / 'merged_model')


def test_merge_overwrite_killed_anywhere(adapter, tmp_path):
    "`videorecipes-lora merge --overwrite` killed at any operation leaves the old folder or the new one, whole, never a mixture."
    from videorecipes.lora_tools import lora_cli
    import videorecipes.lora_tools as L
    a = adapter
    argv = lambda out: ['merge', '--base', a['zoo'], '--lora', a['lora'], '--out', out, '--scale', 0.5, '--copy', '--overwrite']
    assert lora_cli(argv(tmp_path / 'new')) == 0
    old, new = digest(a['merged']), digest(tmp_path / 'new')
    assert old != new
    seen = set()
    def run(k):
        out = tmp_path / f'k{k}'; shutil.copytree(a['merged'], out)
        return lambda: lora_cli(argv(out)) == 0 or (_ for _ in ()).throw(SystemExit(1))
    for k in range(1, 200):
        r = run_in_child(run(k), k, (L, 'atomic_dir'))
        out = tmp_path / f'k{k}'
        d = digest(out)
        assert d in (old, new), f"kill {k}: the folder is a mixture"
        seen.add('old' if d == old else 'new')
        if r == 'ok': break
        from videorecipes.videoio import recover_dir
        recover_dir(out); assert digest(out) == d                  # and nothing left to recover
    assert seen == {'old', 'new'} and r == 'ok', (seen, r)
    print(f"killed at {k - 1} points")


def test_preprocessing_killed_anywhere(data, tmp_path):
    "Preprocessing killed at any operation and run again: every clip is in the shards exactly once, and the shards equal an uninterrupted run's."
    import pyarrow.parquet as pq
    import videorecipes.data.preprocess as P
    from videorecipes.data.preprocess import list_shards
    def cfg(out): return parse_args(['--model_path', data['zoo'], '--data_merge_path', data['root'] / 'merged', '--data_path', out, *SIZE,
                                     '--text_precision', 'fp32', '--preprocess_num_workers', 0, '--samples_per_file', 2])
    def ids(out): return sorted(i for f in list_shards(out) for i in pq.read_table(f, columns=['id']).column('id').to_pylist())
    assert run_in_child(lambda: P.preprocess_dataset(cfg(tmp_path / 'ref'), progress=False)) == 'ok'
    ref = ids(tmp_path / 'ref')
    for k in range(1, 200):
        out = tmp_path / f'k{k}'
        r = run_in_child(lambda: P.preprocess_dataset(cfg(out), progress=False), k, (P, 'write_shard'))
        if r == 'ok': break
        assert r == 'killed'
        assert run_in_child(lambda: P.preprocess_dataset(cfg(out), progress=False)) == 'ok'
        assert ids(out) == ref, k
        shutil.rmtree(out)
    assert k > 3
    print(f"killed at {k - 1} points")
