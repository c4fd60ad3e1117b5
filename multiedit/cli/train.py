"""``multiedit train``: train the task-conditioned IP2P model (run under `accelerate launch` to scale)."""

from __future__ import annotations


def register(sub) -> None:
    from ..training.config import add_config_arguments

    p = sub.add_parser("train", help="Train a MultiEditPipeline on an instruction-editing dataset.",
                       description="Train the task-conditioned InstructPix2Pix model. Every field can also come "
                       "from --config FILE (YAML/JSON); flags override the file. Scale out with "
                       "`accelerate launch -m multiedit train ...`.")
    p.add_argument("--config", help="YAML or JSON file with any of the fields below.")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..training import train
    from ..training.config import config_from_args

    out = train(config_from_args(args))
    print(f"wrote {out}")
    return 0
