"""Sequential edit thresholding for multi-turn editing (Emu Edit §3.3).

After each turn, a pixel whose low-pass-filtered L1 change from the previous image is below ``alpha``
keeps its previous value; small drifts then never accumulate over turns.
"""

from __future__ import annotations

import numpy as np
import PIL.Image


def change_map(previous: np.ndarray, edited: np.ndarray, blur_sigma: float = 2.0) -> np.ndarray:
    """Low-pass-filtered per-pixel L1 change. Inputs: HWC float arrays in [0, 1]; output: HW in [0, 1]."""
    diff = np.abs(edited.astype(np.float32) - previous.astype(np.float32)).mean(axis=-1)
    return gaussian_blur(diff, blur_sigma) if blur_sigma > 0 else diff


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian low-pass filter of an HW array (reflect padding, kernel radius 3σ)."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(x, r, mode="reflect")
    rows = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, pad)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, rows).astype(np.float32)


def sequential_threshold(
    previous: PIL.Image.Image, edited: PIL.Image.Image, alpha: float = 0.03, blur_sigma: float = 2.0
) -> PIL.Image.Image:
    """Keep ``previous``'s pixels wherever the filtered change is below ``alpha`` (images of equal size)."""
    if previous.size != edited.size:
        raise ValueError(f"Image sizes differ: {previous.size} vs {edited.size}.")
    prev = np.asarray(previous.convert("RGB"), dtype=np.float32) / 255.0
    new = np.asarray(edited.convert("RGB"), dtype=np.float32) / 255.0
    keep_new = change_map(prev, new, blur_sigma) >= alpha
    out = np.where(keep_new[..., None], new, prev)
    return PIL.Image.fromarray(np.round(out * 255.0).astype(np.uint8))
