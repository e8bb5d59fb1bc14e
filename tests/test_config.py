"Checks of the exported `videorecipes.config` module that a notebook cannot make: a clean import, and `sys.argv`."
import subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from videorecipes.config import Config, ConfigError, parse_args  # noqa: E402


def _run(code):
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_import_is_light():
    "Parsing and validating must not pull in torch (or anything heavy): it runs before any model loads."
    r = _run("import sys, videorecipes.config as c; c.parse_args(['--num_frames', '5']);"
             "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules];"
             "print(heavy); sys.exit(bool(heavy))")
    assert r.returncode == 0, r.stdout + r.stderr


def test_reads_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['train.py', '--num_frames', '17', '--lora_training'])
    cfg = parse_args()
    assert cfg.training.num_frames == 17 and cfg.lora.lora_training is True


def test_help_exits_zero():
    r = _run("from videorecipes.config import parse_args; parse_args(['--help'])")
    assert r.returncode == 0 and '--num_frames INT' in r.stdout, r.stderr


def test_errors_are_catchable(tmp_path):
    with pytest.raises(ConfigError, match='--num_frames must be 4k\\+1'): parse_args(['--num_frames', '80'])
    with pytest.raises(ValueError): parse_args(['--num_gpus', '6', '--sp_size', '4'])  # ConfigError is a ValueError
    cfg = parse_args(['--num_frames', '17', '--lora_rank', '8'])
    assert Config.load(cfg.save(tmp_path / 'c.yaml')) == cfg
