"""``multiedit datagen --backend shapes --task add -n N``: ShapesWorld through the datagen verb.

The no-stage ``datagen`` form owns ``--task``, ``--seed`` and ``--out``; :func:`add_shapes_arguments` adds
``--backend`` and the ShapesWorld-only flags, and :func:`run_shapes` writes the dataset (the same Parquet
format as the Stable Diffusion backend, so ``train``, ``invert-task`` and ``classifier train`` read it).
"""

from __future__ import annotations

import argparse

BACKENDS = ("sd", "shapes")


def add_shapes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="sd",
                        help="sd: the LLM + Grounding DINO/SAM + Stable Diffusion engine (default); shapes: ShapesWorld, "
                             "procedural scenes whose edits are exact (no models needed).")
    group = parser.add_argument_group("ShapesWorld (--backend shapes)")
    group.add_argument("-n", dest="shapes_n", type=int, default=100, help="Pairs per task (default: 100).")
    group.add_argument("--split", dest="shapes_split", choices=["train", "test"], default="train",
                       help="train or test: which scenes and which (disjoint) instruction phrasings (default: train).")
    group.add_argument("--size", dest="shapes_size", type=int, default=64, help="Image size in pixels (default: 64).")


def run_shapes(args: argparse.Namespace) -> int:
    """Write ``-n`` pairs per task; ``--task`` takes names separated by commas (default: every trained task)."""
    from .dataset import write_shapes_dataset
    from .edits import TRAINED_TASKS

    tasks = [t.strip() for t in args.task.split(",") if t.strip()] if args.task else list(TRAINED_TASKS)
    out = args.out or f"shapes-{args.shapes_split}"
    write_shapes_dataset(out, tasks, args.shapes_n, seed=args.seed, split=args.shapes_split, size=args.shapes_size,
                         progress=not getattr(args, "no_progress", False))
    print(f"wrote {args.shapes_n} {args.shapes_split} pair(s) per task for {', '.join(tasks)} to {out}")
    return 0
