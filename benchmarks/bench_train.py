"""Training throughput with the latent/text cache (--cache-latents) vs encoding every step (diffusers' way).

Same model (tiny zoo pipeline), data (synthetic pairs) and settings, in one run. Steady-state samples
per second come from the difference of two run lengths (so start-up and the one-off cache build
cancel out); the cache build time is printed separately. Target: cache >= 1.3x. Peak memory of each
mode is measured in a fresh process.

    python benchmarks/bench_train.py [--resolution 128 --batch-size 4 --steps 12]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import peak_rss_mib, zoo_dir


def run(root: Path, data: Path, out: Path, steps: int, cache: bool, args) -> float:
    from multiedit.training import TrainConfig, train

    cfg = TrainConfig(model=str(root / "pipeline"), dataset=str(data), out=str(out), resolution=args.resolution,
                      max_steps=steps, batch_size=args.batch_size, cache_latents=cache, cache_variants=2,
                      checkpointing_steps=10_000, num_validation_samples=0, report_to="none", seed=0)
    t = time.perf_counter()
    train(cfg)
    return time.perf_counter() - t


def run_in_child(root, data, out, steps, cache, args):
    torch.set_num_threads(args.threads)
    run(root, data, out, steps, cache, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging

    from multiedit.testing.data import write_synthetic_dataset

    logging.disable_progress_bar()
    root = zoo_dir()
    tmp = Path(tempfile.mkdtemp())
    data = write_synthetic_dataset(tmp / "data", n=args.rows, size=args.resolution)
    short = 2
    results = {}
    for cache in (False, True):
        t_short = run(root, data, tmp / f"s{cache}", short, cache, args)
        t_long = run(root, data, tmp / f"l{cache}", short + args.steps, cache, args)
        per_step = (t_long - t_short) / args.steps
        results[cache] = (args.batch_size / per_step, t_short)
    mem = {c: peak_rss_mib(run_in_child, root, data, tmp / f"m{c}", 4, c, args) for c in (False, True)}
    enc, cached = results[False][0], results[True][0]
    print(f"training throughput, tiny zoo pipeline, {args.resolution}px, batch {args.batch_size}, "
          f"{args.rows} rows, {args.threads} thread(s), CPU")
    print(f"  encode every step : {enc:7.2f} samples/s   peak RSS {mem[False]:7.1f} MiB")
    print(f"  --cache-latents   : {cached:7.2f} samples/s   peak RSS {mem[True]:7.1f} MiB   "
          f"(2-step run incl. cache build: {results[True][1]:.1f} s vs {results[False][1]:.1f} s)")
    print(f"  speed-up with cache: {cached / enc:.2f}x   (target >= 1.3x)")


if __name__ == "__main__":
    main()
