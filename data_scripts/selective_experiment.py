#!/usr/bin/env python
"""The selective-finetuning efficacy experiment on the tiny zoo (nbs/48_train.selective.ipynb, issue 7).

A base DiT is full-finetuned on colour clips that never show concept A's or concept B's background colour.
Then, for each of three methods, concept A is trained in stage 1 and concept B in stage 2, starting from stage 1's
result, without any A clips in stage 2:

- selective: slice K=0 (--ff F --ffid 0) for A, then slice K=1 (--ffid 1) of A's result for B (slices numbered from 0);
- full:      a full finetune for A, then a full finetune of A's model for B;
  (also: B trained in slice 1 from the base instead, and the two slice files stacked on the base);
- lora:      a LoRA for A, merged into the base (`lora_tools.merge_lora`), then a second LoRA on the merged model for B;
             stage 2 is scored as merged-A + LoRA-B.

With `--preserve` each method also runs stage 2 a second way, with *self-preservation* (DreamBooth's prior
preservation applied to concept A): the stage-2 data is B's clips plus clips that the stage-1 model itself generated
for A's training captions, so stage 2 sees what the model already does for A prompts but never a ground-truth A clip.

After each stage, A's, B's and the base colours' held-out prompts are scored with the demo's colour score
(`demo.score_model`: background accuracy, chance ≈ 1/8). The table goes to OUT/results.json and OUT/results.md and is
printed. Target: B learned, A keeps ≥ 90% of its stage-1 accuracy. About 10 CPU minutes with OMP_NUM_THREADS=1.

    OMP_NUM_THREADS=1 python data_scripts/selective_experiment.py --out outputs/selective_experiment
"""
from __future__ import annotations
import argparse, json, os, shutil, sys, time
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
from videorecipes.config import parse_args
from videorecipes.demo import make_colour_dataset, heldout_prompts, score_model
from videorecipes.synthetic import COLOURS
from videorecipes.videoio import atomic_path
from videorecipes.zoo import tiny_zoo, load_transformer
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.train.trainer import train
from videorecipes.train.selective import SelectiveFinetune, apply_slice, load_slice

SIZE = ['--num_frames', 9, '--num_height', 32, '--num_width', 32, '--text_max_length', 32]
TRAIN = ['--dataloader_num_workers', 0, '--mixed_precision', 'no', '--report_to', 'none', '--weighting_scheme', 'shift',
         '--discrete_flow_shift', 3, '--lr_scheduler', 'cosine', '--lr_warmup_steps', 20, '--weight_decay', 0, '--cfg_rate', 0.1,
         '--train_batch_size', 16, '--dit_precision', 'fp32', *SIZE]


def log(*a): print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def make_data(out:Path, zoo, a):
    "Base / concept-A / concept-B clip sets, preprocessed, and held-out prompts for base, A and B colours."
    base_colours = [c for c in COLOURS if c not in (a.concept_a, a.concept_b)]
    sets = dict(base=dict(n=a.num_videos, colours=base_colours),
                A=dict(n=a.concept_videos, colours=base_colours + [a.concept_a], backgrounds=[a.concept_a], background_fraction=0.5),
                B=dict(n=a.concept_videos, colours=base_colours + [a.concept_b], backgrounds=[a.concept_b], background_fraction=0.5))
    seen = set()
    for i, (name, s) in enumerate(sets.items()):
        if not (out / name / 'videos2caption.json').exists():   # deterministic: the same clips every time
            make_colour_dataset(out / name, s['n'], a.seed + 7 * i, 9, 32, 32, colours=s['colours'], backgrounds=s.get('backgrounds'),
                                background_fraction=s.get('background_fraction', 1.0), progress=False)
        if not (out / f'{name}-latents').exists():
            preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', out / name, '--data_path', out / f'{name}-latents',
                                           *SIZE, '--text_precision', 'fp32', '--samples_per_file', 64, '--preprocess_num_workers', 0]),
                               progress=False)
        seen |= {e['cap'][0] for e in json.loads((out / name / 'videos2caption.json').read_text())}
    prompts = dict(base=heldout_prompts(a.num_prompts, a.seed + 1000, base_colours, exclude=seen),
                   A=heldout_prompts(a.num_prompts, a.seed + 2000, None, [a.concept_a], exclude=seen),
                   B=heldout_prompts(a.num_prompts, a.seed + 3000, None, [a.concept_b], exclude=seen))
    with atomic_path(out / 'prompts.json') as tmp: tmp.write_text(json.dumps(prompts, indent=1))
    return prompts


def run(model, data, out:Path, *flags, method=None):
    "Train (or reuse a finished run) and return its final folder."
    if (out / 'final').exists(): return out / 'final'
    shutil.rmtree(out, ignore_errors=True)
    cfg = parse_args([str(x) for x in ['--model_path', model, '--data_path', data, '--output_dir', out, *TRAIN, *flags]])
    t0 = time.time()
    r = train(cfg, method=method(cfg) if method else None, progress=False)
    log(f"trained {out.name}: {len(r.losses)} steps, {r.seconds_per_step:.3f} s/step, {time.time() - t0:.0f} s")
    return r.final


def score(model, prompts, lora=None, out=None, a=None):
    if out is not None and (out / 'scores.json').exists(): return json.loads((out / 'scores.json').read_text())['background_accuracy']
    r = score_model(model, prompts, lora=lora, text_max_length=32, num_inference_steps=a.sampling_steps, guidance_scale=3.0,
                    out_dir=out, progress=False)
    return r['background_accuracy']


def preserved_data(model, out:Path, a, lora=None):
    "B's clips plus clips `model` generates for A's training captions (on A backgrounds), preprocessed; returns the latents folder."
    lat = out.with_name(out.name + '-latents')
    if lat.exists(): return lat
    from videorecipes.sampling import Sampler
    from videorecipes.videoio import write_video
    src = Path(a.out)
    shutil.rmtree(out, ignore_errors=True); (out / 'videos').mkdir(parents=True)
    entries = json.loads((src / 'B' / 'videos2caption.json').read_text())
    for e in entries: shutil.copy2(src / 'B' / 'videos' / e['path'], out / 'videos' / e['path'])
    caps = [e['cap'][0] for e in json.loads((src / 'A' / 'videos2caption.json').read_text()) if e['scene']['background'] == a.concept_a]
    s = Sampler(model)
    if lora is not None: s.pipeline().load_lora_weights(str(lora))
    for i, c in enumerate(caps):
        v = s.generate([c], num_frames=9, height=32, width=32, num_inference_steps=a.sampling_steps, guidance_scale=3.0, seed=10_000 + i,
                       max_sequence_length=32)[0]
        name = f'self_{i:04d}.mp4'
        write_video(v, out / 'videos' / name, fps=8)
        entries.append(dict(path=name, cap=[c], resolution=dict(width=32, height=32), fps=8, duration=9 / 8, num_frames=9))
    with atomic_path(out / 'videos2caption.json') as tmp: tmp.write_text(json.dumps(entries, indent=1))
    preprocess_dataset(parse_args(['--model_path', tiny_zoo('t2v'), '--data_merge_path', out, '--data_path', lat, *SIZE,
                                   '--text_precision', 'fp32', '--samples_per_file', 64, '--preprocess_num_workers', 0]), progress=False)
    log(f"{lat.name}: {len(entries) - len(caps)} B clips + {len(caps)} self-generated A clips")
    return lat


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='outputs/selective_experiment')
    ap.add_argument('--base', default=None, help='an existing base pipeline folder that never saw concept A or B backgrounds (default: train one)')
    ap.add_argument('--concept_a', default='magenta', choices=sorted(COLOURS)); ap.add_argument('--concept_b', default='orange', choices=sorted(COLOURS))
    ap.add_argument('--num_videos', type=int, default=384); ap.add_argument('--concept_videos', type=int, default=64)
    ap.add_argument('--num_prompts', type=int, default=32); ap.add_argument('--sampling_steps', type=int, default=20)
    ap.add_argument('--base_steps', type=int, default=2000); ap.add_argument('--steps', type=int, default=400, help='steps of each stage')
    ap.add_argument('--ff', type=float, default=0.1); ap.add_argument('--ff_kinds', default='attn,ffn')
    ap.add_argument('--lr_selective', type=float, default=3e-3); ap.add_argument('--lr_full', type=float, default=1e-3)
    ap.add_argument('--lr_lora', type=float, default=3e-3); ap.add_argument('--lora_rank', type=int, default=16)
    ap.add_argument('--methods', default='selective,full,lora'); ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--preserve', action='store_true', help='also run stage 2 with self-generated A clips added to B (see the docstring)')
    a = ap.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    zoo = tiny_zoo('t2v')
    prompts = make_data(out, zoo, a)
    log(f"data ready ({time.time() - t0:.0f} s)")
    base = Path(a.base) if a.base else run(zoo, out / 'base-latents', out / 'base_model', '--learning_rate', 3e-3, '--max_train_steps', a.base_steps,
                                             '--checkpointing_steps', a.base_steps)
    S = lambda model, tag, lora=None: {k: score(model, prompts[k], lora, out / 'scores' / f'{tag}_{k}', a) for k in ('A', 'B', 'base')}
    rows = [dict(method='base', stage=0, **S(base, 'base_model'))]
    log('base', rows[-1])
    steps = ['--max_train_steps', a.steps, '--checkpointing_steps', a.steps]
    A, B = out / 'A-latents', out / 'B-latents'
    for m in a.methods.split(','):
        d, preserve_row = out / m, None
        if m == 'selective':
            sel = ['--ff', a.ff, '--ff_kinds', a.ff_kinds, '--learning_rate', a.lr_selective, *steps]
            f1 = run(base, A, d / 'stage1', *sel, '--ffid', 0, method=SelectiveFinetune)
            f2 = run(f1, B, d / 'stage2', *sel, '--ffid', 1, method=SelectiveFinetune)
            s1, s2 = S(f1, 'selective1'), S(f2, 'selective2')
            # stacking: base + slice 0 + slice 1 == stage 2's model, element for element
            stacked = apply_slice(apply_slice(load_transformer(base, 'fp32'), f1 / 'slice.safetensors'), f2 / 'slice.safetensors')
            ref = load_transformer(f2, 'fp32').state_dict()
            stack_ok = all(torch.equal(v, ref[k]) for k, v in stacked.state_dict().items())
            n1 = sum(len(i) for i in load_slice(f1 / 'slice.safetensors').indices.values())
            extra = dict(trained_elements=n1, stack_exact=stack_ok)
            # the other way to combine slices: B trained in slice 1 from the *base* (not from A), then both slice files stacked on the base
            fb = run(base, B, d / 'stage2_from_base', *sel, '--ffid', 1, method=SelectiveFinetune)
            stacked_dir = d / 'stacked_A_B'
            if not stacked_dir.exists():
                apply_slice(apply_slice(base, f1 / 'slice.safetensors', out=d / 'stacked_A'), fb / 'slice.safetensors', out=stacked_dir)
            ss = S(stacked_dir, 'selective_stacked')
            rows.append(dict(method='selective, separate slices stacked', stage=2, **ss, trained_elements=n1,
                             A_kept=ss['A'] / s1['A'] if s1['A'] else float('nan')))
            if a.preserve:
                fp = run(f1, preserved_data(f1, d / 'B+selfA', a), d / 'stage2_preserve', *sel, '--ffid', 1, method=SelectiveFinetune)
                sp = S(fp, 'selective2_preserve')
                preserve_row = dict(method='selective + self-preservation', stage=2, **sp, A_kept=sp['A'] / s1['A'] if s1['A'] else float('nan'))
        elif m == 'full':
            f1 = run(base, A, d / 'stage1', '--learning_rate', a.lr_full, *steps)
            f2 = run(f1, B, d / 'stage2', '--learning_rate', a.lr_full, *steps)
            s1, s2 = S(f1, 'full1'), S(f2, 'full2')
            if a.preserve:
                fp = run(f1, preserved_data(f1, d / 'B+selfA', a), d / 'stage2_preserve', '--learning_rate', a.lr_full, *steps)
                sp = S(fp, 'full2_preserve')
                preserve_row = dict(method='full + self-preservation', stage=2, **sp, A_kept=sp['A'] / s1['A'] if s1['A'] else float('nan'))
            extra = dict(trained_elements=sum(p.numel() for p in load_transformer(base, 'fp32').parameters()))
        elif m == 'lora':
            from videorecipes.lora_tools import merge_lora
            lo = ['--lora_training', True, '--lora_rank', a.lora_rank, '--lora_alpha', a.lora_rank, '--learning_rate', a.lr_lora, *steps]
            l1 = run(base, A, d / 'stage1', *lo)
            s1 = S(base, 'lora1', lora=l1)
            merged = d / 'merged_A'
            if not merged.exists(): merge_lora(base, l1, merged, link=False)
            l2 = run(merged, B, d / 'stage2', *lo)
            s2 = S(merged, 'lora2', lora=l2)
            if a.preserve:
                lp = run(merged, preserved_data(merged, d / 'B+selfA', a), d / 'stage2_preserve', *lo)
                sp = S(merged, 'lora2_preserve', lora=lp)
                preserve_row = dict(method='lora + self-preservation', stage=2, **sp, A_kept=sp['A'] / s1['A'] if s1['A'] else float('nan'))
            from safetensors.torch import load_file
            extra = dict(trained_elements=sum(t.numel() for t in load_file(str(l1 / 'pytorch_lora_weights.safetensors')).values()))
        else: raise SystemExit(f"--methods: unknown method {m!r}")
        stacked_row = rows.pop() if m == 'selective' else None
        kept = s2['A'] / s1['A'] if s1['A'] else float('nan')
        rows += [dict(method=m, stage=1, **s1, **extra), dict(method=m, stage=2, **s2, **extra, A_kept=kept)]
        if stacked_row: rows.append(stacked_row)
        if preserve_row: rows.append(preserve_row); log(m, 'with self-preservation', preserve_row)
        log(m, 'stage 1', s1, 'stage 2', s2, f'A kept {kept:.0%}')
    res = dict(config=vars(a), rows=rows, minutes=(time.time() - t0) / 60)
    with atomic_path(out / 'results.json') as tmp: tmp.write_text(json.dumps(res, indent=1))
    md = [f"Concept A = {a.concept_a} backgrounds (stage 1), concept B = {a.concept_b} backgrounds (stage 2, from stage 1's model); "
          f"background accuracy on {a.num_prompts} held-out prompts each (chance ≈ 1/8). Selective: --ff {a.ff} ({a.ff_kinds}), "
          f"slices 0 then 1. {a.steps} steps per stage, batch 16.", '',
          '| method | stage | A prompts | B prompts | base prompts | A kept after stage 2 |', '|---|---|---|---|---|---|']
    for r in rows:
        kept = f"{r['A_kept']:.0%}" if 'A_kept' in r else ''
        md.append(f"| {r['method']} | {r['stage']} | {r['A']:.0%} | {r['B']:.0%} | {r['base']:.0%} | {kept} |")
    md.append(f"\n({res['minutes']:.1f} minutes)")
    with atomic_path(out / 'results.md') as tmp: tmp.write_text('\n'.join(md) + '\n')
    print('\n'.join(md))
    return 0


if __name__ == '__main__': sys.exit(main())
