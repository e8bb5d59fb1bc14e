"Trainer mechanics that need processes or more steps than a notebook cell: SIGKILL + exact resume, torchrun, I2V, precision, validation."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest
import torch
from videorecipes.config import parse_args, ConfigError
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.train.trainer import train, read_metrics, list_checkpoints, NonFiniteLossError
from videorecipes.train.cli import train_cli

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')


def _data(root, kind):
    from videorecipes.zoo import tiny_zoo
    zoo = tiny_zoo(kind)
    make_synthetic_dataset(root / 'merged', num_videos=6, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--model_type', kind, '--data_merge_path', root / 'merged',
                                   '--data_path', root / 'data', '--num_frames', 9, '--num_height', 32, '--num_width', 32,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return zoo, root / 'data'


@pytest.fixture(scope='module')
def t2v(tmp_path_factory):
    root = tmp_path_factory.mktemp('train_t2v')
    zoo, data = _data(root, 't2v')
    return dict(root=root, zoo=zoo, data=data)


def flags(d, out, *extra):
    return [str(x) for x in ['--model_path', d['zoo'], '--data_path', d['data'], '--num_frames', 9, '--num_height', 32,
                             '--num_width', 32, '--train_batch_size', 2, '--dataloader_num_workers', 0, '--cfg_rate', 0.2,
                             '--mixed_precision', 'no', '--learning_rate', 1e-3, '--max_train_steps', 10,
                             '--checkpointing_steps', 3, '--checkpoints_total_limit', 2, '--report_to', 'none',
                             '--output_dir', out, *extra]]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from videorecipes.config import parse_args
    from videorecipes.train.trainer import train
    kill_at = int(sys.argv[1])
    def on_step(step, loss):
        if step == kill_at: os.kill(os.getpid(), signal.SIGKILL)
    train(parse_args(sys.argv[2:]), progress=False, on_step=on_step)
""")


def _losses(out): return {m['step']: m['loss'] for m in read_metrics(out)}


@pytest.mark.parametrize('extra', [[], ['--lora_training', 'True', '--lora_rank', '4', '--learning_rate', '1e-2']], ids=['full', 'lora'])
def test_sigkill_and_resume_is_exact(t2v, tmp_path, extra):
    "A run SIGKILLed after step 7 (checkpoint at 6) and resumed reproduces the uninterrupted run's losses bit for bit."
    ref = flags(t2v, tmp_path / 'ref', '--gradient_accumulation_steps', 2, '--lr_scheduler', 'cosine', '--lr_warmup_steps', 2, *extra)
    subprocess.run([sys.executable, '-m', 'videorecipes.train.cli', *ref], check=True, env=ENV, capture_output=True)
    run = flags(t2v, tmp_path / 'run', '--gradient_accumulation_steps', 2, '--lr_scheduler', 'cosine', '--lr_warmup_steps', 2, *extra)
    p = subprocess.run([sys.executable, '-c', KILLER, '7', *run], env=ENV, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    assert [c.name for c in list_checkpoints(tmp_path / 'run')] == ['checkpoint-3', 'checkpoint-6']
    assert max(_losses(tmp_path / 'run')) == 7 and not (tmp_path / 'run' / 'final').exists()
    subprocess.run([sys.executable, '-m', 'videorecipes.train.cli', *run, '--resume_from_checkpoint', 'latest'],
                   check=True, env=ENV, capture_output=True)
    a, b = _losses(tmp_path / 'ref'), _losses(tmp_path / 'run')
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert a == b   # exact float equality, step by step
    assert (tmp_path / 'run' / 'final').exists()


def test_loss_decreases_on_a_fixed_batch(t2v, tmp_path):
    "Same batch and noise every step (one sample, one seed per step is the same): the loss must fall."
    from videorecipes.train.full import FullFinetune
    from videorecipes.train.flow import flow_matching_loss, step_generator
    cfg = parse_args(flags(t2v, tmp_path / 'fixed', '--learning_rate', 3e-3, '--max_train_steps', 40, '--checkpointing_steps', 100))
    class Fixed(FullFinetune):
        def loss(self, batch, step, micro=0):
            if not hasattr(self, 'b'): self.b = batch
            return flow_matching_loss(self.dit, self.b, step_generator(0, 0))[0], {}
    r = train(cfg, Fixed(cfg), progress=False)
    l = [r.losses[s] for s in sorted(r.losses)]
    assert l[-1] < 0.5 * l[0], (l[0], l[-1])


def test_i2v_bf16_checkpointing_and_validation(tmp_path):
    "I2V data through the 36-channel DiT, bf16 autocast, gradient checkpointing, validation videos, TensorBoard."
    from videorecipes.videoio import probe_video
    zoo, data = _data(tmp_path, 'i2v')
    merged = json.loads((tmp_path / 'merged' / 'videos2caption.json').read_text())
    val = tmp_path / 'val.json'
    val.write_text(json.dumps([dict(caption=e['cap'][0], image_path=f"merged/videos/{e['path']}") for e in merged[:2]]))
    d = dict(zoo=zoo, data=data)
    cfg = parse_args(flags(d, tmp_path / 'run', '--model_type', 'i2v', '--mixed_precision', 'bf16', '--max_train_steps', 4,
                           '--enable_gradient_checkpointing_type', 'full', '--log_validation', 'True',
                           '--validation_dataset_file', val, '--validation_steps', 2, '--validation_sampling_steps', 2,
                           '--report_to', 'tensorboard'))
    r = train(cfg, progress=False)
    assert r.method.dit.is_gradient_checkpointing
    vids = sorted((tmp_path / 'run' / 'validation').glob('step-*/*.mp4'))
    assert len(vids) == 4 and {v.parent.name for v in vids} == {'step-000002', 'step-000004'}
    assert probe_video(vids[0])['num_frames'] == 9
    assert list((tmp_path / 'run' / 'logs').glob('events.out.tfevents*'))
    assert all(np.isfinite(m['loss']) for m in read_metrics(tmp_path / 'run'))
    # the final I2V pipeline folder loads in diffusers' I2V class
    from diffusers import WanImageToVideoPipeline
    pipe = WanImageToVideoPipeline.from_pretrained(r.final)
    assert pipe.transformer.config.in_channels == 36
    # and an I2V LoRA (targets incl. the image cross-attention projections) loads with load_lora_weights
    cfg = parse_args(flags(d, tmp_path / 'lora', '--model_type', 'i2v', '--max_train_steps', 2, '--lora_training', 'True',
                           '--lora_target_modules', 'to_q,to_k,to_v,to_out.0,add_k_proj,add_v_proj'))
    r = train(cfg, progress=False)
    pipe = WanImageToVideoPipeline.from_pretrained(zoo)
    pipe.load_lora_weights(str(r.final))
    assert any('add_k_proj.lora_A' in n for n, _ in pipe.transformer.named_parameters())


def test_config_errors(t2v, tmp_path, capsys):
    "Bad flags and mismatched data fail with exit 2 and a message naming the flag or file, before training starts."
    def code(*extra): return train_cli(flags(t2v, tmp_path / 'x', *extra))
    assert code('--lora_rank', 0) == 2 and '--lora_rank' in capsys.readouterr().err
    assert code('--model_type', 'i2v') == 2 and 'holds t2v data' in capsys.readouterr().err
    assert code('--log_validation', 'True', '--validation_dataset_file', tmp_path / 'no.json') == 2 and 'no.json' in capsys.readouterr().err
    assert code('--resume_from_checkpoint', tmp_path / 'nothing') == 2 and '--resume_from_checkpoint' in capsys.readouterr().err
    # flags that disagree with the data's shape (the data is 9x32x32): exit 2, naming the flags and the data's values
    assert code('--num_frames', 17, '--num_height', 64, '--num_width', 64) == 2
    err = capsys.readouterr().err
    assert '--num_frames 17 --num_height 64 --num_width 64 expect latents of 5x8x8' in err and 'holds 3x4x4' in err, err
    # an optimizer flag the optimizer does not take is an error, not dropped
    assert code('--optimizer', 'torch.optim.SGD', '--adam_beta2', '0.99') == 2 and "takes no 'betas'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match='--enable_gradient_checkpointing_type'):
        parse_args(['--enable_gradient_checkpointing_type', 'everything'])


def test_torchrun_single_process(t2v, tmp_path):
    "Launched by torchrun with one process, the trainer joins a process group and trains."
    torchrun = Path(sys.executable).parent / 'torchrun'
    p = subprocess.run([str(torchrun), '--standalone', '--nproc_per_node', '1', '-m', 'videorecipes.train.cli',
                        *flags(t2v, tmp_path / 'tr', '--max_train_steps', 2)], env=ENV, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert 'trained 2 steps' in p.stdout and (tmp_path / 'tr' / 'final' / 'model_index.json').exists()


def test_fp16_and_an_extra_network(t2v, tmp_path):
    "fp16 autocast with a GradScaler trains; a second network (a DMD2-style critic) with its own optimizer steps every 2 steps and is checkpointed."
    from videorecipes.train.full import FullFinetune
    from videorecipes.train.method import Network, OptimizerSpec
    class WithCritic(FullFinetune):
        def setup(self, device):
            super().setup(device)
            self.critic = torch.nn.Linear(16, 1)
            self.calls = []
        def networks(self): return [*super().networks(), Network('critic', self.critic, dit=False)]
        def optimizers(self): return [OptimizerSpec('main', 'student'), OptimizerSpec('critic', 'critic', every=2, learning_rate=0.1)]
        def loss(self, batch, step, micro=0, opt='main'):
            if opt == 'main': return super().loss(batch, step, micro)
            self.calls.append(step)
            return self.critic(batch['latents'].mean((2, 3, 4))).pow(2).mean(), {}
    cfg = parse_args(flags(t2v, tmp_path / 'fp16', '--mixed_precision', 'fp16', '--max_train_steps', 4))
    m = WithCritic(cfg)
    r = train(cfg, m, progress=False)
    assert m.calls == [2, 4] and all(np.isfinite(v) for v in r.losses.values())
    ck = tmp_path / 'fp16' / 'checkpoint-3'
    st = torch.load(ck / 'training_state.pt', weights_only=True)
    assert set(st['scalers']) == {'main', 'critic'} and set(st['schedulers']) == {'main', 'critic'}
    from torch.distributed.checkpoint import FileSystemReader
    keys = FileSystemReader(str(ck / 'dcp')).read_metadata().state_dict_metadata
    assert any(k.startswith('critic.model') for k in keys) and any(k.startswith('critic.optim') for k in keys)
    assert 'critic_loss' in read_metrics(tmp_path / 'fp16')[1] and 'critic_loss' not in read_metrics(tmp_path / 'fp16')[0]
    # resuming from step 3 restores the critic, its optimizer and the scaler: step 4 ends where the first run ended
    m2 = WithCritic(parse_args(flags(t2v, tmp_path / 'fp16', '--mixed_precision', 'fp16', '--max_train_steps', 4,
                                     '--resume_from_checkpoint', ck)))
    train(m2.cfg, m2, progress=False)
    assert m2.calls == [4] and torch.equal(m2.critic.weight, m.critic.weight)
    assert all(torch.equal(a, b) for a, b in zip(m2.dit.parameters(), m.dit.parameters()))
