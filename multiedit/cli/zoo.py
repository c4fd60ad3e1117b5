"""``multiedit zoo``: write the tiny random model zoo (every model multiedit uses) for offline tries."""

from __future__ import annotations


def register(sub) -> None:
    from ..testing import ZOO_PARTS

    p = sub.add_parser("zoo", help="Write tiny random models of every kind (offline testing).",
                       description="Write seeded tiny random models in the real Hugging Face formats. "
                       "Their outputs are noise; they exist to run every code path offline.")
    p.add_argument("--out", required=True, help="Folder to write the parts into (one subfolder each).")
    p.add_argument("--parts", nargs="+", choices=list(ZOO_PARTS), help="Only these parts (default: all).")
    p.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    p.add_argument("--overwrite", action="store_true", help="Rebuild parts that already exist.")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io_utils import check_output_path
    from ..testing import build_zoo

    check_output_path(args.out, "--out", "folder")
    for name, path in build_zoo(args.out, parts=args.parts, seed=args.seed, overwrite=args.overwrite).items():
        print(f"{name:16s} {path}")
    return 0
