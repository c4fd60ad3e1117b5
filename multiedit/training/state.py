"""Checkpoint bookkeeping: the step counter that accelerate saves with the model, and the checkpoint folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import MultiEditError


class TrainState:
    """Saved with ``accelerator.save_state``: the optimisation step (which fixes epoch and data position)."""

    def __init__(self):
        self.step = 0
        self.last_loss = float("nan")

    def state_dict(self) -> dict:
        return {"step": self.step, "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.last_loss = float(state.get("last_loss", float("nan")))


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints (``checkpoint-NNNNNNN``), oldest first; ``.tmp`` leftovers are ignored."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def find_checkpoint(out: Path, resume: str) -> Path:
    if resume == "latest":
        found = checkpoint_dirs(out)
        if not found:
            raise MultiEditError(f"--resume latest: {Path(out) / 'checkpoints'} holds no checkpoint; start without --resume.")
        return found[-1]
    path = Path(resume)
    if not path.is_dir():
        raise MultiEditError(f"--resume {resume}: no such checkpoint folder; pass `latest` or a checkpoint-N folder.")
    return path


def prune_checkpoints(out: Path, limit: int | None) -> None:
    if not limit:
        return
    for old in checkpoint_dirs(out)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)
