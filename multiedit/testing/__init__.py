"""The tiny model zoo: seeded, random, tiny versions of every model multiedit uses.

Each part is written in the real Hugging Face format of the model it stands in for, so the code
under test loads it with the same ``from_pretrained`` call it uses for the real checkpoint.
Tokenizers are trained or built locally; nothing touches a hub.

``build_zoo(out)`` writes every part; ``multiedit zoo --out DIR`` is its CLI. The outputs of these
models are noise: they exist to run every code path offline, as diffusers' tiny test checkpoints do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path

# part name -> (module, builder function). A builder has the signature
# ``build(out_dir: Path, seed: int = 0) -> Path`` and writes a folder loadable by from_pretrained.
ZOO_PARTS: dict[str, tuple[str, str]] = {
    "pipeline": ("multiedit.testing.diffusion", "build_multiedit_pipeline"),
    "ip2p": ("multiedit.testing.diffusion", "build_ip2p_pipeline"),
    "sd": ("multiedit.testing.diffusion", "build_sd_pipeline"),
    "clip": ("multiedit.testing.vision", "build_clip"),
    "grounding-dino": ("multiedit.testing.vision", "build_grounding_dino"),
    "sam": ("multiedit.testing.vision", "build_sam"),
    "depth": ("multiedit.testing.vision", "build_depth"),
    "dino": ("multiedit.testing.vision", "build_dino"),
    "classifier-base": ("multiedit.testing.t5", "build_classifier_base"),
    "llm": ("multiedit.testing.llm", "build_llm"),
}


def part_builder(name: str) -> Callable[..., Path]:
    from ..errors import MultiEditError

    if name not in ZOO_PARTS:
        raise MultiEditError(f"Unknown zoo part {name!r}. Available: {list(ZOO_PARTS)}.")
    module, attr = ZOO_PARTS[name]
    return getattr(importlib.import_module(module), attr)


def build_zoo(out: str | Path, parts: Iterable[str] | None = None, seed: int = 0, overwrite: bool = False) -> dict[str, Path]:
    """Write the zoo parts (default: all) under ``out/<part>``; existing parts are kept unless ``overwrite``."""
    from ..io_utils import atomic_dir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in parts or ZOO_PARTS:
        target = out / name
        if target.exists() and not overwrite:
            written[name] = target
            continue
        with atomic_dir(target, overwrite=overwrite) as tmp:
            part_builder(name)(tmp, seed=seed)
        written[name] = target
    return written
