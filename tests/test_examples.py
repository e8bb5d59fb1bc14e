"""The training examples (`launchers/examples/`, the `EXAMPLES` table of nbs/45_train.cli): the folders on disk are what the
table writes, every example's CPU twin runs its four scripts end to end, and a missing folder fails in one line.

The twins share their data by kind: examples of the same kind and tiny kind use one synthetic download and one
preprocessing (the second example's download and preprocessing scripts run too, and find the work done). The groups
run side by side, one thread each."""
import os, subprocess, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest
from helpers import ROOT, ENV, run_torchrun
from videorecipes.train.cli import EXAMPLES, EXAMPLE_TWIN, write_examples
from videorecipes.train.trainer import read_metrics

EX = ROOT / 'launchers' / 'examples'
RUNS = ('download', 'preprocess', 'finetune', 'lora')


def _folder(key): return EX / 'training' / 'finetune' / key

def _script(key, run):
    E = EXAMPLES[key]
    return _folder(key) / f"{'download_dataset' if run == 'download' else E[run]['name']}.sh"


def test_folders_are_the_tables(tmp_path):
    "Every file under launchers/examples is the table's (the I2V validation clips aside, which download_dataset.sh copies there)."
    made = {p.relative_to(tmp_path): p.read_text() for p in write_examples(tmp_path)}
    disk = {p.relative_to(EX) for p in EX.rglob('*') if p.is_file() and 'validation_dataset' not in p.relative_to(EX).parts}
    hint = "run `python -c \"from videorecipes.train.cli import write_launchers; write_launchers('launchers')\"` (and edit the table, not the files)"
    assert disk == set(made), f"launchers/examples differs from EXAMPLES: extra {sorted(map(str, disk - set(made)))}, missing {sorted(map(str, set(made) - disk))}: {hint}"
    for rel, text in made.items():
        assert (EX / rel).read_text() == text, f"launchers/examples/{rel} is stale: {hint}"
        if rel.suffix == '.sh': assert os.access(EX / rel, os.X_OK), f"launchers/examples/{rel} is not executable"


def _twin_group(root, keys) -> dict:
    "Run the twins of `keys` (one kind, one tiny kind) one after the other on shared data; {(key, run): (process, seconds)}."
    name = '-'.join(EXAMPLES[keys[0]][k] for k in ('kind', 'tiny'))
    env = dict(ENV, TWIN='cpu', WORKDIR=str(root / 'work'), RAW=str(root / f'raw-{name}'), DATA=str(root / f'data-{name}'))
    res = {}
    for key in keys:
        for run in RUNS:
            t0 = time.time()
            p = run_torchrun(['bash', str(_script(key, run))], 600, env=dict(env, OUT=str(root / 'runs' / key / run)), cwd=ROOT)
            res[key, run] = (p, time.time() - t0)
            if p.returncode: return res
    return res


@pytest.fixture(scope='module')
def twins(tmp_path_factory):
    "Every example's twin, the groups of shared data side by side: {(key, run): (process, seconds)} and the run folders."
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('twins')
    groups = {}
    for key, E in EXAMPLES.items(): groups.setdefault((E['kind'], E['tiny']), []).append(key)
    for _, tiny in groups: tiny_zoo(tiny)   # built here once, not by two groups at the same time
    t0 = time.time()
    with ThreadPoolExecutor(len(groups)) as pool: res = {k: v for r in pool.map(lambda ks: _twin_group(root, ks), groups.values()) for k, v in r.items()}
    print(f"\nCPU twins: {time.time() - t0:.0f}s wall; " + ', '.join(f"{k} {r} {s:.1f}s" for (k, r), (_, s) in res.items()))
    return res, root / 'runs'


@pytest.mark.parametrize('key', list(EXAMPLES))
def test_cpu_twin(twins, key):
    "download (synthetic), preprocess, full finetune and LoRA: a pipeline folder, an adapter, the validation prompts sampled at the last step."
    res, runs = twins
    for run in RUNS:
        assert (key, run) in res, f"{key}: {run} did not run (an earlier script of its group failed)"
        p, _ = res[key, run]
        assert p.returncode == 0, f"TWIN=cpu bash {_script(key, run).relative_to(ROOT)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    assert (runs / key / 'finetune' / 'final' / 'model_index.json').exists()
    assert (runs / key / 'lora' / 'final' / 'pytorch_lora_weights.safetensors').exists()
    steps = EXAMPLE_TWIN['max_train_steps']
    for run in ('finetune', 'lora'):
        videos = list((runs / key / run / 'validation' / f'step-{steps:06d}').glob('*.mp4'))
        assert len(videos) == len(EXAMPLES[key]['validation']['prompts']), (run, videos)   # validation.json's prompts, one video each
        assert max(m['step'] for m in read_metrics(runs / key / run)) == steps


@pytest.mark.parametrize('run,var', [('preprocess', 'RAW'), ('finetune', 'DATA'), ('lora', 'DATA')])
def test_missing_folder_fails_in_one_line(tmp_path, run, var):
    "A script given a folder that is not there exits with 2 and one line naming it (before any torchrun)."
    key, missing = 'wan_i2v_14B_480p/crush_smol', tmp_path / 'nowhere'
    p = subprocess.run(['bash', str(_script(key, run))], env=dict(ENV, WORKDIR=str(tmp_path), **{var: str(missing)}),
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{_script(key, run).name}: error: {missing}: no such file or folder"), lines


def test_bad_twin_and_preprocessed_data(tmp_path):
    "TWIN must be cpu or unset; Wan-Syn comes as latents, so its preprocessing has nothing to do without RAW."
    p = subprocess.run(['bash', str(_script('wan_t2v_1.3B/crush_smol', 'finetune'))], env=dict(ENV, TWIN='gpu'), capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip() == "finetune_t2v.sh: error: TWIN=gpu: set TWIN=cpu for the CPU twin, or leave TWIN unset"
    env = {k: v for k, v in ENV.items() if k not in ('RAW', 'TWIN')}
    p = subprocess.run(['bash', str(_script('Wan2.1-VSA/Wan-Syn-Data', 'preprocess'))], env=dict(env, WORKDIR=str(tmp_path)), capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0 and 'nothing to do' in p.stdout, p.stderr
