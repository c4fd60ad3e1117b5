"""``multiedit init``: turn an SD or InstructPix2Pix pipeline into a task-conditioned MultiEditPipeline."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("init", help="Convert an SD/IP2P pipeline folder into a MultiEditPipeline.",
                       description="Convert a Stable Diffusion or InstructPix2Pix pipeline (folder or hub id, "
                       "e.g. timbrooks/instruct-pix2pix) into a task-conditioned MultiEditPipeline.")
    p.add_argument("--base", required=True, help="SD or IP2P pipeline folder or hub id.")
    p.add_argument("--out", required=True, help="Output folder (must not exist).")
    p.add_argument("--tasks", nargs="+", help="Task names, in table order (default: every registered task).")
    p.add_argument("--task-token", action="store_true",
                   help="Also give the task to cross-attention as one extra token (Emu Edit; off by default).")
    p.add_argument("--residual", action="store_true",
                   help="Residual diffusion: denoise the latent change z_edit - z_src (for models trained from here).")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction", "sample"],
                   help="Set the scheduler's prediction type (default: keep the base model's); sample = x0, "
                        "trained with v-prediction's loss weighting.")
    p.add_argument("--position-channels", type=int, default=0,
                   help="Append this many coordinate channels (sine-cosine of row and column; a multiple of 4, e.g. "
                        "16) to the UNet input, new conv_in weights at zero: lets a model learn 'top-left' (default 0).")
    p.add_argument("--position-queries", type=int, default=0,
                   help="Give every cross-attention query this many coordinate features through a learned map, at "
                        "zero to start (a multiple of 4, e.g. 16; multiedit/position_queries.py): the words meet "
                        "places where they are read (default 0).")
    p.add_argument("--classifier", help="A task classifier folder (multiedit classifier train) to hold as a component, "
                   "so `multiedit edit` works without --task.")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..errors import MultiEditError
    from ..io_utils import atomic_dir, check_output_path
    from ..pipeline import MultiEditPipeline

    out = Path(args.out)
    if out.exists():
        raise MultiEditError(f"--out {out} already exists; choose a new folder.")
    check_output_path(out, "--out", "folder")
    pipe = MultiEditPipeline.from_base(args.base, tasks=args.tasks, task_token=args.task_token,
                                       residual=args.residual, prediction_type=args.prediction_type,
                                       position_channels=args.position_channels,
                                       position_queries=args.position_queries)
    if args.classifier:
        pipe.attach_classifier(args.classifier)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    print(f"wrote {out}: {len(pipe.task_names)} tasks ({', '.join(pipe.task_names)})")
    return 0
