"""Task inversion vs full fine-tuning: steps per second and trainable parameters, same model and data.

Steady-state step rates come from the difference of two run lengths (start-up cancels out).

    python benchmarks/bench_invert.py [--resolution 64 --batch-size 4 --steps 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import zoo_dir


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging

    from multiedit import MultiEditPipeline
    from multiedit.inversion import InvertConfig, invert_task
    from multiedit.testing.data import write_synthetic_dataset
    from multiedit.training import TrainConfig, train

    logging.disable_progress_bar()
    root = zoo_dir()
    tmp = Path(tempfile.mkdtemp())
    data = write_synthetic_dataset(tmp / "data", n=8, size=args.resolution, tasks=("add",))

    def invert(steps, out):
        invert_task(InvertConfig(model=str(root / "pipeline"), examples=str(data), name="newtask", out=str(out),
                                 steps=steps, batch_size=args.batch_size, resolution=args.resolution,
                                 cache_variants=2, checkpoint_steps=10_000))

    def finetune(steps, out):
        train(TrainConfig(model=str(root / "pipeline"), dataset=str(data), out=str(out), resolution=args.resolution,
                          max_steps=steps, batch_size=args.batch_size, cache_latents=True, cache_variants=2,
                          checkpointing_steps=10_000, num_validation_samples=0, report_to="none"))

    rates = {}
    for name, fn in (("inversion", invert), ("full fine-tuning", finetune)):
        short = timed(lambda: fn(2, tmp / f"{name}-s"))
        long = timed(lambda: fn(2 + args.steps, tmp / f"{name}-l"))
        rates[name] = args.steps / (long - short)
    pipe = MultiEditPipeline.from_pretrained(root / "pipeline")
    full_params = sum(p.numel() for p in pipe.unet.parameters())
    inv_params = pipe.unet.class_embedding.embedding_dim
    print(f"tiny zoo pipeline, {args.resolution}px, batch {args.batch_size}, {args.threads} thread(s), CPU")
    print(f"  task inversion   : {rates['inversion']:6.2f} steps/s   trainable parameters {inv_params:>10,}")
    print(f"  full fine-tuning : {rates['full fine-tuning']:6.2f} steps/s   trainable parameters {full_params:>10,}")
    print(f"  inversion speed-up: {rates['inversion'] / rates['full fine-tuning']:.2f}x; "
          f"SD 1.5 sizes: 1,280 trainable vs ~860M")


if __name__ == "__main__":
    main()
