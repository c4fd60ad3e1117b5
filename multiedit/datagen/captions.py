"""Reading the input captions of datagen from a text file, JSONL, Parquet or a Hugging Face dataset.

Every caption gets a stable ``caption_id`` (a hash of its whitespace-normalized text), which keys
resuming and sharding: the same caption has the same id in every run, whatever its position in the
file. Duplicate captions are kept once, empty ones are skipped, and both are counted in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import MultiEditError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text", ".lst", ""}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


@dataclass(frozen=True)
class Caption:
    """An input caption and its stable id (16 hex digits)."""

    caption_id: str
    text: str


def caption_id(text: str) -> str:
    """Stable id of a caption: the first 16 hex digits of SHA-1 of its whitespace-normalized text."""
    return hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def read_captions(
    source: str | Path, *, column: str = "caption", split: str = "train", limit: int | None = None
) -> list[Caption]:
    """Read captions, in input order, de-duplicated, at most ``limit`` of them.

    ``source`` is one of: a text file (one caption per line); a JSONL file whose objects have a
    ``column`` field; a ``.parquet`` file or a folder of Parquet files with a ``column`` column; a
    folder written by ``datasets``' ``save_to_disk``; or a Hugging Face dataset name (``org/name``,
    loaded with ``datasets.load_dataset(name, split=split)``). A source without any caption, a ``limit``
    below 1 and a file that is not UTF-8 text are errors.
    """
    if limit is not None and limit < 1:
        raise MultiEditError(f"--limit is {limit}; it must be at least 1.")
    texts = _raw_texts(source, column, split)
    out: list[Caption] = []
    seen: set[str] = set()
    empty = dupes = 0
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            empty += 1
            continue
        text = " ".join(text.split())
        cid = caption_id(text)
        if cid in seen:
            dupes += 1
            continue
        seen.add(cid)
        out.append(Caption(cid, text))
        if limit is not None and len(out) >= limit:
            break
    if empty or dupes:
        logger.info("captions from %s: skipped %d empty and %d duplicate entries", source, empty, dupes)
    if not out:
        raise MultiEditError(f"Captions source {source} holds no captions (it is empty or every entry is blank); "
                             "pass one with at least one caption.")
    return out


def _raw_texts(source: str | Path, column: str, split: str) -> Iterable:
    path = Path(source)
    if path.is_dir():
        parquet = sorted(path.rglob("*.parquet"))
        if parquet:
            return _parquet_texts(parquet, column, path)
        if (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or (path / "state.json").exists()
        ):
            return _hf_texts(path, column, split, from_disk=True)
        raise MultiEditError(
            f"Caption folder {path} holds no Parquet files and no saved dataset; pass a text, JSONL or "
            "Parquet file, or a folder of Parquet shards."
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return _parquet_texts([path], column, path)
        if suffix in JSONL_SUFFIXES:
            return _jsonl_texts(path, column)
        return _text_lines(path)
    looks_like_file = path.suffix.lower() in (TEXT_SUFFIXES | JSONL_SUFFIXES | {".parquet", ".csv"}) - {""}
    if not looks_like_file and str(source).count("/") == 1 and not str(source).startswith((".", "/", "~")):
        return _hf_texts(str(source), column, split, from_disk=False)
    raise MultiEditError(
        f"Captions source {source} does not exist; pass a text/JSONL/Parquet file, a folder or a dataset name."
    )


def _utf8_lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError:
        raise MultiEditError(
            f"Captions file {path} is not UTF-8 text; pass a UTF-8 text file (one caption per line), JSONL or Parquet."
        ) from None


def _text_lines(path: Path) -> Iterator[str]:
    for line in _utf8_lines(path):
        yield line.strip()


def _jsonl_texts(path: Path, column: str) -> Iterator:
    bad = 0
    for lineno, line in enumerate(_utf8_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(row, dict) or column not in row:
            if lineno == 1:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise MultiEditError(
                    f"{path} line 1 has no `{column}` field (it has {keys}); pass --caption-column."
                )
            bad += 1
            continue
        yield row[column]
    if bad:
        logger.warning("%s: skipped %d malformed line(s) or line(s) without `%s`", path, bad, column)


def _parquet_texts(files: list[Path], column: str, where: Path) -> Iterator:
    import pyarrow.parquet as pq

    for file in files:
        names = pq.read_schema(file).names
        if column not in names:
            raise MultiEditError(f"{file} has no column `{column}` (columns: {names}); pass --caption-column.")
        pf = pq.ParquetFile(file)
        for batch in pf.iter_batches(columns=[column], batch_size=4096):
            yield from batch.column(0).to_pylist()


def _hf_texts(source, column: str, split: str, *, from_disk: bool) -> Iterator:
    from ..errors import require

    datasets = require("datasets", "datagen")
    try:
        ds = datasets.load_from_disk(str(source)) if from_disk else datasets.load_dataset(source, split=split)
    except Exception as exc:
        raise MultiEditError(f"Could not load the caption dataset {source} ({type(exc).__name__}: {exc}).") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise MultiEditError(f"Dataset {source} has no split {split!r} (splits: {list(ds)}); pass --caption-split.")
        ds = ds[split]
    if column not in ds.column_names:
        raise MultiEditError(
            f"Dataset {source} has no column `{column}` (columns: {ds.column_names}); pass --caption-column."
        )
    yield from ds[column]
