"""MultiEditPipeline vs diffusers' StableDiffusionInstructPix2PixPipeline, same components and steps.

Prints the wall-time ratio ours/diffusers (target <= 1.05), the share of our edit time spent inside
UNet forward passes (target >= 90%), and each pipeline's peak memory (a fresh process each).
The tiny zoo models are used (CPU, no hub); a 256x256 image keeps the UNet the dominant cost, as
it is with real models.

    python benchmarks/bench_edit.py [--steps 20 --size 256 --repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import PIL.Image
import torch
from _common import median, peak_rss_mib, zoo_dir


def load(kind: str, root):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.utils import logging

    from multiedit import MultiEditPipeline

    logging.disable_progress_bar()
    if kind == "ours":
        pipe = MultiEditPipeline.from_base(root / "ip2p")
    else:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(root / "ip2p", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit(pipe, kind, image, steps):
    kw = {"task": "global"} if kind == "ours" else {}
    return pipe("make it snow", image, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np", **kw)


def run_once(kind, root, size, steps, threads):
    torch.set_num_threads(threads)
    pipe = load(kind, root)
    img = PIL.Image.fromarray((np.random.RandomState(0).rand(size, size, 3) * 255).astype(np.uint8))
    edit(pipe, kind, img, steps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = zoo_dir()
    img = PIL.Image.fromarray((np.random.RandomState(0).rand(args.size, args.size, 3) * 255).astype(np.uint8))
    pipes = {k: load(k, root) for k in ("ours", "diffusers")}
    for k, p in pipes.items():  # warm-up
        edit(p, k, img, 2)
    times = {k: [] for k in pipes}
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for k, p in pipes.items():
            t = time.perf_counter()
            edit(p, k, img, args.steps)
            times[k].append(time.perf_counter() - t)

    unet_time = [0.0]
    starts = []
    unet = pipes["ours"].unet
    unet.register_forward_pre_hook(lambda *a: starts.append(time.perf_counter()))
    unet.register_forward_hook(lambda *a: unet_time.__setitem__(0, unet_time[0] + time.perf_counter() - starts.pop()))
    t = time.perf_counter()
    edit(pipes["ours"], "ours", img, args.steps)
    total = time.perf_counter() - t

    ours, theirs = median(times["ours"]), median(times["diffusers"])
    mem = {k: peak_rss_mib(run_once, k, root, args.size, args.steps, args.threads) for k in pipes}
    print(f"edit of a {args.size}x{args.size} image, {args.steps} steps, tiny zoo models, CPU, {args.repeats} repeats")
    print(f"  MultiEditPipeline   median {ours * 1000:8.1f} ms   peak RSS {mem['ours']:7.1f} MiB")
    print(f"  diffusers IP2P      median {theirs * 1000:8.1f} ms   peak RSS {mem['diffusers']:7.1f} MiB")
    print(f"  wall-time ratio ours/diffusers: {ours / theirs:.3f}   (target <= 1.05)")
    print(f"  share of edit time inside UNet forward passes: {unet_time[0] / total:.1%}   (target >= 90%)")


if __name__ == "__main__":
    main()
