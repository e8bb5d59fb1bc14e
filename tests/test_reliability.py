"""What a hostile or careless user does to the package, case by case (issue 12): each bad input is one `error:` line
naming the file or flag, with exit 2 where the user can fix it; nothing read from disk runs code; a second run does not
destroy the first. (Kills at many points of every writer are in tests/test_faults.py.)"""
import errno, json, os, shutil, stat
from pathlib import Path
import pytest
import torch
from videorecipes.config import parse_args
from videorecipes.data.preprocess import preprocess_dataset, data_cli
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.train.cli import train_cli

SIZE = ['--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('reliability')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=4, num_frames=9, height=32, width=32, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data', *SIZE,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')


def flags(d, out, *extra, data=None):
    return [str(x) for x in ['--model_path', d['zoo'], '--data_path', data or d['data'], *SIZE, '--train_batch_size', 2,
                             '--dataloader_num_workers', 0, '--mixed_precision', 'no', '--max_train_steps', 4, '--checkpointing_steps', 2,
                             '--report_to', 'none', '--output_dir', out, *extra]]


def cli(capsys, argv):
    "(exit code, stderr) of videorecipes-train."
    code = train_cli(argv)
    return code, capsys.readouterr().err


class Evil:
    "A pickle whose loading would create a file."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize('name', ['training_state.pt', 'rng-0.pt'])
def test_a_checkpoint_pickle_with_code_is_refused(data, tmp_path, capsys, name):
    "1. A checkpoint file replaced by a pickle that runs code: resuming refuses it, naming the file, and the code never runs."
    out = tmp_path / 'run'
    assert train_cli(flags(data, out)) == 0
    torch.save(dict(step=2, x=Evil(tmp_path / 'pwned')), out / 'checkpoint-4' / name)
    code, err = cli(capsys, flags(data, out, '--resume_from_checkpoint', 'latest', '--max_train_steps', 6))
    assert code == 2 and f'checkpoint-4/{name}: refused to read' in err, err
    assert not (tmp_path / 'pwned').exists()


def test_a_second_run_does_not_destroy_the_first(data, tmp_path, capsys):
    "4. A new run into a finished run's --output_dir is refused, naming both ways on; --overwrite True starts over."
    out = tmp_path / 'run'
    assert train_cli(flags(data, out)) == 0
    before = (out / 'metrics.jsonl').read_text(), sorted(p.name for p in out.iterdir())
    code, err = cli(capsys, flags(data, out, '--max_train_steps', 2))
    assert code == 2 and '--resume_from_checkpoint latest' in err and '--overwrite True' in err, err
    assert ((out / 'metrics.jsonl').read_text(), sorted(p.name for p in out.iterdir())) == before      # untouched
    assert train_cli(flags(data, out, '--max_train_steps', 2, '--overwrite', 'True')) == 0
    assert len((out / 'metrics.jsonl').read_text().splitlines()) == 2 and [p.name for p in sorted(out.glob('checkpoint-*'))] == ['checkpoint-2']


def test_captions_that_are_not_utf8(data, tmp_path):
    "5. A lone surrogate and bytes that are not UTF-8: one report line for each of those entries; the other clips are written."
    import pyarrow.parquet as pq
    from videorecipes.data.preprocess import list_shards
    src = tmp_path / 'merged'; shutil.copytree(data['root'] / 'merged', src)
    text = (src / 'videos2caption.json').read_text()
    items = json.loads(text); items[1]['cap'] = ['\ud800 a lone surrogate']; items[2]['cap'] = ['PLACEHOLDER']
    raw = json.dumps(items).encode().replace(b'PLACEHOLDER', b'bad \xff\xfe bytes')
    (src / 'videos2caption.json').write_bytes(raw)
    out = tmp_path / 'data'
    assert data_cli(['preprocess', '--model_path', data['zoo'], '--data_merge_path', src, '--data_path', out, *map(str, SIZE),
                     '--text_precision', 'fp32', '--preprocess_num_workers', '0', '--samples_per_file', '2']) == 0
    rows = [i for f in list_shards(out) for i in pq.read_table(f, columns=['id']).column('id').to_pylist()]
    assert len(rows) == 2
    report = [json.loads(l) for f in out.glob('report-rank*.jsonl') for l in f.read_text().splitlines()]
    assert sorted(r['reason'] for r in report) == ['bad_caption', 'bad_caption'] and sorted(r['entry'] for r in report) == [1, 2]


def test_a_torn_metrics_line(data, tmp_path):
    "6. A crash mid-write leaves half a line at the end of metrics.jsonl: resuming repairs it."
    out = tmp_path / 'run'
    assert train_cli(flags(data, out, '--max_train_steps', 2)) == 0
    with open(out / 'metrics.jsonl', 'a') as f: f.write('{"step": 3, "lo')
    assert train_cli(flags(data, out, '--resume_from_checkpoint', 'latest')) == 0
    assert [json.loads(l)['step'] for l in (out / 'metrics.jsonl').read_text().splitlines()] == [1, 2, 3, 4]


def test_mistakes_are_one_line_naming_the_file_or_flag(data, tmp_path, capsys, monkeypatch):
    "7. Each of these was a traceback: now one `error:` line naming the file or flag, exit 2."
    d, out = data, tmp_path / 'x'
    # a truncated shard
    bad = tmp_path / 'bad'; shutil.copytree(d['data'], bad)
    shard = sorted(bad.glob('*.parquet'))[0]; shard.write_bytes(shard.read_bytes()[:100])
    code, err = cli(capsys, flags(d, out, data=bad))
    assert code == 2 and f'{shard.name}: not a readable Parquet shard' in err, err
    # no --data_path; a batch larger than the dataset; a bad --model_path
    code, err = cli(capsys, ['--model_path', d['zoo'], '--output_dir', str(out)])
    assert code == 2 and '--data_path is not set' in err, err
    code, err = cli(capsys, flags(d, out, '--train_batch_size', 9))
    assert code == 2 and '--train_batch_size 9' in err and 'holds 4' in err, err
    code, err = cli(capsys, flags(d, out, '--model_path', tmp_path / 'no_model'))
    assert code == 2 and 'no_model' in err, err
    # a checkpoint of another method, and of another model size (a LoRA of another rank)
    run = tmp_path / 'lora4'
    assert train_cli(flags(d, run, '--lora_training', 'True', '--lora_rank', 4)) == 0
    code, err = cli(capsys, flags(d, tmp_path / 'y', '--resume_from_checkpoint', run / 'checkpoint-4', '--max_train_steps', 6))
    assert code == 2 and "a 'lora' checkpoint cannot resume a 'full' run" in err, err
    code, err = cli(capsys, flags(d, tmp_path / 'z', '--lora_training', 'True', '--lora_rank', 8, '--resume_from_checkpoint', run / 'checkpoint-4',
                                  '--max_train_steps', 6))
    assert code == 2 and 'checkpoint-4/dcp' in err and 'lora_A' in err and 'there but' in err, err
    # a full disk
    real = torch.save
    def full(obj, f, *a, **kw):
        if str(f).endswith('.pt'): raise OSError(errno.ENOSPC, 'No space left on device', str(f))
        return real(obj, f, *a, **kw)
    monkeypatch.setattr(torch, 'save', full)
    code, err = cli(capsys, flags(d, tmp_path / 'full'))
    assert code == 2 and 'no space left on device' in err, err
    assert not list((tmp_path / 'full').glob('checkpoint-*'))


def test_a_data_folder_without_dataset_info_trains(data, tmp_path):
    "7. A data folder without dataset_info.json (FastVideo's, say) trains with the --model_path VAE's latent statistics."
    bare = tmp_path / 'bare'; shutil.copytree(data['data'], bare); (bare / 'dataset_info.json').unlink()
    assert train_cli(flags(data, tmp_path / 'run', '--max_train_steps', 2, data=bare)) == 0


def test_links_duplicates_and_permissions(data, tmp_path):
    "8. A link inside the folder that points outside it escapes like '../'; a repeated entry is one report line; written files follow the umask."
    src = tmp_path / 'merged'; shutil.copytree(data['root'] / 'merged', src)
    outside = tmp_path / 'outside.mp4'; first = sorted((src / 'videos').iterdir())[0]; shutil.copy(first, outside)
    (src / 'videos' / 'link.mp4').symlink_to(outside)
    items = json.loads((src / 'videos2caption.json').read_text())
    items += [dict(items[0]), dict(path='link.mp4', cap=['a red circle moving right on a blue background'])]
    (src / 'videos2caption.json').write_text(json.dumps(items))
    out = tmp_path / 'data'
    assert data_cli(['preprocess', '--model_path', data['zoo'], '--data_merge_path', src, '--data_path', out, *map(str, SIZE),
                     '--text_precision', 'fp32', '--preprocess_num_workers', '0']) == 0
    report = [json.loads(l) for f in out.glob('report-rank*.jsonl') for l in f.read_text().splitlines()]
    assert sorted(r['reason'] for r in report) == ['duplicate', 'path_escapes'], report
    mask = os.umask(0); os.umask(mask)
    for f in [*out.glob('*.parquet'), out / 'report.json']: assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f
    run = tmp_path / 'run'
    assert train_cli(flags(data, run, '--max_train_steps', 2)) == 0
    assert stat.S_IMODE((run / 'final').stat().st_mode) == 0o777 & ~mask
