"""Our dataset format on disk: a folder of Parquet shards readable by ``datasets.load_dataset("parquet")``.

Columns: ``input_image`` and ``edited_image`` (datasets ``Image`` cells), ``edit_prompt``, ``task``,
``input_caption``, ``output_caption``, optional ``mask`` (Image), scores and generation parameters.
"""

from __future__ import annotations

import io
from pathlib import Path

import PIL.Image

from .io_utils import atomic_file

IMAGE_COLUMNS = ("input_image", "edited_image", "mask")


def encode_png(img: PIL.Image.Image) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_shard(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` (dicts; PIL images in the image columns) as one Parquet shard, atomically."""
    import datasets

    if not rows:
        raise ValueError("write_shard needs at least one row")
    data = {k: [r.get(k) for r in rows] for k in rows[0]}
    features = {}
    for k, values in data.items():
        if k in IMAGE_COLUMNS or isinstance(values[0], PIL.Image.Image):
            data[k] = [encode_png(v) if isinstance(v, PIL.Image.Image) else v for v in values]
            features[k] = datasets.Image()
    ds = datasets.Dataset.from_dict(data)
    ds = ds.cast(datasets.Features({**ds.features, **features}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        ds.to_parquet(str(tmp))
    return path
