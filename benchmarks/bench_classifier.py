"""Task classifier throughput: instructions per second batched vs one at a time.

    python benchmarks/bench_classifier.py [--n 256] [--batch-size 64] [--threads N]

Both ways run side by side in one process on the zoo's tiny Flan-T5 (``classifier-base``) with a
head over the registry's tasks, on augmented registry instructions; the ratio is what matters, the
absolute rates depend on the machine. ``time_predict_single`` is the classifier's cost inside one
``edit`` call (one instruction), for comparing against an edit's wall time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build_bench_classifier(folder: str | Path):
    """Write the zoo base under ``folder`` and return ``(model, tokenizer)`` with the registry's labels.

    The head is untrained (the compute is the same as a trained one's); it goes through
    ``save_pretrained`` / ``load_classifier`` so the loading path is the real one.
    """
    from multiedit.classifier import load_base, load_classifier
    from multiedit.classifier.data import classifier_labels
    from multiedit.testing import build_zoo

    folder = Path(folder)
    base = build_zoo(folder / "zoo", parts=["classifier-base"])["classifier-base"]
    model, tokenizer = load_base(base, classifier_labels())
    model.save_pretrained(folder / "classifier")
    tokenizer.save_pretrained(folder / "classifier")
    return load_classifier(folder / "classifier")


def time_predict_single(model, tokenizer, instruction: str = "make it snow", repeats: int = 20) -> float:
    """Median seconds to classify one instruction (what ``edit`` without ``--task`` pays once)."""
    from multiedit.classifier import predict_tasks

    predict_tasks(model, tokenizer, [instruction])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_tasks(model, tokenizer, [instruction])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, tokenizer, instructions: list[str], batch_size: int, repeats: int = 3) -> dict:
    """Best-of-``repeats`` instructions/second for batched and one-at-a-time prediction."""
    from multiedit.classifier import predict_tasks

    predict_tasks(model, tokenizer, instructions[:batch_size], batch_size=batch_size)  # warm-up

    def best(fn) -> float:
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return min(runs)

    t_batched = best(lambda: predict_tasks(model, tokenizer, instructions, batch_size=batch_size))
    t_single = best(lambda: [predict_tasks(model, tokenizer, [x], batch_size=1) for x in instructions])
    n = len(instructions)
    return {
        "instructions": n,
        "batched_per_s": n / t_batched,
        "single_per_s": n / t_single,
        "speedup": t_single / t_batched,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="Instructions to classify (default 256).")
    parser.add_argument("--batch-size", type=int, default=64, help="Batch size of the batched run (default 64).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--edit-steps", type=int, default=20, help="Denoising steps of the timed edit (default 20).")
    args = parser.parse_args(argv)

    import torch

    from multiedit.classifier.data import registry_instructions

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = registry_instructions(per_task=max(1, args.n // 12 + 1), seed=0)
    instructions = [text for text, _ in rows][: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = build_bench_classifier(tmp)
        result = measure(model, tokenizer, instructions, args.batch_size)
        single = time_predict_single(model, tokenizer)
        edit_time, classify_time = classifier_share_of_edit(Path(tmp), model, tokenizer, args.edit_steps)
    print(
        f"task classifier (zoo classifier-base, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"{torch.get_num_threads()} threads), {result['instructions']} registry instructions"
    )
    print(f"  batched (batch {args.batch_size}): {result['batched_per_s']:9.1f} instructions/s")
    print(f"  one at a time:       {result['single_per_s']:9.1f} instructions/s")
    print(f"  batched / one at a time: {result['speedup']:.1f}x")
    print(f"  one instruction (as in one edit): {single * 1e3:.2f} ms")
    print(f"  one edit with task=None ({args.edit_steps} steps, tiny zoo pipeline, 64x64): {edit_time * 1e3:.1f} ms, "
          f"of which the classifier {classify_time * 1e3:.2f} ms = {classify_time / edit_time:.1%}   (target < 5%)")
    return 0


def classifier_share_of_edit(tmp: Path, model, tokenizer, steps: int) -> tuple[float, float]:
    """Wall time of one ``task=None`` edit with the tiny zoo pipeline, and the classifier's part of it."""
    import time

    import numpy as np
    import PIL.Image
    import torch
    from diffusers.utils import logging

    import multiedit.classifier as clf
    from multiedit import MultiEditPipeline
    from multiedit.testing import build_zoo

    logging.disable_progress_bar()
    pipe = MultiEditPipeline.from_pretrained(build_zoo(tmp / "zoo", parts=["pipeline"])["pipeline"])
    pipe.set_progress_bar_config(disable=True)
    pipe.attach_classifier(model, tokenizer)
    spent = [0.0]
    real = clf.predict_tasks

    def timed(*a, **k):
        t = time.perf_counter()
        out = real(*a, **k)
        spent[0] += time.perf_counter() - t
        return out

    clf.predict_tasks = timed
    img = PIL.Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    try:
        pipe("make it snow", img, task=None, num_inference_steps=2)  # warm-up
        spent[0] = 0.0
        t = time.perf_counter()
        pipe("make it snow", img, task=None, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        total = time.perf_counter() - t
    finally:
        clf.predict_tasks = real
    return total, spent[0]


if __name__ == "__main__":
    raise SystemExit(main())
