"""``multiedit datagen --backend shapes --task add -n N``: ShapesWorld through the datagen verb.

The no-stage ``datagen`` form owns ``--task``, ``--seed`` and ``--out``; :func:`add_shapes_arguments` adds
``--backend`` and the ShapesWorld-only flags, and :func:`run_shapes` writes the dataset (the same Parquet
format as the Stable Diffusion backend, so ``train``, ``invert-task`` and ``classifier train`` read it).
"""

from __future__ import annotations

import argparse
import copy

from .world import MAX_SIZE, MIN_SIZE, SIZE

BACKENDS = ("sd", "shapes")
# The datagen options that steer ShapesWorld; every other one belongs to the sd backend and, given with --backend
# shapes (a value other than its default), is refused instead of silently ignored.
SHAPES_DESTS = {"task", "seed", "out", "no_progress", "backend", "shapes_n", "shapes_split", "shapes_size"}


def add_shapes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="sd",
                        help="sd: the LLM + Grounding DINO/SAM + Stable Diffusion engine (default); shapes: ShapesWorld, "
                             "procedural scenes whose edits are exact (no models needed).")
    group = parser.add_argument_group("ShapesWorld (--backend shapes)")
    group.add_argument("-n", dest="shapes_n", type=int, default=100, help="Pairs per task (default: 100).")
    group.add_argument("--split", dest="shapes_split", choices=["train", "test"], default="train",
                       help="train or test: which scenes and which (disjoint) instruction phrasings (default: train).")
    group.add_argument("--size", dest="shapes_size", type=int, default=SIZE,
                       help=f"Image size in pixels, {MIN_SIZE} to {MAX_SIZE} (default: {SIZE}).")


def run_shapes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Write ``-n`` pairs per task; ``--task`` takes names separated by commas (omitted: every trained task).

    An sd-backend flag that was typed (even at its default value, e.g. ``--llm vllm``) or holds another value
    than its default in ``parser`` (the ``datagen`` parser) is refused, since ShapesWorld would ignore it."""
    from ...errors import MultiEditError
    from .dataset import write_shapes_dataset
    from .edits import ALL_TASK_OPS, TRAINED_TASKS

    argv = getattr(args, "argv", None) or []
    typed = typed_dests(parser, argv[argv.index(args.verb) + 1:] if args.verb in argv else [])
    given = [flag for flag, dest in sd_backend_flags(parser)
             if dest in typed or getattr(args, dest, None) != parser.get_default(dest)]
    if given:
        raise MultiEditError(f"{' and '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with --backend "
                             "shapes: the shapes backend generates its own scenes (no captions, LLM or Stable "
                             f"Diffusion), so drop {' and '.join(given)}.")
    if args.task is None:
        tasks = list(TRAINED_TASKS)
    else:
        tasks = list(dict.fromkeys(t.strip() for t in args.task.split(",") if t.strip()))  # a repeat is written once
        if not tasks:
            raise MultiEditError(f"--task {args.task!r} names no task; pass one or more of {sorted(ALL_TASK_OPS)} "
                                 "separated by commas, or omit --task for every trained task.")
    out = args.out or f"shapes-{args.shapes_split}"
    write_shapes_dataset(out, tasks, args.shapes_n, seed=args.seed, split=args.shapes_split, size=args.shapes_size,
                         progress=not getattr(args, "no_progress", False))
    print(f"wrote {args.shapes_n} {args.shapes_split} pair(s) per task for {', '.join(tasks)} to {out}")
    return 0


def sd_backend_flags(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """``(flag, dest)`` of each ``datagen`` option that only the sd backend reads (not in :data:`SHAPES_DESTS`)."""
    return [(action.option_strings[-1], action.dest) for action in parser._actions
            if action.option_strings and action.dest not in SHAPES_DESTS and action.dest != "help"]


def typed_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of ``parser``'s options that ``argv`` (the tokens after the verb) sets, as argparse itself reads them
    (``--flag=value``, an unambiguous prefix, values after ``--``). argparse fills in a default only where the namespace
    lacks the dest, so every dest starts out holding an object of its own, and the ones that no longer hold it were
    typed. An option that adds to its value (append, extend, count) starts from a copy of its default instead."""
    accumulating = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction)
    start = {a.dest: copy.copy(a.default) if isinstance(a, accumulating) else object()
             for a in parser._actions if a.dest != argparse.SUPPRESS}
    namespace = argparse.Namespace(**start)
    parser.parse_known_args(argv, namespace=namespace)
    return {dest for dest, value in vars(namespace).items() if dest in start and value is not start[dest]}
