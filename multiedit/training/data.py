"""Edit-pair datasets for training: loading, checks before training, and IP2P augmentation."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..errors import MultiEditError
from ..images import to_rgb
from ..io_utils import looks_local
from .config import AUGMENT_MODES

log = logging.getLogger(__name__)


def load_edit_dataset(source: str, split: str = "train"):
    """Load our Parquet dataset folder, a ``save_to_disk`` folder, a local dataset, or a hub dataset by name."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[split]
                return ds
            if any(path.rglob("*.parquet")):
                files = sorted(str(p) for p in path.rglob("*.parquet") if not p.name.startswith("."))
                return datasets.load_dataset("parquet", data_files={"train": files}, split="train")
            return datasets.load_dataset(str(path), split=split)
        if looks_local(source):
            what = "is a file, not a folder" if path.exists() else "does not exist"
            raise MultiEditError(f"Dataset {source} {what}; pass a dataset folder or a Hugging Face dataset name.")
        return datasets.load_dataset(source, split=split)
    except MultiEditError:
        raise
    except Exception as exc:
        local = "" if path.exists() else "; there is no local folder of that name either"
        raise MultiEditError(f"Could not load dataset {source!r} ({type(exc).__name__}: {exc}){local}.") from None


def decode_image(value, where: str) -> PIL.Image.Image:
    """An RGB image from a datasets Image cell (PIL, {'bytes','path'} dict, bytes or a path)."""
    try:
        if isinstance(value, PIL.Image.Image):
            img = value
        elif isinstance(value, dict):
            img = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        elif isinstance(value, (bytes, bytearray)):
            img = PIL.Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            img = PIL.Image.open(value)
        else:
            raise TypeError(f"unsupported cell type {type(value).__name__}")
        img.load()
        return to_rgb(img)
    except PIL.UnidentifiedImageError:
        raise MultiEditError(f"{where} is not an image PIL can decode; fix or drop that row.") from None
    except Exception as exc:
        raise MultiEditError(f"{where} is not a readable image ({exc}); fix or drop that row.") from None


class EditPairs(torch.utils.data.Dataset):
    """Rows of (source image, edited image, instruction, task id) with IP2P augmentation.

    Augmentation (Brooks et al. §3.2 / diffusers' train_instruct_pix2pix): resize the shorter side to
    a random size in [res, res·9/8], random crop to res×res, random horizontal flip — the same draw
    for both images. The draw for (epoch, row) is seeded by ``seed``, so a resumed run sees exactly
    the same crops as an uninterrupted one.

    Items: ``input_pixels``/``edited_pixels`` float (3, res, res) in [-1, 1], ``prompt`` str,
    ``task_id`` long, ``index`` int.
    """

    def __init__(self, hf_dataset, columns: dict, task_ids: list[int], resolution: int, random_flip: bool = True,
                 seed: int = 0, augment: str = "ip2p"):
        self.ds = hf_dataset
        self.columns = columns
        self.task_ids = task_ids
        # rows grouped for the task loss balance: by task unless build_dataset sets a --loss-group-column
        self.group_ids, self.group_names = task_ids, None
        self.resolution = resolution
        self.random_flip = random_flip
        self.seed = seed
        if augment not in AUGMENT_MODES:
            raise ValueError(f"augment={augment!r}; use one of {AUGMENT_MODES}.")
        self.augment_mode = augment  # "ip2p", or "none": resize to res x res, no crop, no flip
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def augment(self, images: list[PIL.Image.Image], rng: random.Random) -> list[torch.Tensor]:
        res = self.resolution
        if self.augment_mode == "none":
            return [_to_tensor(img if img.size == (res, res) else img.resize((res, res), PIL.Image.BICUBIC))
                    for img in images]
        size = rng.randint(res, res * 9 // 8)
        w, h = images[0].size
        scale = size / min(w, h)
        nw, nh = max(res, round(w * scale)), max(res, round(h * scale))
        left, top = rng.randint(0, nw - res), rng.randint(0, nh - res)
        flip = self.random_flip and rng.random() < 0.5
        out = []
        for img in images:
            img = img.resize((nw, nh), PIL.Image.BICUBIC).crop((left, top, left + res, top + res))
            if flip:
                img = img.transpose(PIL.Image.FLIP_LEFT_RIGHT)
            out.append(_to_tensor(img))
        return out

    def load_pair(self, index: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
        row = self.ds[int(index)]
        src = decode_image(row[self.columns["input"]], f"Row {index}, column {self.columns['input']!r}")
        tgt = decode_image(row[self.columns["edited"]], f"Row {index}, column {self.columns['edited']!r}")
        if tgt.size != src.size:
            tgt = tgt.resize(src.size, PIL.Image.BICUBIC)
        return src, tgt

    def item(self, index: int, variant: int) -> dict:
        """Row ``index`` under augmentation draw ``variant``."""
        src, tgt = self.load_pair(index)
        rng = random.Random(hash((self.seed, variant, int(index))))
        src_t, tgt_t = self.augment([src, tgt], rng)
        return {
            "input_pixels": src_t,
            "edited_pixels": tgt_t,
            "prompt": self.ds[int(index)][self.columns["prompt"]],
            "task_id": torch.tensor(self.task_ids[int(index)]),
            "index": int(index),
        }

    def __getitem__(self, index: int) -> dict:
        return self.item(index, self.epoch)


def _to_tensor(img: PIL.Image.Image) -> torch.Tensor:
    """(3, H, W) float in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return arr.permute(2, 0, 1).contiguous()


def resolve_columns(ds, cfg) -> dict:
    """Map roles to column names; a missing column fails with the available names and the flag to use."""
    wanted = {
        "input": (cfg.input_image_column, "--input-image-column"),
        "edited": (cfg.edited_image_column, "--edited-image-column"),
        "prompt": (cfg.edit_prompt_column, "--edit-prompt-column"),
    }
    cols = {}
    for role, (name, flag) in wanted.items():
        if name not in ds.column_names:
            raise MultiEditError(
                f"Dataset {cfg.dataset} has no column {name!r} (columns: {ds.column_names}); pass {flag}."
            )
        cols[role] = name
    if cfg.task_column in ds.column_names:
        cols["task"] = cfg.task_column
    elif cfg.default_task is None:
        raise MultiEditError(
            f"Dataset {cfg.dataset} has no task column {cfg.task_column!r} (columns: {ds.column_names}); "
            "pass --task-column, or --default-task for a single-task dataset."
        )
    return cols


def task_ids_for(ds, cols: dict, task_names: list[str], default_task: str | None, source: str) -> list[int]:
    """Task id of every row; an unknown task name fails with the row and the model's task names."""
    lookup = {n: i for i, n in enumerate(task_names)}
    if default_task is not None and default_task not in lookup:
        raise MultiEditError(f"--default-task {default_task!r} is not a task of this model: {task_names}.")
    values = ds[cols["task"]] if "task" in cols else [None] * len(ds)
    ids = []
    for row, name in enumerate(values):
        name = name if name not in (None, "") else default_task
        if name not in lookup:
            raise MultiEditError(
                f"Dataset {source}, row {row}: task {name!r} is not a task of this model ({task_names}); "
                "fix the row, or add the task with `multiedit invert-task` / `multiedit init --tasks`."
            )
        ids.append(lookup[name])
    return ids


def loss_groups(ds, column: str, source: str) -> tuple[list[int], list[str]]:
    """(group id of every row, group names in sorted order) from ``column``; a missing column or an empty cell
    fails with the flag or the row."""
    if column not in ds.column_names:
        raise MultiEditError(f"Dataset {source} has no column {column!r} for --loss-group-column "
                             f"(columns: {ds.column_names}).")
    values = ds[column]
    for row, value in enumerate(values):
        if value in (None, ""):
            raise MultiEditError(f"Dataset {source}, row {row}: the --loss-group-column {column!r} is empty; give "
                                 "every row a group.")
    names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    return [lookup[str(v)] for v in values], names


def check_rows(dataset: EditPairs) -> None:
    """Decode every image and check every instruction before training starts (fail early, with the row)."""
    from tqdm.auto import tqdm

    prompts = dataset.ds[dataset.columns["prompt"]]
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise MultiEditError(f"Row {i}: the instruction ({dataset.columns['prompt']!r}) is empty; fix or drop the row.")
    for i in tqdm(range(len(dataset)), desc="checking images", unit="row", leave=False, disable=None):
        dataset.load_pair(i)


def build_dataset(cfg, task_names: list[str]) -> EditPairs:
    ds = load_edit_dataset(cfg.dataset, cfg.dataset_split)
    if cfg.max_samples:
        ds = ds.select(range(min(cfg.max_samples, len(ds))))
    if len(ds) == 0:
        raise MultiEditError(f"Dataset {cfg.dataset} has no rows.")
    cols = resolve_columns(ds, cfg)
    ids = task_ids_for(ds, cols, task_names, cfg.default_task, cfg.dataset)
    # Decode images lazily from here on (datasets' Image feature would decode every cell on access).
    import datasets

    for key in ("input", "edited"):
        feat = ds.features.get(cols[key])
        if isinstance(feat, datasets.Image):
            ds = ds.cast_column(cols[key], datasets.Image(decode=False))
    pairs = EditPairs(ds, cols, ids, cfg.resolution, cfg.random_flip, cfg.seed, augment=cfg.augment)
    if cfg.loss_group_column is not None:
        pairs.group_ids, pairs.group_names = loss_groups(ds, cfg.loss_group_column, cfg.dataset)
    check_rows(pairs)
    counts = {task_names[t]: ids.count(t) for t in sorted(set(ids))}
    log.info("dataset %s: %d rows; tasks %s", cfg.dataset, len(ds), counts)
    return pairs


def collate(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}
    out["prompt"] = [it["prompt"] for it in items]
    out["index"] = torch.tensor([it["index"] for it in items])
    return out
