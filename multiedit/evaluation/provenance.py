"""The settings behind ``OUT/predictions``: recorded before the first edit, checked on every rerun.

A rerun resumes only with the settings that made the edits already there. With any other generation
setting (or other data) it is refused, naming the setting and the fix: edits made with different settings
are never mixed in one report, nor reused under a report that names other settings, nor overwritten.
Options of the scoring alone (--clip, --dino, --captions, --limit, --batch-size, --examples, --device)
are not recorded: changing them reuses the edits.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MultiEditError
from ..io_utils import write_text_atomic
from .scoring import IMAGE_EXTS

RECORD = "settings.json"
FLAGS = {  # recorded key -> the eval flag that sets it
    "model": "--model", "task_embeddings": "--task-embedding", "data": "--data", "layout": "--layout",
    "model_weights_modified": "--model weights dated", "split": "--split", "task": "--task", "steps": "--steps", "seed": "--seed", "guidance_scale": "--guidance-scale",
    "image_guidance_scale": "--image-guidance-scale", "resolution": "--resolution", "alpha": "--alpha",
}


def _where(value) -> str:
    path = Path(str(value)).expanduser()
    return str(path.resolve()) if path.exists() else str(value)


def _weights_stamp(model) -> str | None:
    """When a local model folder's weights last changed: a model retrained into the same folder is another model."""
    path = Path(str(model)).expanduser() if model is not None else None
    if path is None or not path.is_dir():
        return None
    times = [f.stat().st_mtime_ns for f in path.rglob("*") if f.suffix in (".safetensors", ".bin") and f.is_file()]
    return str(max(times)) if times else None


def generation_settings(evalset, model, task_embeddings, task: str, steps: int, seed: int, guidance_scale: float,
                        image_guidance_scale: float, resolution: int | None, alpha: float) -> dict:
    """Everything that decides an edit's pixels (paths resolved, so ``zoo/m`` and ``./zoo/m/`` are the same)."""
    return {
        "model": _where(model) if model is not None else "(in-memory pipeline)",
        "model_weights_modified": _weights_stamp(model),
        "task_embeddings": sorted(_where(p) for p in task_embeddings),
        "data": _where(evalset.source), "layout": evalset.layout.name, "split": evalset.split, "task": task,
        "steps": int(steps), "seed": int(seed), "guidance_scale": float(guidance_scale),
        "image_guidance_scale": float(image_guidance_scale), "resolution": resolution, "alpha": float(alpha),
    }


def _has_edits(pred_dir: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTS for d in (pred_dir, pred_dir / "iterative") if d.is_dir()
               for p in d.iterdir())


def _show(key: str, value) -> str:
    if key == "model_weights_modified" and value is not None:
        from datetime import datetime, timezone

        value = datetime.fromtimestamp(int(value) / 1e9, timezone.utc).isoformat(timespec="seconds")
    if isinstance(value, list):
        value = " ".join(value) if value else "(none)"
    return f"{FLAGS[key]} {'(not set)' if value is None else value}"


def check_settings(pred_dir: str | Path, settings: dict) -> None:
    """Refuse to resume the edits in ``pred_dir`` with settings other than those recorded with them."""
    pred_dir = Path(pred_dir)
    if not _has_edits(pred_dir):
        return
    path = pred_dir / RECORD
    fix = f"pass a new --out, or delete {pred_dir} to edit again"
    if not path.is_file():
        raise MultiEditError(f"{pred_dir} holds edits but no {RECORD} naming the settings that made them "
                             f"(an older multiedit wrote them); {fix}.")
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise MultiEditError(f"Cannot read {path}, the record of how its edits were made ({exc}); {fix}.") from None
    differ = [k for k in FLAGS if old.get(k) != settings[k]]
    if differ:
        was = ", ".join(_show(k, old.get(k)) for k in differ)
        now = ", ".join(_show(k, settings[k]) for k in differ)
        raise MultiEditError(
            f"The edits in {pred_dir} were made with {was}, not {now}; pass a new --out to edit with the new settings, "
            f"or rerun with {was} to resume them."
        )


def record_settings(pred_dir: str | Path, settings: dict) -> None:
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(pred_dir / RECORD, json.dumps(settings, indent=2) + "\n")
