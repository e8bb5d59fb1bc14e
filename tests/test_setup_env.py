"""`launchers/setup_env.sh`, which every launcher and example script sources: scripts started side by side install once, and an
environment installed with an extra serves the scripts that ask for none (CI's suite installs `dev`, then the example twins start
four at a time; before the lock and the extra rule each of them ran pip over the others' feet)."""
import os, subprocess
from pathlib import Path
from helpers import ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for the venv's python: logs each pip call, slowly enough for the callers to overlap.
echo "start $$ $*" >> "$(dirname "$0")/../pip.log"; sleep 0.3; echo "end $$" >> "$(dirname "$0")/../pip.log"
"""

def _venv(tmp_path) -> Path:
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'bin' / 'python').write_text(FAKE_PYTHON); (venv / 'bin' / 'python').chmod(0o755)
    return venv

def _source(venv, extra='', n=1):
    env = dict(os.environ, VIDEORECIPES_VENV=str(venv), VIDEORECIPES_EXTRA=extra)
    cmd = ['bash', '-c', f'source {ROOT}/launchers/setup_env.sh && echo sourced']
    ps = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    return [(p.wait(60), *p.communicate()) for p in ps]

def _installs(venv): return [l for l in (venv / 'pip.log').read_text().splitlines() if l.startswith('start') and '-e ' in l]


def test_scripts_side_by_side_install_once(tmp_path):
    "Four scripts at once on a bare environment: one runs pip (its three calls never overlap another's), the others wait and use it."
    venv = _venv(tmp_path)
    res = _source(venv, n=4)
    assert all(rc == 0 and out.strip().endswith('sourced') for rc, out, _ in res), res
    assert len(_installs(venv)) == 1, (venv / 'pip.log').read_text()
    log = (venv / 'pip.log').read_text().splitlines()
    assert all(a.split()[0] == 'start' and b.split()[0] == 'end' and a.split()[1] == b.split()[1] for a, b in zip(log[::2], log[1::2])), log
    assert sum('[setup] installing' in out for _, out, _ in res) == 1


def test_an_extra_serves_the_core_but_not_another_extra(tmp_path):
    "Installed with dev: a plain script installs nothing; one that asks for metrics installs it."
    venv = _venv(tmp_path)
    _source(venv, 'dev')
    assert len(_installs(venv)) == 1 and '[dev]' in _installs(venv)[0]
    _source(venv)
    assert len(_installs(venv)) == 1
    _source(venv, 'metrics')
    assert len(_installs(venv)) == 2 and '[metrics]' in _installs(venv)[1]
