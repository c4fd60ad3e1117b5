"""``multiedit eval``: score an editor with the Emu Edit and MagicBrush metrics."""

from __future__ import annotations

DESCRIPTION = """Score instruction-based editing on a benchmark.

Emu Edit protocol (no ground truth): CLIPdir, CLIPim, CLIPout, L1 and DINO between input and output.
MagicBrush protocol (ground truth): L1, L2, CLIP-I, DINO against the target, CLIP-T against the caption;
single-turn, plus multi-turn (final turn and all turns) where the data has sessions.
Outputs come from --model (edited now, into OUT/predictions), from --predictions DIR (files
<id>.png, and iterative/<id>.png for multi-turn chains), or from the data itself. Rerunning the
same command resumes: finished edits and scores are kept. OUT/predictions/settings.json records what made
the edits (--model, --task-embedding, --data, --layout, --split, --task, --steps, --seed, the guidance
scales, --resolution, --alpha); a rerun with any of these changed is refused, naming the setting, rather
than reusing or overwriting those edits: pass a new --out, or the recorded settings. Changing only
--clip, --dino, --captions, --limit, --batch-size, --examples or --device reuses the edits.
"""


def register(sub) -> None:
    from ..evaluation.backbones import DEFAULT_CLIP, DEFAULT_DINO

    p = sub.add_parser("eval", help="Score an editor with the Emu Edit / MagicBrush metrics.", description=DESCRIPTION)
    p.add_argument("--data", required=True,
                   help="Dataset: a Hugging Face name (facebook/emu_edit_test_set, osunlp/MagicBrush) or a local folder "
                        "(Parquet files, save_to_disk, or our dataset format).")
    p.add_argument("--layout", default="auto", choices=["auto", "emu", "magicbrush", "ours"],
                   help="Column layout of --data (default: detected from the columns).")
    p.add_argument("--split", help="Split to evaluate (default: test for emu, dev for magicbrush, train for ours).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="MultiEditPipeline folder: edit every sample first, into OUT/predictions.")
    src.add_argument("--predictions", metavar="DIR",
                     help="Score existing outputs: DIR/<id>.png per sample (ids are in report.json and OUT/predictions "
                          "of a --model run), DIR/iterative/<id>.png for multi-turn chains.")
    p.add_argument("--out", required=True,
                   help="Output folder for report.json, report.md, examples.png (and predictions); rerun with the same "
                        "settings to resume, or pass a new one to edit with other settings.")
    p.add_argument("--clip", default=DEFAULT_CLIP, help=f"CLIP checkpoint, hub name or folder (default {DEFAULT_CLIP}).")
    p.add_argument("--dino", default=DEFAULT_DINO, help=f"DINO ViT checkpoint, hub name or folder (default {DEFAULT_DINO}).")
    p.add_argument("--captions", metavar="JSON",
                   help="Output captions for CLIP-T: MagicBrush's global_descriptions.json or {sample_id: caption}.")
    p.add_argument("--limit", type=int, help="Evaluate the first N samples only (whole multi-turn sessions).")
    p.add_argument("--task", default="data",
                   help="With --model: 'data' (each sample's task, default), 'classifier' (the model's task classifier) "
                        "or one task name for every sample.")
    p.add_argument("--steps", type=int, default=20, help="With --model: denoising steps (default 20).")
    p.add_argument("--seed", type=int, default=0, help="With --model: random seed of every edit (default 0).")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="With --model: text guidance scale (default 7.5).")
    p.add_argument("--image-guidance-scale", type=float, default=1.5,
                   help="With --model: image guidance scale (default 1.5).")
    p.add_argument("--resolution", type=int, help="With --model: shorter side to edit at (default: the image's size).")
    p.add_argument("--alpha", type=float, default=0.03,
                   help="With --model: sequential-edit threshold for multi-turn chains (0 disables; default 0.03).")
    p.add_argument("--task-embedding", action="append", default=[], metavar="DIR",
                   help="With --model: a learned task folder (from invert-task) to load; repeatable.")
    p.add_argument("--batch-size", type=int, default=16, help="Images per CLIP/DINO batch (default 16).")
    p.add_argument("--device", default="auto", help="Device for models: auto, cpu, cuda, cuda:1 ... (default auto).")
    p.add_argument("--examples", type=int, default=16, help="Rows in examples.png (0: no grid; default 16).")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluation.runner import evaluate
    from ..evaluation.scoring import METRICS

    report = evaluate(
        data=args.data, out=args.out, layout=args.layout, split=args.split, model=args.model,
        predictions=args.predictions, clip=args.clip, dino=args.dino, limit=args.limit, steps=args.steps,
        seed=args.seed, task=args.task, captions=args.captions, guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale, resolution=args.resolution, alpha=args.alpha,
        batch_size=args.batch_size, device=args.device, examples=args.examples, task_embeddings=args.task_embedding,
    )
    for name, st in report["settings"].items():
        cells = [f"{METRICS[m][0]}={st['all'][m]['mean']:.4f}" for m in st["metrics"] if st["all"][m]["mean"] is not None]
        print(f"{name} ({st['all']['n']} samples): {' '.join(cells) or 'no metric computed, see report.md'}")
    n_ex = len(report["excluded"]["samples"])
    if n_ex:
        print(f"excluded: {n_ex} sample/metric entries, reasons in {args.out}/report.md")
    print(f"wrote {args.out}/report.md and report.json")
    return 0
