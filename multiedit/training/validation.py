"""Validation edits during training, saved as an image grid (source | target | edit per row)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch


def _to_pil(pixels: torch.Tensor) -> PIL.Image.Image:
    arr = ((pixels.permute(1, 2, 0).float().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    return PIL.Image.fromarray(arr)


@torch.no_grad()
def save_validation(pipe, unet, ema, params, dataset, cfg, out: Path, step: int, accelerator=None) -> Path | None:
    """Edit the first rows with the current (EMA) weights; ``params`` in the EMA's order."""
    n = min(cfg.num_validation_samples, len(dataset))
    if n == 0:
        return None
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    was_training = unet.training
    saved_unet = pipe.unet
    pipe.unet = unet.eval()
    pipe.set_progress_bar_config(disable=True)
    rows = []
    try:
        for i in range(n):
            item = dataset.item(i, 0)
            src, tgt = _to_pil(item["input_pixels"]), _to_pil(item["edited_pixels"])
            edit = pipe(item["prompt"], src, task=int(item["task_id"]), num_inference_steps=cfg.validation_inference_steps,
                        generator=torch.Generator().manual_seed(cfg.seed + i)).images[0]
            rows.append([src, tgt, edit])
    finally:
        pipe.unet = saved_unet
        unet.train(was_training)
        if ema is not None:
            ema.restore(params)
    w, h = rows[0][0].size
    grid = PIL.Image.new("RGB", (3 * w, n * h), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img, (c * w, r * h))
    path = Path(out) / "validation" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    if accelerator is not None:
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    return path
