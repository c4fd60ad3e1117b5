"""The standard instruction-editing metrics, as pure functions of tensors.

Two protocols share these functions:

* **Emu Edit** (Sheynin et al. 2024, §5; no ground truth): ``CLIPdir`` = :func:`clip_direction_similarity`
  (image-embedding change vs caption-embedding change, the InstructPix2Pix "directional CLIP
  similarity", Brooks et al. 2023 §4), ``CLIPim`` and ``DINO`` = :func:`cosine_similarity` of the input
  and output embeddings, ``CLIPout`` = :func:`cosine_similarity` of the output image and output caption
  embeddings, ``L1`` = :func:`l1_distance` of input and output pixels.
* **MagicBrush** (Zhang et al. 2023, §4; with ground truth): ``L1`` and ``L2`` (:func:`l1_distance`,
  :func:`l2_distance`) of the output resized to the target's size and the target, as [0, 1] tensors;
  ``CLIP-I`` and ``DINO`` (output vs target), ``CLIP-T`` (output vs caption) as cosines.

Embeddings are (N, D) float tensors (any scale: cosines normalise them); pixel tensors are (3, H, W)
float in [0, 1] (:func:`pixels`).
"""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import torch

# Below this norm a caption-embedding change is treated as "no direction" (the two captions encode alike).
DIRECTION_EPS = 1e-6


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two (N, D) tensors → (N,) float64 in [-1, 1].

    CLIPim, CLIPout, CLIP-I, CLIP-T and DINO are all this function on different embedding pairs. A zero
    row has cosine 0 with anything (it points nowhere).
    """
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (_unit(a) * _unit(b)).sum(-1).clamp(-1.0, 1.0)


def clip_direction_similarity(
    image_in: torch.Tensor, image_out: torch.Tensor, text_in: torch.Tensor, text_out: torch.Tensor
) -> torch.Tensor:
    """CLIPdir: cosine between the image-embedding change and the caption-embedding change → (N,) float64.

    All four inputs are (N, D) CLIP embeddings (image_in/out from the input and output images,
    text_in/out from the input and output captions). As in InstructPix2Pix's ``ClipSimilarity``, each
    embedding is L2-normalised first, then ``cos(e(out_img) − e(in_img), e(out_cap) − e(in_cap))``.

    Sign convention: an output that moved toward the output caption (and away from the input caption)
    scores above 0, up to 1; one that moved the opposite way scores below 0. An output whose embedding
    did not change at all scores exactly 0 (no movement is no agreement). Captions whose embeddings do
    not differ (norm of the change < ``DIRECTION_EPS``) define no direction: the result is NaN, and the
    caller must exclude the sample rather than score it.
    """
    d_img = _unit(image_out) - _unit(image_in)
    d_txt = _unit(text_out) - _unit(text_in)
    txt_norm = d_txt.norm(dim=-1)
    img_norm = d_img.norm(dim=-1)
    cos = (d_img * d_txt).sum(-1) / (img_norm * txt_norm).clamp_min(1e-30)
    cos = torch.where(img_norm < 1e-12, torch.zeros_like(cos), cos.clamp(-1.0, 1.0))
    return torch.where(txt_norm < DIRECTION_EPS, torch.full_like(cos, math.nan), cos)


def l1_distance(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean absolute difference of two (3, H, W) tensors in [0, 1] (MagicBrush's ``nn.L1Loss``)."""
    _check_pixels(output, reference)
    return float((output.double() - reference.double()).abs().mean())


def l2_distance(output: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared difference of two (3, H, W) tensors in [0, 1].

    MagicBrush reports this as "L2" (its evaluation script uses ``nn.MSELoss``: no square root); we keep
    that definition so numbers compare with published tables.
    """
    _check_pixels(output, reference)
    return float(((output.double() - reference.double()) ** 2).mean())


def _check_pixels(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"pixel tensors differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; resize first")


def pixels(img: PIL.Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image as a (3, H, W) float32 tensor in [0, 1], resized (bicubic) to ``size`` = (W, H) if given.

    This is torchvision's ``ToTensor`` after ``Image.resize(size, BICUBIC)``, as MagicBrush evaluates.
    """
    img = img.convert("RGB")
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), PIL.Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def aspect_mismatch(size_a: tuple[int, int], size_b: tuple[int, int], tolerance: float = 0.05) -> bool:
    """Whether two (W, H) sizes differ in shape, not just in scale.

    Pixel metrics resize one image to the other's size; that is meaningful when both show the same
    frame (equal aspect ratio up to ``tolerance``, which absorbs rounding of sides to multiples of 8),
    and meaningless otherwise (a crop, a padded square, a wrongly paired file).
    """
    (wa, ha), (wb, hb) = size_a, size_b
    if min(wa, ha, wb, hb) <= 0:
        return True
    sx, sy = wb / wa, hb / ha
    return abs(sx - sy) / max(sx, sy) > tolerance


def mean(values: list[float]) -> float | None:
    """Mean of finite values (``None`` for none): aggregation never sees an excluded sample's NaN."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(vals) / len(vals)) if vals else None
