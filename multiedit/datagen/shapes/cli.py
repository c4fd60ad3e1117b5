"""``multiedit datagen --backend shapes``: the ShapesWorld options, hooked into the datagen verb.

``add_shapes_arguments(parser)`` adds the flags; ``run_shapes(args)`` writes the dataset and returns the
exit code. The datagen verb owns ``--backend`` and calls ``run_shapes`` when it is ``shapes``.
"""

from __future__ import annotations

import argparse


def add_shapes_arguments(parser: argparse.ArgumentParser) -> None:
    from .edits import ALL_TASK_OPS

    group = parser.add_argument_group("ShapesWorld (--backend shapes)")
    group.add_argument("--task", dest="shapes_tasks", nargs="+", default=None, metavar="TASK",
                       help=f"Task(s) to generate, from {sorted(ALL_TASK_OPS)} (mirror and sepia are the held-out "
                            "tasks for invert-task); default: every trained task.")
    group.add_argument("-n", dest="shapes_n", type=int, default=100, help="Pairs per task (default: 100).")
    group.add_argument("--seed", dest="shapes_seed", type=int, default=0, help="Seed (default: 0).")
    group.add_argument("--split", dest="shapes_split", choices=["train", "test"], default="train",
                       help="train or test: which scenes and which (disjoint) instruction phrasings (default: train).")
    group.add_argument("--size", dest="shapes_size", type=int, default=64, help="Image size in pixels (default: 64).")
    group.add_argument("--out", dest="shapes_out", default=None, help="Output dataset folder (default: shapes-<split>).")


def run_shapes(args: argparse.Namespace) -> int:
    from .dataset import write_shapes_dataset
    from .edits import TRAINED_TASKS

    tasks = args.shapes_tasks or list(TRAINED_TASKS)
    out = args.shapes_out or f"shapes-{args.shapes_split}"
    write_shapes_dataset(out, tasks, args.shapes_n, seed=args.shapes_seed, split=args.shapes_split,
                         size=args.shapes_size)
    print(f"wrote {args.shapes_n} {args.shapes_split} pair(s) per task for {', '.join(tasks)} to {out}")
    return 0
