"""Datagen stages run alone: ground objects in given images (``datagen ground``) and score and filter
an existing pair dataset (``datagen filter``). ``datagen pairs`` is :func:`.engine.generate_dataset`
with ``apply_filters=False``; ``datagen instructions`` is :mod:`.instructions`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import MultiEditError
from ..images import load_image
from ..tasks import get_task
from .candidates import Candidate
from .engine import DatagenConfig, DatagenModels, DatagenSummary, score_and_select
from .filters import FILTER_ORDER
from .instructions import JsonlAppender, read_jsonl
from .writer import DatasetWriter

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "object"


def ground_images(
    images: str | Path, phrases: list[str], config: DatagenConfig, models: DatagenModels | None = None
) -> dict:
    """Ground ``phrases`` in every image of the folder (or the one file) ``images``.

    Writes, under ``config.out_dir``, ``<stem>.<phrase>.<variant>.png`` (8-bit masks, 255 = object)
    for every detected phrase and one line per image in ``masks.jsonl`` (boxes, scores, files, or
    the reason a phrase has no mask). Images already in ``masks.jsonl`` are skipped. The SAM image
    embedding is computed once per image for all phrases. Returns counts.
    """
    from tqdm.auto import tqdm

    src = Path(images)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if src.is_dir() else [src]
    if not files:
        raise MultiEditError(f"No images (PNG, JPEG, WebP, BMP) in {src}; pass a folder of images or one image file.")
    if not [p for p in phrases if p.strip()]:
        raise MultiEditError("Pass at least one object name with --objects.")
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = out / "masks.jsonl"
    done = {r.get("image") for r in read_jsonl(log)}
    models = models or DatagenModels(config)
    counts = {"images": len(files), "already_done": 0, "masks": 0, "no_detection": 0}
    with JsonlAppender(log) as appender:
        for path in tqdm(files, desc="masks", unit="image", disable=not config.progress):
            if str(path) in done:
                counts["already_done"] += 1
                continue
            image = load_image(path)
            entry = {"image": str(path), "objects": []}
            for g in models.grounder.ground(image, phrases):
                item = {"phrase": g.phrase, "boxes": g.detection.boxes.round(2).tolist(),
                        "scores": g.detection.scores.round(4).tolist(), "reason": g.reason, "files": {}}
                if g.masks is not None:
                    for name, m in g.masks.items():
                        target = out / f"{path.stem}.{_slug(g.phrase)}.{name}.png"
                        PIL.Image.fromarray((m * 255).round().astype(np.uint8), "L").save(target)
                        item["files"][name] = target.name
                    counts["masks"] += 1
                else:
                    counts["no_detection"] += 1
                entry["objects"].append(item)
            appender.write(entry)
    return counts


def _decode(cell) -> PIL.Image.Image:
    from ..training.data import decode_image

    return decode_image(cell, "a dataset image")


def _mask(cell) -> np.ndarray | None:
    """A stored 8-bit mask as ``(H, W)`` float32 in [0, 1], or ``None``."""
    return np.asarray(_decode(cell).convert("L"), dtype=np.float32) / 255 if cell else None


def filter_dataset(dataset: str, config: DatagenConfig, models: DatagenModels | None = None) -> DatagenSummary:
    """Score every candidate of a pair dataset and keep the best passing one per sample.

    ``dataset`` is anything ``multiedit train`` reads with columns ``input_image``,
    ``edited_image``, ``input_caption`` and ``output_caption`` (plus optional ``mask``, ``task``,
    ``sample_id``, ``edit_prompt``, ``original_object``, ``edited_object``). Rows sharing a
    ``sample_id`` are one sample's candidates (as ``datagen pairs`` writes them); without that
    column every row is its own sample. Rows without a task use ``config.task``. Output: the kept
    rows with every score filled in, written to ``config.out_dir`` like the full pipeline.
    """
    from tqdm.auto import tqdm

    from ..training.data import load_edit_dataset

    ds = load_edit_dataset(dataset)
    need = ["input_image", "edited_image", "input_caption", "output_caption"]
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise MultiEditError(f"Dataset {dataset} lacks column(s) {missing} (columns: {ds.column_names}); "
                             "`datagen filter` needs both images and both captions.")
    import datasets

    for column in ("input_image", "edited_image", "mask"):  # decode only what is used
        if column in ds.column_names:
            ds = ds.cast_column(column, datasets.Image(decode=False))
    groups: dict[str, list[int]] = {}
    ids = ds["sample_id"] if "sample_id" in ds.column_names else [None] * len(ds)
    for i, sid in enumerate(ids):
        groups.setdefault(sid if sid else f"row-{i:08d}", []).append(i)
    models = models or DatagenModels(config)
    summary = None
    with DatasetWriter(config.out_dir, config.num_shards, config.shard_index, rows_per_shard=config.rows_per_shard,
                       run_info={**config.to_dict(), "stage": "filter", "source": str(dataset)}) as writer:
        mine = {k: v for k, v in groups.items()
                if int(hashlib.sha1(k.encode()).hexdigest()[:8], 16) % config.num_shards == config.shard_index}
        done = writer.done()
        pending = [k for k in mine if k not in done]
        summary = DatagenSummary(config.task, len(mine), len(mine) - len(pending), out_dir=config.out_dir)
        summary.candidate_failures = dict.fromkeys(FILTER_ORDER, 0)
        for sid in tqdm(pending, desc="filter", unit="sample", disable=not config.progress):
            rows = [ds[i] for i in groups[sid]]
            task = get_task(rows[0].get("task") or config.task)
            th = config.thresholds(task)
            fields = ("input_caption", "output_caption", "original_object", "edited_object")
            record = {k: rows[0].get(k) or "" for k in fields}
            cands = [
                Candidate(_decode(r["input_image"]), _decode(r["edited_image"]), _mask(r.get("mask")),
                          str(r.get("mask_variant") or ""), int(r.get("seed") or 0))
                for r in rows
            ]
            best, scores, table = score_and_select(cands, record, models, th, task, summary, writer, sid)
            if best is None:
                continue
            s = scores[best]
            row = dict(rows[best])
            row.update(
                sample_id=sid, task=task.name, input_image=cands[best].input_image,
                edited_image=cands[best].edited_image, clip_direction=s.clip_direction, clip_image=s.clip_image,
                clip_output=s.clip_output, depth_l1=s.depth_l1,
                detector_found=-1 if s.detector_found is None else int(s.detector_found),
                detector_score=s.detector_score, candidate_scores=json.dumps(table), candidate_index=best,
                num_candidates=len(cands),
            )
            if "mask" in row:
                row["mask"] = _decode(row["mask"]).convert("L") if row["mask"] else None
            writer.add_kept(sid, [row])
            summary.kept += 1
    return summary
