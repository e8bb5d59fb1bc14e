"""DMD2 (nbs/63_recipes.dmd2.ipynb): the 2-D toy distilled below the teacher's own 4-step samples; the two CFG spellings
agreeing; the Wan method through the real loop: exact resume of both optimizers and the EMA, 2 gloo processes (FSDP)
against one process, the collapse criterion stopping a broken run with its last good checkpoint, and the exported
student sampling with its own steps."""
import json
from pathlib import Path
import pytest
import torch
from videorecipes.config import parse_args
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.synthetic import make_synthetic_dataset
from videorecipes.train.trainer import train, read_metrics
from videorecipes.train.checkpoint import list_checkpoints
from videorecipes.recipes import dmd2

from helpers import torchrun_train, stop_and_resume
SIZE = ['--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]


def test_toy_student_beats_the_teachers_own_four_steps():
    "A 4-step DMD2 student of the 8-Gaussian teacher: SWD below 0.10, below the teacher's 4 Euler steps and its undistilled 4-step sampling, and most samples on the modes."
    torch.manual_seed(0)
    teacher = dmd2.train_flow()
    base = dmd2.toy_evaluate(teacher)
    out = dmd2.toy_dmd(teacher)
    final = out['log'][-1]
    print(base, [(l['swd'], l['near']) for l in out['log']])
    assert base['teacher_euler_50'][0] < 0.05 and base['teacher_euler_4'][1] < 0.2
    assert final['swd'] < 0.10 and final['swd'] < base['teacher_euler_4'][0] and final['swd'] < base['student_at_init'][0]
    assert final['near'] > 0.8 and final['near'] > base['student_at_init'][1] + 0.15


def test_cfg_forms_give_the_same_real_score():
    "dmd2 at w and standard at w + 1 give the same teacher x0, through `dmd_scores`."
    g = torch.Generator().manual_seed(0)
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    teacher = lambda x, s: (a(x), b(x))
    critic = lambda x, s: torch.zeros_like(x)
    x0, s, e = torch.randn(16, 2, generator=g), torch.rand(16, generator=g), torch.randn(16, 2, generator=g)
    r1, _ = dmd2.dmd_scores(teacher, critic, x0, s, e, 3.5, 'dmd2')
    r2, _ = dmd2.dmd_scores(teacher, critic, x0, s, e, 4.5, 'standard')
    r3, _ = dmd2.dmd_scores(teacher, critic, x0, s, e, 3.5, 'standard')
    assert torch.allclose(r1, r2, atol=1e-6) and not torch.allclose(r1, r3, atol=1e-3)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from videorecipes.zoo import tiny_zoo
    root = tmp_path_factory.mktemp('dmd')
    zoo = tiny_zoo('t2v')
    make_synthetic_dataset(root / 'merged', num_videos=4, num_frames=9, height=32, width=32, progress=False)
    preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', root / 'merged', '--data_path', root / 'data', *SIZE,
                                   '--text_precision', 'fp32', '--preprocess_num_workers', 0]), progress=False)
    return dict(root=root, zoo=zoo, data=root / 'data')


def flags(d, out, *extra):
    return [str(x) for x in ['--method', 'dmd2', '--model_path', d['zoo'], '--data_path', d['data'], *SIZE, '--train_batch_size', 2,
                             '--dataloader_num_workers', 0, '--cfg_rate', 0, '--mixed_precision', 'no', '--learning_rate', 1e-4,
                             '--fake_score_learning_rate', 4e-4, '--adam_beta1', 0, '--generator_update_interval', 2, '--ema_decay', 0.9,
                             '--max_train_steps', 4, '--checkpointing_steps', 1, '--report_to', 'none', '--output_dir', out, *extra]]


def metrics(out): return {r['step']: {k: v for k, v in r.items() if k != 's_per_step'} for r in read_metrics(out)}


def test_exact_resume_of_student_critic_and_ema(data, tmp_path):
    "Stopped after step 3 and resumed from checkpoint-2 (mid-way between student steps): every logged value and the exported student equal the uninterrupted run's."
    ref = train(parse_args(flags(data, tmp_path / 'ref')), progress=False)
    run = stop_and_resume(lambda out, *x: flags(data, out, *x), tmp_path / 'run', 3, tmp_path / 'run' / 'checkpoint-2')
    assert metrics(tmp_path / 'ref') == metrics(tmp_path / 'run')
    assert [('loss' in r, 'critic_loss' in r) for r in metrics(tmp_path / 'ref').values()] == [(False, True), (True, True)] * 2
    from safetensors.torch import load_file
    a, b = (load_file(str(p / 'final' / 'transformer' / 'diffusion_pytorch_model.safetensors')) for p in (tmp_path / 'ref', tmp_path / 'run'))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('lora', [False, True])
def test_two_gloo_processes_match_one(data, tmp_path, lora):
    "FSDP over 2 processes (batch 1 each) against one process (batch 2): the same DMD and critic losses and the same student (full, or LoRA adapters on one shared base)."
    x = ['--dmd_lora', True, '--lora_rank', 4, '--lora_alpha', 4, '--learning_rate', 1e-3] if lora else []
    train(parse_args(flags(data, tmp_path / 'one', '--checkpointing_steps', 4, *x)), progress=False)
    torchrun_train(flags(data, tmp_path / 'two', '--checkpointing_steps', 4, '--train_batch_size', 1, '--num_gpus', 2, *x))
    m1, m2 = metrics(tmp_path / 'one'), metrics(tmp_path / 'two')
    for s in m1:
        for k in ('loss', 'critic_loss', 'dmd_normaliser'):
            if k in m1[s]: assert m1[s][k] == pytest.approx(m2[s][k], rel=1e-4), (s, k)
    from safetensors.torch import load_file
    f = 'pytorch_lora_weights.safetensors' if lora else 'transformer/diffusion_pytorch_model.safetensors'
    a, b = (load_file(str(p / 'final' / f)) for p in (tmp_path / 'one', tmp_path / 'two'))
    assert a.keys() == b.keys()
    # Adam with beta1 = 0 steps each weight by about lr * sign(g): where g is nearly 0, the reduction order can flip a
    # step, so the bound is one step (lr) at worst, and the mean difference must be tiny next to how far the weights moved
    init = {} if lora else load_file(str(Path(data['zoo']) / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    moved = torch.cat([(a[k] - init.get(k, torch.zeros_like(a[k]))).abs().flatten() for k in a])
    assert diff.max() <= 1.1 * 1e-3 if lora else diff.max() <= 1.1e-4, diff.max()
    assert diff.mean() < 0.01 * moved.mean(), (diff.mean(), moved.mean())


def test_collapse_stops_the_run_keeping_the_last_good_checkpoint(data, tmp_path, capsys):
    "A student lr 30x too high blows its samples up; --dmd_stop_on_collapse stops the run after the patience (exit 3), and no checkpoint is written at an unhealthy step."
    from videorecipes.train.cli import train_cli
    lo, hi = 0.5, 1.5
    bad = flags(data, tmp_path / 'bad', '--learning_rate', 3e-3, '--max_train_steps', 30, '--generator_update_interval', 1,
                '--dmd_stop_on_collapse', True, '--dmd_collapse_patience', 2, '--dmd_collapse_std', f'{lo},{hi}',
                '--dmd_collapse_temporal', '0.001,1000', '--dmd_collapse_critic', 1000, '--checkpoints_total_limit', 100)
    assert train_cli(bad) == 3
    err = capsys.readouterr().err
    m = metrics(tmp_path / 'bad')
    sick = [s for s, r in m.items() if not lo <= r['student_std_ratio'] <= hi]
    stopped = max(m)
    assert 'Last good checkpoint' in err and stopped < 30 and sick[-2:] == [stopped - 1, stopped], err[-500:]       # two unhealthy logged steps in a row, then the stop
    kept = [int(p.name.split('-')[1]) for p in list_checkpoints(tmp_path / 'bad')]
    assert kept and not set(kept) & set(sick)                        # nothing saved while the samples looked wrong
    assert f'stopping. Last good checkpoint: {tmp_path / "bad" / f"checkpoint-{max(kept)}"}' in err, err


def test_the_student_samples_with_its_steps(data, tmp_path):
    "final/ loads in diffusers with the few-step scheduler; videorecipes-generate uses its dmd_schedule.json with guidance 1."
    from diffusers import WanPipeline
    from videorecipes.sampling import generate_cli
    res = train(parse_args(flags(data, tmp_path / 'run', '--dmd_denoising_steps', '1000,750,500,250', '--flow_shift', 3)), progress=False)
    sched = json.loads((res.final / 'dmd_schedule.json').read_text())
    assert sched['sigmas'] == pytest.approx([1.0, 0.9, 0.75, 0.5], abs=1e-6) and sched['guidance_scale'] == 1.0
    pipe = WanPipeline.from_pretrained(res.final)
    assert type(pipe.scheduler).__name__ == 'FlowMatchEulerDiscreteScheduler'
    paths = generate_cli(['--model_path', res.final, '--prompt', 'a red circle', '--num_frames', 9, '--height', 32, '--width', 32,
                          '--text_max_length', 32, '--output_dir', tmp_path / 'gen'])
    assert len(paths) == 1 and paths[0].stat().st_size > 0


def test_sparse_student_dense_teacher_and_critic(data, tmp_path):
    "--attention_backend vsa puts VSA (and its gates) on the student only; the gates train, and final/ carries them."
    from videorecipes.parallel.attention import backend_parameters
    from videorecipes.train.method import BACKEND_FILE
    res = train(parse_args(flags(data, tmp_path / 'vsa', '--attention_backend', 'vsa', '--VSA_sparsity', 0.5, '--max_train_steps', 2,
                                 '--checkpointing_steps', 2)), progress=False)
    m = res.method
    gates = backend_parameters(m.student)
    assert gates and not backend_parameters(m.teacher) and not backend_parameters(m.critic)
    assert any(g.abs().sum() > 0 for g in gates.values())               # zero-initialised, moved by the student's step
    assert (res.final / BACKEND_FILE).exists()


def test_lora_student_and_critic_on_one_base(data, tmp_path):
    "--dmd_lora True: one DiT, adapters 'student' and 'critic' that train on their own steps, the teacher the bare base; exact resume; the student exports as a LoRA that diffusers loads, with its schedule."
    from videorecipes.recipes.dmd2 import _adapter_tensors
    lora = ['--dmd_lora', True, '--lora_rank', 4, '--lora_alpha', 4, '--learning_rate', 1e-3, '--fake_score_learning_rate', 1e-3]
    ref = train(parse_args(flags(data, tmp_path / 'ref', *lora)), progress=False)
    m = ref.method
    assert m.student is m.teacher is m.critic
    s, c = _adapter_tensors(m.student, 'student'), _adapter_tensors(m.student, 'critic')
    assert s and c and not set(s) & set(c)
    assert any(t.abs().sum() > 0 for n, t in s.items() if 'lora_B' in n) and any(t.abs().sum() > 0 for n, t in c.items() if 'lora_B' in n)
    run = stop_and_resume(lambda out, *x: flags(data, out, *lora, *x), tmp_path / 'run', 3, tmp_path / 'run' / 'checkpoint-2')
    assert metrics(tmp_path / 'ref') == metrics(tmp_path / 'run')
    assert (ref.final / 'pytorch_lora_weights.safetensors').exists() and (ref.final / 'dmd_schedule.json').exists()
    from diffusers import WanPipeline
    pipe = WanPipeline.from_pretrained(data['zoo'])
    pipe.load_lora_weights(str(ref.final))
    from videorecipes.sampling import generate_cli
    paths = generate_cli(['--model_path', data['zoo'], '--lora_checkpoint_dir', ref.final, '--prompt', 'a red circle', '--num_frames', 9,
                          '--height', 32, '--width', 32, '--text_max_length', 32, '--output_dir', tmp_path / 'gen'])
    assert len(paths) == 1
