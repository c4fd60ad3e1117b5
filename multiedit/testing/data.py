"""Small synthetic edit datasets in our Parquet format, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

from ..dataset_io import write_shard


def synthetic_pair(rng: np.random.RandomState, size: int, task: str) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A source with a coloured square and its edit (a learnable, task-dependent change)."""
    img = np.zeros((size, size, 3), dtype=np.uint8) + rng.randint(0, 255, size=3).astype(np.uint8)
    x, y, s = rng.randint(0, size // 2), rng.randint(0, size // 2), size // 3
    img[y : y + s, x : x + s] = rng.randint(0, 255, size=3)
    edit = img.copy()
    if task == "remove":
        edit[y : y + s, x : x + s] = img[0, 0]
    elif task == "global":
        edit = (img * 0.4).astype(np.uint8)
    else:
        edit[y : y + s, x : x + s] = 255 - img[y : y + s, x : x + s]
    return PIL.Image.fromarray(img), PIL.Image.fromarray(edit)


def write_synthetic_dataset(out: str | Path, n: int = 8, size: int = 32, tasks=("add", "remove", "global"),
                            seed: int = 0, shards: int = 1) -> Path:
    rng = np.random.RandomState(seed)
    prompts = {"add": "add a square", "remove": "remove the square", "global": "make it night"}
    rows = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        src, tgt = synthetic_pair(rng, size, task)
        rows.append({"input_image": src, "edited_image": tgt, "edit_prompt": prompts.get(task, f"do {task}"),
                     "task": task, "input_caption": "a square", "output_caption": f"a square, {task}"})
    out = Path(out)
    per = -(-n // shards)
    for k in range(shards):
        chunk = rows[k * per : (k + 1) * per]
        if chunk:
            write_shard(chunk, out / f"shard-{k:05d}.parquet")
    return out
