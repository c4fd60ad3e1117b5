"""Stage-4 filters: pure functions on embeddings, depth maps and detections, and candidate selection.

InstructPix2Pix (Brooks et al. 2023, §3.1.2) keeps a generated pair only if CLIP agrees with it:
the *directional* similarity (the change between the two images points the same way as the change
between the two captions, Gal et al. 2022) ≥ 0.2, the *image* similarity of source and edit ≥ 0.75
(the edit is still the same picture) and the similarity of the edited image to its caption ≥ 0.2.
Emu Edit adds structure and task checks: the depth maps of source and edit agree (outside the
edited region for local edits), a detector finds the added object or no longer finds the removed
one, and optionally the task classifier reads the instruction as the intended task. Among the
candidates of one sample that pass, the one with the highest directional similarity is kept.

Everything here is a pure function of tensors and numbers (the models that produce the embeddings
live in :mod:`.scoring`), so the math is tested against hand-computed values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

#: Filter names in the order they are checked; a dropped sample is counted under the first one its
#: best candidate fails.
FILTER_ORDER = ("clip_direction", "clip_image", "clip_output", "depth_l1", "detector")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of ``(N, D)`` tensors (broadcasting), in [-1, 1]; a zero row gives 0."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def clip_direction_similarity(
    source_image: torch.Tensor, edited_image: torch.Tensor, source_text: torch.Tensor, edited_text: torch.Tensor
) -> torch.Tensor:
    """CLIP directional similarity ``cos(E_I(edit) - E_I(src), E_T(out) - E_T(in))`` per row.

    All inputs are ``(N, D)`` (or broadcastable) CLIP embeddings, normalised or not; the
    embeddings are L2-normalised first, as IP2P's ``ClipSimilarity`` does. Returns ``(N,)``.
    """
    si, ei = F.normalize(source_image.float(), dim=-1), F.normalize(edited_image.float(), dim=-1)
    st, et = F.normalize(source_text.float(), dim=-1), F.normalize(edited_text.float(), dim=-1)
    return cosine(ei - si, et - st)


def clip_image_similarity(source_image: torch.Tensor, edited_image: torch.Tensor) -> torch.Tensor:
    """``cos(E_I(src), E_I(edit))`` per row, ``(N,)``."""
    return cosine(source_image, edited_image)


def clip_output_similarity(edited_image: torch.Tensor, edited_text: torch.Tensor) -> torch.Tensor:
    """``cos(E_I(edit), E_T(output caption))`` per row, ``(N,)``."""
    return cosine(edited_image, edited_text)


def normalize_depth(depth: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Min-max normalise a ``(H, W)`` relative depth map to [0, 1] (a constant map becomes 0)."""
    d = torch.as_tensor(np.asarray(depth, dtype=np.float32) if isinstance(depth, np.ndarray) else depth).float()
    lo, hi = d.min(), d.max()
    return (d - lo) / (hi - lo) if hi > lo else torch.zeros_like(d)


def depth_l1(
    source_depth: torch.Tensor | np.ndarray,
    edited_depth: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
) -> float:
    """Mean ``|d_src - d_edit|`` of two ``(H, W)`` depth maps, each min-max normalised to [0, 1].

    With ``mask`` (``(H, W)`` in [0, 1], 1 = the edited region) the mean is weighted by ``1 - mask``:
    only the region that should not change counts. If the mask covers everything, returns 0.
    """
    a, b = normalize_depth(source_depth), normalize_depth(edited_depth)
    if a.shape != b.shape:
        raise ValueError(f"depth maps differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).abs()
    if mask is None:
        return float(diff.mean())
    keep = 1.0 - torch.as_tensor(np.asarray(mask, dtype=np.float32)).float().clamp(0, 1)
    if keep.shape != diff.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} does not match the depth maps {tuple(diff.shape)}")
    total = keep.sum()
    return float((diff * keep).sum() / total) if total > 0 else 0.0


def detector_passes(mode: str | None, found: bool | None) -> bool:
    """The detector check: ``"present"`` needs the (added) object found, ``"absent"`` needs the
    (removed) object not found; ``None`` (no check) or an unmeasured ``found`` passes."""
    if mode is None or found is None:
        return True
    if mode == "present":
        return bool(found)
    if mode == "absent":
        return not found
    raise ValueError(f"detector mode must be None, 'present' or 'absent', got {mode!r}")


@dataclass(frozen=True)
class Thresholds:
    """The thresholds one run applies: CLIP minima, the depth maximum (``None`` = off) and the
    detector mode (``None`` = off)."""

    clip_direction: float = 0.2
    clip_image: float = 0.75
    clip_output: float = 0.2
    depth_l1: float | None = 0.15
    detector: str | None = None

    @classmethod
    def for_task(cls, task, **overrides) -> Thresholds:
        """The task's registry thresholds (``task.filters``), with non-``None`` ``overrides`` applied.

        ``depth_l1`` / ``detector`` overrides of ``"off"`` switch that check off.
        """
        f = task.filters
        base = cls(f.clip_direction, f.clip_image, f.clip_output, f.depth_l1, f.detector)
        changes = {k: (None if v == "off" else v) for k, v in overrides.items() if v is not None}
        return replace(base, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CandidateScores:
    """Every score of one candidate; ``nan`` / ``None`` where not measured."""

    clip_direction: float = math.nan
    clip_image: float = math.nan
    clip_output: float = math.nan
    depth_l1: float = math.nan
    detector_found: bool | None = None
    detector_score: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def failed_filters(scores: CandidateScores, th: Thresholds) -> list[str]:
    """Names of the filters (in :data:`FILTER_ORDER`) that ``scores`` fail under ``th``.

    A CLIP score that is ``nan`` fails (it should have been measured); a ``nan`` depth score fails
    only when the depth check is on.
    """
    failed = []
    for name in ("clip_direction", "clip_image", "clip_output"):
        value = getattr(scores, name)
        if math.isnan(value) or value < getattr(th, name):
            failed.append(name)
    if th.depth_l1 is not None and (math.isnan(scores.depth_l1) or scores.depth_l1 > th.depth_l1):
        failed.append("depth_l1")
    if not detector_passes(th.detector, scores.detector_found):
        failed.append("detector")
    return failed


def select_best(candidates: list[CandidateScores], th: Thresholds) -> tuple[int | None, str | None]:
    """Pick the candidate to keep: ``(index, None)``, or ``(None, reason)`` if none passes.

    The kept candidate is the passing one with the highest directional similarity (ties: the
    first). If none passes, ``reason`` is the first failed filter of the candidate with the highest
    directional similarity, so every dropped sample is counted under exactly one filter.
    """
    if not candidates:
        return None, "no_candidates"
    failures = [failed_filters(c, th) for c in candidates]

    def direction(i: int) -> float:
        v = candidates[i].clip_direction
        return -math.inf if math.isnan(v) else v

    passing = [i for i, f in enumerate(failures) if not f]
    if passing:
        return max(passing, key=lambda i: (direction(i), -i)), None
    best = max(range(len(candidates)), key=lambda i: (direction(i), -i))
    return None, failures[best][0]
