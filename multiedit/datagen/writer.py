"""Writing a datagen run to disk: Parquet shards, a dropped-samples log and a manifest; resumable.

Layout of ``out_dir`` (``TAG`` is empty for one shard, ``-00001-of-00004`` for shard 1 of 4)::

    data/data{TAG}-00000.parquet ...   the dataset: ``multiedit train --dataset out_dir`` or
                                       ``datasets.load_dataset("parquet", data_dir=out_dir/"data")``
    dropped{TAG}.jsonl                 one line per dropped sample: its id, reason and scores
    manifest{TAG}.json                 shards, row counts, kept/dropped counts, the run's settings
    .staging{TAG}/<sample_id>.row      finished samples not yet merged into a shard (hidden)

Every finished sample is on disk before the next one starts: a kept sample as a small staged
Parquet file (written atomically with :func:`multiedit.dataset_io.write_shard`), a dropped one as
a flushed JSON line. Every ``rows_per_shard`` samples, the staged files are merged into one shard
(atomic rename), then deleted. A run killed at any point therefore loses at most the sample in
progress, and a rerun (:meth:`DatasetWriter.done`) skips every sample found in a shard, in
staging or in the dropped log; staged files already merged (killed between the rename and the
deletion) are recognised by their id and removed, so no sample is written twice. Temporary files
start with ``.``, which both ``datasets`` and ``multiedit train`` ignore.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from ..dataset_io import write_shard
from ..io_utils import write_text_atomic
from .instructions import JsonlAppender, read_jsonl

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "multiedit-datagen/1"


def shard_tag(num_shards: int, shard_index: int) -> str:
    return "" if num_shards == 1 else f"-{shard_index:05d}-of-{num_shards:05d}"


class DatasetWriter:
    """One process's writer for one shard of a run (see the module docstring for the layout).

    Args:
        out_dir: the run folder.
        num_shards, shard_index: which shard this process writes.
        rows_per_shard: staged samples merged into one Parquet shard.
        run_info: JSON-serialisable settings recorded in the manifest.

    Holds an exclusive lock on its dropped log: a second process on the same shard fails at once.
    """

    def __init__(
        self,
        out_dir: str | Path,
        num_shards: int = 1,
        shard_index: int = 0,
        *,
        rows_per_shard: int = 256,
        run_info: dict | None = None,
    ):
        if rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
        self.out_dir = Path(out_dir)
        self.tag = shard_tag(num_shards, shard_index)
        self.data_dir = self.out_dir / "data"
        self.staging_dir = self.out_dir / f".staging{self.tag}"
        self.dropped_path = self.out_dir / f"dropped{self.tag}.jsonl"
        self.manifest_path = self.out_dir / f"manifest{self.tag}.json"
        self.rows_per_shard = rows_per_shard
        self.run_info = run_info or {}
        for d in (self.data_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._dropped = JsonlAppender(self.dropped_path)  # also the shard's lock
        self._shard_re = re.compile(rf"^data{re.escape(self.tag)}-(\d{{5}})\.parquet$")
        self._recover()

    # ------------------------------------------------------------------ resume
    def _shard_files(self) -> list[Path]:
        return sorted(p for p in self.data_dir.iterdir() if self._shard_re.match(p.name))

    def _recover(self) -> None:
        import pyarrow.parquet as pq

        for stale in [*self.data_dir.glob(f".data{self.tag}-*.tmp-*"), *self.staging_dir.glob(".*.tmp-*")]:
            logger.warning("removing %s, left by an interrupted run", stale)
            stale.unlink(missing_ok=True)
        self.shards: dict[str, int] = {}
        self.shard_ids: set[str] = set()
        for path in self._shard_files():
            ids = pq.read_table(path, columns=["sample_id"]).column("sample_id").to_pylist()
            self.shards[path.name] = len(ids)
            self.shard_ids.update(ids)
        self.staged: dict[str, Path] = {}
        for path in sorted(self.staging_dir.glob("*.row")):
            sid = path.name[: -len(".row")]
            if sid in self.shard_ids:  # merged before the run was killed: drop the copy
                path.unlink()
            else:
                self.staged[sid] = path
        self.dropped: dict[str, str] = {
            r["sample_id"]: r.get("reason", "") for r in read_jsonl(self.dropped_path) if "sample_id" in r
        }
        if self.staged:
            logger.info("resuming with %d staged sample(s) not yet in a shard", len(self.staged))

    def done(self) -> set[str]:
        """Ids of samples already finished (kept in a shard or staging, or dropped)."""
        return self.shard_ids | set(self.staged) | set(self.dropped)

    # ------------------------------------------------------------------ writing
    def add_kept(self, sample_id: str, rows: list[dict]) -> None:
        """Stage the rows of one finished sample (usually one row; the pairs stage writes one per
        candidate). Each row must have ``sample_id`` and the same columns and types as the others."""
        if sample_id in self.done():
            raise RuntimeError(f"sample {sample_id} is already written")
        path = self.staging_dir / f"{sample_id}.row"
        write_shard(rows, path)
        self.staged[sample_id] = path
        if len(self.staged) >= self.rows_per_shard:
            self.flush()

    def add_dropped(self, sample_id: str, reason: str, **info) -> None:
        """Record a dropped sample with its reason (and any scores) in the dropped log."""
        if sample_id in self.done():
            raise RuntimeError(f"sample {sample_id} is already written")
        self._dropped.write({"sample_id": sample_id, "reason": reason, **info})
        self.dropped[sample_id] = reason

    def flush(self) -> Path | None:
        """Merge every staged sample into a new shard; returns its path (``None`` if nothing staged)."""
        import pyarrow.parquet as pq

        if not self.staged:
            return None
        rows = []
        for path in self.staged.values():
            rows.extend(pq.read_table(path).to_pylist())
        numbers = [int(self._shard_re.match(p.name).group(1)) for p in self._shard_files()]
        target = self.data_dir / f"data{self.tag}-{(max(numbers) + 1 if numbers else 0):05d}.parquet"
        write_shard(rows, target)
        self.shards[target.name] = len(rows)
        self.shard_ids.update(r["sample_id"] for r in rows)
        for path in self.staged.values():
            path.unlink(missing_ok=True)
        self.staged.clear()
        self.write_manifest()
        return target

    def dropped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reason in self.dropped.values():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def write_manifest(self, extra: dict | None = None) -> None:
        manifest = {
            "format": MANIFEST_FORMAT,
            "shard": self.tag or "single",
            "data_dir": "data",
            "shards": [{"file": name, "rows": n} for name, n in sorted(self.shards.items())],
            "rows": sum(self.shards.values()),
            "kept_samples": len(self.shard_ids) + len(self.staged),
            "dropped_samples": len(self.dropped),
            "dropped_by_reason": self.dropped_by_reason(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run": self.run_info,
            **(extra or {}),
        }
        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")

    def close(self, extra: dict | None = None) -> None:
        """Merge what is staged, write the manifest and release the lock."""
        try:
            self.flush()
            self.write_manifest(extra)
        finally:
            self._dropped.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            logger.exception("could not merge the staged samples; the rerun will")  # keep the first error
            self._dropped.close()
