"""Checkpoint bookkeeping: the step counter that accelerate saves with the model, and the checkpoint folders."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import MultiEditError

log = logging.getLogger(__name__)

#: Beside accelerate's files in a checkpoint: the step counter and EMA settings (JSON), and the weights that
#: train outside ``accelerator.prepare`` (EMA shadow parameters, task tokens) as safetensors, never pickle.
EXTRA_STATE_NAME = "training_state.json"
EXTRA_WEIGHTS_NAME = "training_state.safetensors"


class TrainState:
    """The optimisation step (which fixes epoch and data position), saved in every checkpoint."""

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


@contextlib.contextmanager
def accelerate_view(ckpt: Path, workdir: Path):
    """``ckpt`` as ``accelerator.load_state`` should see it: without the custom-state pickles of the earlier layout
    (read by :func:`load_extra_state` instead, with ``weights_only=True``; accelerate would unpickle them fully
    and insists on one per registered object). The view is made in ``workdir`` (the run's output folder), so a
    checkpoint on read-only storage still resumes."""
    legacy = set(Path(ckpt).glob("custom_checkpoint_*.pkl"))
    if not legacy:
        yield Path(ckpt)
        return
    with tempfile.TemporaryDirectory(prefix=".resume-", dir=workdir) as tmp:
        for f in Path(ckpt).iterdir():
            if f not in legacy:
                (Path(tmp) / f.name).symlink_to(f.resolve())
        yield Path(tmp)


def save_extra_state(folder: Path, state: TrainState, ema=None, task_tokens=None) -> None:
    """Write ``state``, the EMA (diffusers ``EMAModel``) and the task tokens into checkpoint ``folder``."""
    tensors, meta = {}, {"train_state": state.state_dict()}
    if ema is not None:
        ema_state = ema.state_dict()
        for i, t in enumerate(ema_state.pop("shadow_params")):
            tensors[f"ema.shadow_params.{i}"] = t.detach().cpu().contiguous()
        meta["ema"] = ema_state
    if task_tokens is not None:
        for name, t in task_tokens.state_dict().items():
            tensors[f"task_tokens.{name}"] = t.detach().cpu().contiguous()
    save_file(tensors, str(Path(folder) / EXTRA_WEIGHTS_NAME))
    (Path(folder) / EXTRA_STATE_NAME).write_text(json.dumps(meta, indent=2))


def load_extra_state(folder: Path, state: TrainState, ema=None, task_tokens=None) -> None:
    """Restore what :func:`save_extra_state` wrote; a checkpoint of an earlier version kept the same objects as
    accelerate custom states (``custom_checkpoint_<i>.pkl``, in the order state, EMA, tokens), read here with
    ``weights_only=True``."""
    folder = Path(folder)
    if not (folder / EXTRA_STATE_NAME).is_file():
        objects = [obj for obj in (state, ema, task_tokens) if obj is not None]
        found = len(list(folder.glob("custom_checkpoint_*.pkl")))
        if found != len(objects):
            raise MultiEditError(f"Checkpoint {folder} holds {found} saved training object(s) and this run has "
                                 f"{len(objects)} (step{', EMA' if ema is not None else ''}"
                                 f"{', task tokens' if task_tokens is not None else ''}); resume with the settings "
                                 "it was made with (--use-ema, the same model).")
        for i, obj in enumerate(objects):
            path = folder / f"custom_checkpoint_{i}.pkl"
            obj.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return
    meta = json.loads((folder / EXTRA_STATE_NAME).read_text())
    tensors = load_file(str(folder / EXTRA_WEIGHTS_NAME))
    state.load_state_dict(meta["train_state"])
    for name, obj in (("ema", ema), ("task_tokens", task_tokens)):
        saved = name in meta if name == "ema" else any(k.startswith("task_tokens.") for k in tensors)
        if saved != (obj is not None):
            flag = "--use-ema" if name == "ema" else "task tokens"
            raise MultiEditError(f"Checkpoint {folder} was saved {'with' if saved else 'without'} {flag}, and this "
                                 f"run is {'without' if saved else 'with'}; resume with the same settings.")
    if ema is not None:
        n = sum(k.startswith("ema.shadow_params.") for k in tensors)
        ema.load_state_dict({**meta["ema"], "shadow_params": [tensors[f"ema.shadow_params.{i}"] for i in range(n)]})
    if task_tokens is not None:
        prefix = "task_tokens."
        task_tokens.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
