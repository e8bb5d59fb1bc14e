"""Foundation checks that need processes or files beyond a notebook: the shipped tiny VAE, the scripts and CLIs."""
import json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(cmd, **kw):
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_shipped_tiny_vae_is_small_and_trained():
    from videorecipes.zoo import tiny_vae_dir
    d = tiny_vae_dir()
    size = sum(f.stat().st_size for f in d.iterdir())
    assert size < 5e6, f"tiny VAE assets are {size/1e6:.2f} MB (must stay < 5 MB)"
    report = json.loads((d / 'training_report.json').read_text())
    assert report['heldout_psnr_db'] >= 25, report
    cfg = json.loads((d / 'config.json').read_text())
    assert cfg['_class_name'] == 'AutoencoderKLWan' and cfg['z_dim'] == 16
    assert any(abs(v) > 1e-3 for v in cfg['latents_mean']), "latent statistics were measured, not left at defaults"


def test_train_tiny_vae_script_runs(tmp_path):
    "The script that made the shipped VAE still runs end to end (a few steps on a few clips)."
    out = tmp_path / 'vae'
    run([sys.executable, 'data_scripts/train_tiny_vae.py', '--steps', '3', '--num_train', '4', '--num_heldout', '4',
         '--work', str(tmp_path / 'data'), '--out', str(out), '--log_every', '1', '--threads', '1'])
    from diffusers import AutoencoderKLWan
    vae = AutoencoderKLWan.from_pretrained(out)
    assert vae.config.is_residual and len(vae.config.latents_std) == 16
    assert json.loads((out / 'training_report.json').read_text())['steps'] == 3


def test_synthetic_script_and_generate_cli(tmp_path):
    "data_scripts/make_synthetic_videos.py and the videorecipes-generate entry point, as a user runs them."
    from videorecipes.videoio import read_video
    run([sys.executable, 'data_scripts/make_synthetic_videos.py', '--out', str(tmp_path / 'syn'), '--num_videos', '2'])
    ents = json.loads((tmp_path / 'syn' / 'videos2caption.json').read_text())
    assert len(ents) == 2 and ents[0]['num_frames'] == 17
    first = tmp_path / 'syn' / 'videos' / ents[0]['path']
    r = run([str(BIN / 'videorecipes-generate'), '--tiny', 'i2v', '--zoo_dir', str(tmp_path / 'zoo'),
             '--prompt', ents[0]['cap'][0], '--image', str(first), '--num_inference_steps', '2',
             '--output_dir', str(tmp_path / 'out')])
    mp4s = sorted((tmp_path / 'out').glob('*.mp4'))
    assert len(mp4s) == 1, r.stdout
    frames, fps = read_video(mp4s[0])
    assert frames.shape == (17, 64, 64, 3) and fps == 8
    assert json.loads((tmp_path / 'out' / 'index.json').read_text())[0]['prompt'] == ents[0]['cap'][0]


def test_generate_cli_rejects_bad_sizes(tmp_path):
    r = subprocess.run([str(BIN / 'videorecipes-generate'), '--tiny', 't2v', '--prompt', 'x', '--num_frames', '16'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and '--num_frames must be 4k+1' in r.stderr


def test_zoo_cli_prints_real_models(tmp_path):
    r = run([str(BIN / 'videorecipes-zoo'), '--out', str(tmp_path / 'zoo'), '--kinds', 't2v'])
    assert 'Wan2.1-T2V-14B' in r.stdout and 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers' in r.stdout
    assert (tmp_path / 'zoo' / 'tiny-wan2.1-t2v-v1' / 'model_index.json').exists()
