"""Write ShapesWorld edit pairs in our dataset format (Parquet shards; see ``multiedit.dataset_io``).

Example ``i`` of task ``t`` in split ``s`` is drawn from ``random.Random("{seed}/{s}/{t}/{i}")``, so
any example can be regenerated alone, the train and test splits never share a draw, and phrasings
come from the split's own (disjoint) template list. Shards are written atomically and a rerun skips
finished shards, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import PIL.Image

from ...errors import MultiEditError
from .edits import ALL_TASK_OPS, apply_edit, sample_edit
from .phrasings import SPLITS, phrase
from .world import MAX_SIZE, MIN_SIZE, SIZE, random_scene, render

log = logging.getLogger(__name__)
SHARD_ROWS = 500


def make_example(task: str, index: int, seed: int = 0, split: str = "train", size: int = SIZE,
                 phrasing: str | None = None) -> dict:
    """One dataset row: PIL ``input_image``/``edited_image``/``mask`` (L, 255 = edited region), ``edit_prompt``,
    ``task``, captions, and ``scene``/``edit`` (JSON) so the benchmark can recompute the exact answer.

    ``split`` draws the scene, the edit and (unless ``phrasing`` names the other split's templates) the
    wording; the same scene and edit come back whatever ``phrasing`` is."""
    _check_task(task)
    _check_split(split)
    _check_size(size)
    rng = random.Random(f"{seed}/{split}/{task}/{index}")
    while True:  # a scene that admits no edit of this task (e.g. add on a full grid) is redrawn
        scene = random_scene(rng, size=size)
        spec = sample_edit(task, scene, rng)
        if spec is not None:
            break
    result = apply_edit(scene, spec)
    return {
        "input_image": PIL.Image.fromarray(render(scene)),
        "edited_image": PIL.Image.fromarray(result.image),
        "mask": PIL.Image.fromarray(result.mask.astype("uint8") * 255, mode="L"),
        "edit_prompt": phrase(spec.op, spec.slots(), phrasing or split, rng),
        "task": task,
        "input_caption": scene.caption(),
        "output_caption": result.caption,
        "op": spec.op,
        "scene": scene.to_json(),
        "edit": json.dumps(spec.params, sort_keys=True),
        "split": split,
        "seed": seed,
        "index": index,
    }


def write_shapes_dataset(out: str | Path, tasks: str | list[str], n: int | dict[str, int], seed: int = 0,
                         split: str = "train", size: int = SIZE, shard_rows: int = SHARD_ROWS,
                         progress: bool = True) -> Path:
    """Write ``n`` examples per task in ``tasks`` (or ``n[task]`` for each, given a mapping) to
    ``out/{split}-{task}-{k:05d}.parquet``; returns ``out``. A task's first ``n`` examples are the same whatever
    ``n`` is.

    Finished shards are kept (a rerun resumes); every shard is written atomically. ``out/shapes.json``
    records the settings each task was written with, so a rerun with other settings is refused rather
    than mixed with the old shards. A task named twice is written once. Every argument is checked before
    ``out`` is created.
    """
    from tqdm.auto import tqdm

    from ...dataset_io import write_shard

    tasks = list(dict.fromkeys([tasks] if isinstance(tasks, str) else tasks))
    if not tasks:
        raise MultiEditError("No task given; pass --task with one or more of " f"{sorted(ALL_TASK_OPS)}.")
    for t in tasks:  # all of them before the first shard is written
        _check_task(t)
    counts = dict.fromkeys(tasks, n) if isinstance(n, int) else {t: n.get(t) for t in tasks}
    for t, c in counts.items():
        if c is None:
            raise MultiEditError(f"No example count for task {t!r}; give n a value for every task in tasks.")
        if c < 1:
            which = "" if isinstance(n, int) else f" for task {t!r}"
            raise MultiEditError(f"-n {c}{which}: ask for at least one example per task.")
    _check_split(split)
    _check_size(size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, counts, seed, split, size)
    jobs = [(t, k, start) for t, c in counts.items() for k, start in enumerate(range(0, c, shard_rows))]
    skipped = 0
    bar = tqdm(total=sum(counts.values()), desc="shapes", unit="pair", disable=not progress)
    for task, k, start in jobs:
        path = out / f"{split}-{task}-{k:05d}.parquet"
        count = min(shard_rows, counts[task] - start)
        if path.is_file():
            skipped += 1
        else:
            rows = [make_example(task, i, seed, split, size) for i in range(start, start + count)]
            write_shard(rows, path)
        bar.update(count)
    bar.close()
    if skipped:
        log.info("kept %d finished shard(s) in %s", skipped, out)
    return out


def _check_task(task: str) -> None:
    if task not in ALL_TASK_OPS:
        raise MultiEditError(f"ShapesWorld has no task {task!r}; choose from {sorted(ALL_TASK_OPS)}.")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise MultiEditError(f"split={split!r}; use one of {list(SPLITS)}.")


def _check_size(size: int) -> None:
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise MultiEditError(f"--size {size}: ShapesWorld draws every shape faithfully from {MIN_SIZE} to {MAX_SIZE} "
                             f"pixels a side; pass a size in that range (default {SIZE}).")


def _check_settings(out: Path, counts: dict[str, int], seed: int, split: str, size: int) -> None:
    """Refuse to resume ``out`` with settings other than those its shards were written with; record ours."""
    from ...io_utils import atomic_file

    path = out / "shapes.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    mine = {f"{split}-{t}": {"n": c, "seed": seed, "size": size} for t, c in counts.items()}
    for key, settings in mine.items():
        old = recorded.get(key)
        if old is not None and old != settings:
            diff = ", ".join(f"{k} {old[k]} (now {settings[k]})" for k in settings if old.get(k) != settings[k])
            raise MultiEditError(f"{out} already holds ShapesWorld {key} pairs written with {diff}; "
                                 "rerun with the same settings to resume, or pass another --out.")
    recorded.update(mine)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True))
