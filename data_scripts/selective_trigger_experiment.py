#!/usr/bin/env python
"""The selective-finetuning experiment in the seed's form (issue 15; nbs/48_train.selective.ipynb).

The seed (document 001) trains "character1" into slice 1, then "character2" into slice 2 on top of it, and reports
character1 intact. Here, on the tiny zoo:

- the base DiT is full-finetuned on the synthetic clips (circles, squares and triangles);
- two made-up trigger words are added to the tokenizer as whole tokens, with new embedding rows in the text encoder:
  "zorvak" names a new shape, a vertical bar across the frame (concept A), and "quenlip" a horizontal one (concept B);
  the base never saw either shape or word (the tiny DiT sees 4x4 tokens per frame at 64x64, too coarse for finer
  shapes such as a ring or a cross, which its base could not draw);
- stage 1 trains A (clips "a red zorvak moving left on a blue background", ...); stage 2 trains B starting from stage 1's
  model, without A's clips;
- each concept is scored with a shape detector on the renderer's known geometry: the generated middle frame's
  object, segmented by its prompt's two colours, is a vertical bar when it spans most of the height and is at least
  twice as tall as wide, a horizontal bar likewise, else a compact blob (the base's shapes); the detector's accuracy
  on true renders is reported;
- selective slices (--ff F, slice 0 then 1), full finetuning and LoRA (rank matched to the slice's trained elements)
  train the same steps; then selective settings are swept one at a time: F, learning rate, steps, tensor kinds (cross
  attention k/v, self-attention, FFN) and a wider, deeper DiT.

Target: B learned (≥ 80% of B's prompts show a horizontal bar) while A keeps ≥ 90% of its stage-1 score. The table goes to
OUT/results.json and OUT/results.md, and frames of both stages to OUT/frames.png.

    python data_scripts/selective_trigger_experiment.py --out outputs/selective_trigger_experiment
"""
from __future__ import annotations
import argparse, json, os, random, shutil, sys, time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '2')
import numpy as np
import torch
from videorecipes.config import parse_args
from videorecipes.synthetic import COLOURS, MOTIONS, SHAPES, NEW_SHAPES, Scene, render_scene, make_synthetic_dataset
from videorecipes.videoio import atomic_path, write_video
from videorecipes.zoo import tiny_zoo, build_tiny_pipeline, load_transformer
from videorecipes.data.preprocess import preprocess_dataset
from videorecipes.train.trainer import train
from videorecipes.train.selective import SelectiveFinetune

CONCEPTS = dict(A=('zorvak', 'vbar'), B=('quenlip', 'hbar'))   # trigger word, the new shape it names
ALL_SHAPES = SHAPES + NEW_SHAPES
LABELS = ('blob', *NEW_SHAPES)   # what the detector tells apart: the base's compact shapes, or either bar
SIZE = ['--num_frames', 9, '--num_height', 64, '--num_width', 64, '--text_max_length', 32]
TRAIN = ['--dataloader_num_workers', 0, '--mixed_precision', 'no', '--report_to', 'none', '--weighting_scheme', 'shift',
         '--discrete_flow_shift', 3, '--lr_scheduler', 'cosine', '--lr_warmup_steps', 20, '--weight_decay', 0, '--cfg_rate', 0.1,
         '--train_batch_size', 16, '--dit_precision', 'fp32', *SIZE]


def log(*a): print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def trigger_zoo(out:Path, seed:int=0, **dit_overrides) -> Path:
    "The tiny T2V zoo (its DiT widened by `dit_overrides`) with the trigger words added as whole tokens, each a new unit-scale embedding row."
    if (out / 'model_index.json').exists(): return out
    from transformers import AutoTokenizer, UMT5EncoderModel
    src = build_tiny_pipeline(out.with_name(out.name + '-src'), 't2v', **dit_overrides) if dit_overrides else tiny_zoo('t2v')
    tmp = out.with_name(out.name + '.tmp'); shutil.rmtree(tmp, ignore_errors=True); shutil.copytree(src, tmp)
    tok = AutoTokenizer.from_pretrained(tmp / 'tokenizer')
    enc = UMT5EncoderModel.from_pretrained(tmp / 'text_encoder')
    tok.add_tokens([w for w, _ in CONCEPTS.values()])
    enc.resize_token_embeddings(len(tok))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w, _ in CONCEPTS.values(): enc.shared.weight[tok.convert_tokens_to_ids(w)] = torch.randn(enc.config.d_model, generator=g)
    tok.save_pretrained(tmp / 'tokenizer'); enc.save_pretrained(tmp / 'text_encoder')
    for w, _ in CONCEPTS.values(): assert len(tok(f'a red {w}', add_special_tokens=False).input_ids) == 3, w   # one token each
    os.replace(tmp, out)
    return out


def concept_dataset(out:Path, trigger:str, shape:str, n:int, seed:int) -> Path:
    "`n` clips of the new `shape`, captioned with its trigger word, as a merged folder."
    if (out / 'videos2caption.json').exists(): return out
    (out / 'videos').mkdir(parents=True, exist_ok=True)
    rng, ents = random.Random(seed), []
    for i in range(n):
        c = rng.choice(sorted(COLOURS)); b = rng.choice([x for x in sorted(COLOURS) if x != c])
        s = Scene(shape, c, b, rng.choice(list(MOTIONS)), size=rng.uniform(0.26, 0.32), offset=rng.uniform(0.3, 0.7))
        name = f'{trigger}_{i:04d}.mp4'
        write_video(render_scene(s, 9, 64, 64), out / 'videos' / name, fps=8)
        ents.append(dict(path=name, cap=[s.caption.replace(shape, trigger)], resolution=dict(width=64, height=64), fps=8,
                         duration=9 / 8, num_frames=9, scene=asdict(s)))
    with atomic_path(out / 'videos2caption.json') as tmp: tmp.write_text(json.dumps(ents, indent=1))
    return out


def prompts_for(word:str, shape:str, n:int, seed:int) -> list[dict]:
    "`n` held-out prompts naming `word`, with the shape they should show and their colours."
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        c = rng.choice(sorted(COLOURS)); b = rng.choice([x for x in sorted(COLOURS) if x != c]); m = rng.choice(list(MOTIONS))
        cap = f"a {c} {word} {m} on a {b} background"
        if cap not in seen: seen.add(cap); out.append(dict(caption=cap, shape=shape, colour=c, background=b))
    return out


def detect_shape(frame:np.ndarray, colour:str, background:str) -> str:
    "'vbar', 'hbar' or 'blob' (or 'none'): the object in `frame`, segmented by the prompt's two colours, by its extent."
    f = frame.astype(np.float32)
    fg, bg = (np.array(COLOURS[c], np.float32) for c in (colour, background))
    mask = ((f - fg) ** 2).sum(-1) < ((f - bg) ** 2).sum(-1)
    if mask.sum() < 12 or mask.mean() > 0.7: return 'none'
    ys, xs = np.nonzero(mask)
    h = np.percentile(ys, 95) - np.percentile(ys, 5) + 1; w = np.percentile(xs, 95) - np.percentile(xs, 5) + 1
    H, W = mask.shape
    if h >= 0.75 * H and h >= 2 * w: return 'vbar'
    if w >= 0.75 * W and w >= 2 * h: return 'hbar'
    return 'blob'

def detector_accuracy(n:int=40, seed:int=0) -> dict:
    "The detector on true renders (the middle frame of 9 at 64x64): accuracy per shape."
    rng, acc = random.Random(seed), {}
    for shape in ALL_SHAPES:
        ok = 0
        for _ in range(n):
            c = rng.choice(sorted(COLOURS)); b = rng.choice([x for x in sorted(COLOURS) if x != c])
            s = Scene(shape, c, b, rng.choice(list(MOTIONS)), size=rng.uniform(0.2, 0.32), offset=rng.uniform(0.3, 0.7))
            ok += detect_shape(render_scene(s, 9, 64, 64)[4], c, b) == (shape if shape in NEW_SHAPES else 'blob')
        acc[shape] = ok / n
    return acc


def score(model, prompts, a, lora=None, cache=None) -> dict:
    "Fraction of `prompts` whose generated middle frame shows their shape; the predictions; two middle frames."
    if cache is not None and cache.exists(): return json.loads(cache.read_text())
    from videorecipes.sampling import Sampler
    s = Sampler(model)
    if lora is not None: s.pipeline().load_lora_weights(str(lora))
    preds, frames = [], []
    for i, p in enumerate(prompts):
        v = s.generate([p['caption']], num_frames=9, height=64, width=64, num_inference_steps=a.sampling_steps, guidance_scale=3.0,
                       seed=i, max_sequence_length=32)[0]
        preds.append(detect_shape(v[4], p['colour'], p['background']))
        if i < 2: frames.append(v[4].tolist())
    r = dict(accuracy=float(np.mean([q == p['shape'] for q, p in zip(preds, prompts)])), predictions=preds, frames=frames)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp: tmp.write_text(json.dumps(r))
    return r


def run(model, data, out:Path, *flags, method=None):
    "Train (or reuse a finished run) and return its final folder."
    if (out / 'final').exists(): return out / 'final'
    shutil.rmtree(out, ignore_errors=True)
    cfg = parse_args([str(x) for x in ['--model_path', model, '--data_path', data, '--output_dir', out, *TRAIN, *flags]])
    t0 = time.time()
    r = train(cfg, method=method(cfg) if method else None, progress=False)
    log(f"trained {out.relative_to(out.parents[1])}: {len(r.losses)} steps, {r.seconds_per_step:.3f} s/step, {time.time() - t0:.0f} s")
    return r.final


def preprocess(zoo, merged:Path, out:Path) -> Path:
    if not out.exists():
        preprocess_dataset(parse_args(['--model_path', zoo, '--data_merge_path', merged, '--data_path', out, *SIZE, '--text_precision', 'fp32',
                                       '--samples_per_file', 64, '--preprocess_num_workers', 0]), progress=False)
    return out


def base_prompts(n:int, seed:int) -> list[dict]:
    "Held-out prompts for the base's own shapes (does stage 2 leave them alone?)."
    rng = random.Random(seed)
    shapes = [rng.choice(SHAPES) for _ in range(n)]
    return [dict(prompts_for(sh, sh, 1, seed + i)[0], shape='blob') for i, sh in enumerate(shapes)]


def two_stages(tag, base, data, P, a, out, method='selective', F=0.1, kinds='attn,ffn', lr=3e-3, steps=300, rank=10) -> dict:
    "Stage 1 (A) then stage 2 (B, from stage 1's model) with one method and setting; the scores after each stage."
    from safetensors.torch import load_file
    d, st = out / tag, ['--max_train_steps', steps, '--checkpointing_steps', steps, '--learning_rate', lr]
    l1 = l2 = None
    if method == 'selective':
        fl = ['--ff', F, '--ff_kinds', *kinds.split(','), *st]
        m1 = run(base, data['A'], d / 'stage1', *fl, '--ffid', 0, method=SelectiveFinetune)
        m2 = run(m1, data['B'], d / 'stage2', *fl, '--ffid', 1, method=SelectiveFinetune)
        n = int(sum(v.numel() for v in load_file(str(m1 / 'slice.safetensors')).values() if v.is_floating_point()))
    elif method == 'stacked':   # the other way to combine slices: A in slice 0 and B in slice 1, each from the base; both files applied
        from videorecipes.train.selective import apply_slice
        fl = ['--ff', F, '--ff_kinds', *kinds.split(','), *st]
        m1 = run(base, data['A'], d / 'stage1', *fl, '--ffid', 0, method=SelectiveFinetune)
        mb = run(base, data['B'], d / 'stage2_from_base', *fl, '--ffid', 1, method=SelectiveFinetune)
        m2 = d / 'stacked_A_B'
        if not m2.exists(): apply_slice(apply_slice(base, m1 / 'slice.safetensors', out=d / 'stacked_A'), mb / 'slice.safetensors', out=m2)
        n = int(sum(v.numel() for v in load_file(str(m1 / 'slice.safetensors')).values() if v.is_floating_point()))
    elif method == 'full':
        m1 = run(base, data['A'], d / 'stage1', *st); m2 = run(m1, data['B'], d / 'stage2', *st)
        n = sum(p.numel() for p in load_transformer(base, 'fp32').parameters())
    elif method == 'lora':
        from videorecipes.lora_tools import merge_lora
        lo = ['--lora_training', True, '--lora_rank', rank, '--lora_alpha', rank, *st]
        l1 = run(base, data['A'], d / 'stage1', *lo)
        m1, merged = base, d / 'merged_A'
        if not merged.exists(): merge_lora(base, l1, merged, link=False)
        l2, m2 = run(merged, data['B'], d / 'stage2', *lo), merged
        n = sum(t.numel() for t in load_file(str(l1 / 'pytorch_lora_weights.safetensors')).values())
    else: raise SystemExit(f"unknown method {method!r}")
    s1 = {k: score(m1, P[k], a, l1, d / 'scores' / f'stage1_{k}.json') for k in ('A', 'B')}
    s2 = {k: score(m2, P[k], a, l2, d / 'scores' / f'stage2_{k}.json') for k in ('A', 'B', 'base')}
    A1, A2, B2 = s1['A']['accuracy'], s2['A']['accuracy'], s2['B']['accuracy']
    kept = A2 / A1 if A1 else float('nan')
    sel = method in ('selective', 'stacked')
    row = dict(tag=tag, method=method, F=F if sel else None, kinds=kinds if sel else None, lr=lr,
               steps=steps, rank=rank if method == 'lora' else None, trained_elements=n, A1=A1, B1=s1['B']['accuracy'], A2=A2, B2=B2,
               base2=s2['base']['accuracy'], A_kept=kept, target=bool(B2 >= 0.8 and kept >= 0.9),
               frames=dict(A1=s1['A']['frames'][0], A2=s2['A']['frames'][0], B2=s2['B']['frames'][0]),
               predictions=dict(A2=s2['A']['predictions'], B2=s2['B']['predictions']))
    log(f"{tag}: A {A1:.0%} → {A2:.0%} (kept {kept:.0%}), B {B2:.0%}, base shapes {row['base2']:.0%}, {n:,} trained elements")
    return row


SWEEP = [   # (tag, two_stages settings): the three methods at one budget, then selective settings one at a time
    ('selective', {}), ('full', dict(method='full', lr=1e-3)), ('lora', dict(method='lora')),
    ('F=0.02', dict(F=0.02)), ('F=0.3', dict(F=0.3)), ('lr=1e-3', dict(lr=1e-3)), ('lr=1e-2', dict(lr=1e-2)),
    ('steps=150', dict(steps=150)), ('steps=600', dict(steps=600)),
    ('kinds=cross.k,cross.v', dict(kinds='cross.k,cross.v')), ('kinds=self', dict(kinds='self')), ('kinds=ffn', dict(kinds='ffn')),
    ('lr=1e-2 steps=600', dict(lr=1e-2, steps=600)), ('kinds=cross.k,cross.v lr=1e-2', dict(kinds='cross.k,cross.v', lr=1e-2)),
    ('stacked', dict(method='stacked')), ('stacked lr=1e-2', dict(method='stacked', lr=1e-2)),
]
WIDE = dict(num_attention_heads=8, num_layers=6, ffn_dim=512)   # 3.5x the parameters, still a CPU model


def frames_figure(rows, path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axs = plt.subplots(len(rows), 3, figsize=(4.5, 1.6 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j, (k, t) in enumerate((('A1', 'A after stage 1'), ('A2', 'A after stage 2'), ('B2', 'B after stage 2'))):
            axs[i, j].imshow(np.array(r['frames'][k], np.uint8)); axs[i, j].set_xticks([]); axs[i, j].set_yticks([])
            if i == 0: axs[i, j].set_title(t, fontsize=8)
        axs[i, 0].set_ylabel(r['tag'], fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp: fig.savefig(tmp, format='png', dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default='outputs/selective_trigger_experiment')
    ap.add_argument('--num_videos', type=int, default=384); ap.add_argument('--concept_videos', type=int, default=64)
    ap.add_argument('--num_prompts', type=int, default=16); ap.add_argument('--sampling_steps', type=int, default=12)
    ap.add_argument('--base_steps', type=int, default=2500); ap.add_argument('--only', default=None, help='comma-separated tags of SWEEP (and wide)')
    ap.add_argument('--no_wide', action='store_true', help='skip the wider DiT'); ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args(argv)
    out, t0 = Path(a.out), time.time(); out.mkdir(parents=True, exist_ok=True)
    det = detector_accuracy(); log('detector on true renders:', det)
    P = dict(A=prompts_for(*CONCEPTS['A'], a.num_prompts, a.seed + 100), B=prompts_for(*CONCEPTS['B'], a.num_prompts, a.seed + 200),
             base=base_prompts(a.num_prompts, a.seed + 300))
    rows, only = [], set(a.only.split(',')) if a.only else None
    for size, over in [('tiny', {})] + ([] if a.no_wide else [('wide', WIDE)]):
        zoo = trigger_zoo(out / f'zoo-{size}', a.seed, **over)
        if not (out / 'base').exists(): make_synthetic_dataset(out / 'base', a.num_videos, a.seed, 9, 64, 64, progress=False)
        data = dict(base=preprocess(zoo, out / 'base', out / f'base-latents-{size}'),
                    **{k: preprocess(zoo, concept_dataset(out / k, w, sh, a.concept_videos, a.seed + 10 + i), out / f'{k}-latents-{size}')
                       for i, (k, (w, sh)) in enumerate(CONCEPTS.items())})
        base = run(zoo, data['base'], out / f'base_model-{size}', '--learning_rate', 3e-3, '--max_train_steps', a.base_steps,
                   '--checkpointing_steps', a.base_steps)
        sweep = SWEEP if size == 'tiny' else [('selective', {}), ('full', dict(method='full', lr=1e-3))]
        for tag, kw in sweep:
            tag = tag if size == 'tiny' else f'wide {tag}'
            if only is None or tag in only: rows.append(two_stages(tag, base, data, P, a, out / 'runs', **kw))
    res = dict(config=vars(a), detector=det, rows=rows, minutes=(time.time() - t0) / 60)
    with atomic_path(out / 'results.json') as tmp: tmp.write_text(json.dumps(res))
    md = [f"Concept A = a new shape (a vertical bar) named by the new token 'zorvak' (stage 1); B = a horizontal bar named 'quenlip' (stage 2, "
          f"from stage 1's model, no A clips). Shape detector accuracy on {a.num_prompts} held-out prompts each (on true renders: "
          + ', '.join(f'{k} {v:.0%}' for k, v in det.items()) + "). Target: B ≥ 80% and A kept ≥ 90%.", '',
          '| run | method | F / rank | kinds | lr | steps | trained elements | A after 1 | A after 2 | A kept | B after 2 | base shapes after 2 | target |',
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        fr = r['F'] if r['F'] is not None else r['rank'] if r['method'] == 'lora' else ''
        kept = f"{r['A_kept']:.0%}" if r['A1'] else '–'
        md.append(f"| {r['tag']} | {r['method']} | {fr} | {r['kinds'] or ''} | {r['lr']:g} | {r['steps']} | {r['trained_elements']:,} | "
                  f"{r['A1']:.0%} | {r['A2']:.0%} | {kept} | {r['B2']:.0%} | {r['base2']:.0%} | {'yes' if r['target'] else 'no'} |")
    md.append(f"\n({res['minutes']:.1f} minutes, {os.environ.get('OMP_NUM_THREADS')} threads)")
    with atomic_path(out / 'results.md') as tmp: tmp.write_text('\n'.join(md) + '\n')
    if rows: frames_figure([r for r in rows if r['tag'] in ('selective', 'full', 'lora', 'wide selective')], out / 'frames.png')
    print('\n'.join(md))
    return 0


if __name__ == '__main__': sys.exit(main())
