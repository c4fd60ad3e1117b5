"""Shared helpers for the benchmark scripts: peak memory of a child process, medians, tiny-zoo set-up."""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import tempfile
from pathlib import Path


def _child(fn, args, queue):
    fn(*args)
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux reports KiB)


def peak_rss_mib(fn, *args) -> float:
    """Run ``fn(*args)`` in a fresh spawned process and return its peak resident memory in MiB."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def median(xs) -> float:
    return statistics.median(xs)


def zoo_dir() -> Path:
    from multiedit.testing import build_zoo

    root = Path(tempfile.gettempdir()) / "multiedit-bench-zoo"
    build_zoo(root, parts=["ip2p", "pipeline"])
    return root
