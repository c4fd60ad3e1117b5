"""``multiedit invert-task``: learn a new task from examples, backbone frozen."""

from __future__ import annotations


def register(sub) -> None:
    from ..inversion.invert import InvertConfig
    from ..training.config import add_config_arguments

    p = sub.add_parser("invert-task", help="Learn a new task's embedding from a few examples (backbone frozen).",
                       description="Task inversion (Emu Edit): optimise one new task vector with the ordinary "
                       "diffusion loss while the UNet, VAE and text encoder stay frozen. The result is a small "
                       "folder that `multiedit edit --task-embedding DIR --task NAME` loads.")
    add_config_arguments(p, InvertConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..inversion import invert_task
    from ..inversion.invert import InvertConfig
    from ..training.config import config_from_args

    out = invert_task(config_from_args(args, InvertConfig))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"task folder {out} ({size / 1024:.1f} KiB)")
    return 0
