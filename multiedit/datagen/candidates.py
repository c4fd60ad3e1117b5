"""Candidate pairs of one instruction record, per the task's ``pair_strategy`` (datagen stages 2-3).

Strategies (:data:`multiedit.tasks.registry.PAIR_STRATEGIES`):

- ``masked`` (local, remove, add, texture): draw the source, ground the object, and draw the
  source again together with one edit per mask variant (precise, dilated + blurred, box), with
  Prompt-to-Prompt control and latent blending inside the mask (:class:`.pairs.PairSampler`).
  Which object is grounded: ``original_object`` in the source (the thing to change or remove),
  except for ``add``, whose ``original_object`` is only the place the new object goes and may be
  empty. For ``add`` a first batch draws the source with an unmasked Prompt-to-Prompt edit, the
  *added* object (``edited_object``) is grounded in that edit, and its masks confine the real
  candidates: the new object appears where the unconstrained edit put it, and nothing else moves.
- ``masked_complement`` (background): the registry's examples put the *old background* in
  ``original_object`` ("lawn", "busy cafe"); backgrounds are regions that detectors box poorly
  (the box is often the whole image). So the engine grounds the *main subject* instead, found as
  the first object noun of the input caption once the background phrase is taken out ("a dog
  sitting on a lawn" → "dog"), and edits the complement of its masks (everything but the subject;
  the dilated variant's complement keeps a margin around it). If no subject noun is found, the
  old background itself is grounded and its masks are used directly.
- ``p2p`` (global, style, text): no mask; one candidate per cross-attention fraction τ.
- ``detect`` / ``segment``: the grounding boxes drawn on the source / its precise mask overlaid.
- ``filter`` (color): the named filter of ``edited_object`` applied to the source.
- ``image_to_image``: the dense map named by ``edited_object`` computed from the source (photo →
  map), or, when ``original_object`` names a map and ``edited_object`` is "photo", the photo drawn
  from the output caption with its map as the input (map → photo). Depth and normal maps come
  from the depth model, edge maps and sketches from image filters; ``pose`` and ``segmentation
  map`` need models multiedit does not ship, and such records are dropped with that reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import PIL.Image

from ..tasks import Task
from ..tasks.builtin import COLOR_FILTERS, IMAGE_MAPS
from .grounding import box_mask
from .pairs import EditSpec
from .targets import COMPUTABLE_MAPS, apply_color_filter, compute_map, draw_boxes, find_named, overlay_mask
from .template_writer import find_object

MASKED = ("masked", "masked_complement")


@dataclass
class Candidate:
    """One candidate pair. ``mask`` is the region the edit may change, ``(H, W)`` in [0, 1], or
    ``None`` (the whole image); fractions are ``nan`` where no attention control was used."""

    input_image: PIL.Image.Image
    edited_image: PIL.Image.Image
    mask: np.ndarray | None
    variant: str
    seed: int
    cross_fraction: float = math.nan
    self_fraction: float = math.nan


@dataclass
class CandidateSet:
    """The candidates of one record, or why there are none (``reason`` is a short key, ``detail`` a sentence)."""

    candidates: list[Candidate] = field(default_factory=list)
    reason: str | None = None
    detail: str = ""


def background_subject(input_caption: str, background: str) -> str | None:
    """The main subject of a background edit: the first object noun of the caption without the background."""
    rest = input_caption
    if background.strip():
        rest = re.sub(re.escape(background), " ", input_caption, flags=re.IGNORECASE)
    return find_object(rest)


class CandidateMaker:
    """Makes the candidates of records of one task.

    ``models`` provides ``sampler`` (:class:`.pairs.PairSampler`), ``grounder``
    (:class:`.grounding.Grounder`) and ``depth`` (:class:`.scoring.DepthEstimator`), loaded on first
    use; ``config`` the fractions (``cross_fraction``, ``self_fraction``, ``p2p_cross_fractions``).
    """

    def __init__(self, task: Task, models, config):
        self.task, self.models, self.config = task, models, config

    def __call__(self, record: dict, seeds: list[int]) -> CandidateSet:
        out = CandidateSet()
        for seed in seeds:
            got = getattr(self, self.task.pair_strategy)(record, seed)
            out.candidates += got.candidates
            if got.reason and not out.reason:
                out.reason, out.detail = got.reason, got.detail
        if out.candidates:
            out.reason, out.detail = None, ""
        return out

    # ------------------------------------------------------------------ diffusion strategies
    def _edit(self, caption: str, mask, label: str, cross: float | None = None) -> EditSpec:
        cfg = self.config
        return EditSpec(caption, mask, cfg.cross_fraction if cross is None else cross, cfg.self_fraction, label)

    def _masked_pairs(self, record: dict, seed: int, variants) -> CandidateSet:
        edits = [self._edit(record["output_caption"], m, name) for name, m in variants]
        result = self.models.sampler(record["input_caption"], edits, seed=seed)
        return CandidateSet(
            [
                Candidate(result.source, img, e.mask, e.label, seed, e.cross_fraction, e.self_fraction)
                for e, img in zip(edits, result.edits)
            ]
        )

    def masked(self, record: dict, seed: int) -> CandidateSet:
        sampler, grounder = self.models.sampler, self.models.grounder
        if self.task.name == "add":
            phrase = record.get("edited_object", "")
            unmasked = self._edit(record["output_caption"], None, "unmasked")
            first = sampler(record["input_caption"], [unmasked], seed=seed)
            where = first.edits[0]  # ground the added object where the unconstrained edit put it
        else:
            phrase = record.get("original_object", "")
            where = sampler(record["input_caption"], [], seed=seed).source
        if not phrase.strip():
            return CandidateSet(reason="no_object", detail="the record names no object to ground")
        g = grounder.ground(where, [phrase])[0]
        if g.masks is None:
            return CandidateSet(reason="no_detection", detail=g.reason or "")
        return self._masked_pairs(record, seed, g.masks.items())

    def masked_complement(self, record: dict, seed: int) -> CandidateSet:
        background = record.get("original_object", "")
        subject = background_subject(record["input_caption"], background)
        phrase = subject or background
        if not phrase.strip():
            return CandidateSet(reason="no_object", detail="neither a subject nor a background to ground")
        source = self.models.sampler(record["input_caption"], [], seed=seed).source
        g = self.models.grounder.ground(source, [phrase])[0]
        if g.masks is None:
            return CandidateSet(reason="no_detection", detail=g.reason or "")
        variants = g.masks.complement() if subject else g.masks
        return self._masked_pairs(record, seed, variants.items())

    def p2p(self, record: dict, seed: int) -> CandidateSet:
        fractions = self.config.p2p_cross_fractions
        edits = [self._edit(record["output_caption"], None, f"tau={f:g}", cross=f) for f in fractions]
        result = self.models.sampler(record["input_caption"], edits, seed=seed)
        return CandidateSet(
            [
                Candidate(result.source, img, None, e.label, seed, e.cross_fraction, e.self_fraction)
                for e, img in zip(edits, result.edits)
            ]
        )

    # ------------------------------------------------------------------ vision targets
    def _source(self, caption: str, seed: int) -> PIL.Image.Image:
        return self.models.sampler(caption, [], seed=seed).source

    def detect(self, record: dict, seed: int) -> CandidateSet:
        phrase = record.get("original_object", "")
        if not phrase.strip():
            return CandidateSet(reason="no_object", detail="the record names no object to detect")
        source = self._source(record["input_caption"], seed)
        det = self.models.grounder.detect(source, phrase)
        if not det.found:
            return CandidateSet(reason="no_detection", detail=f"no detection of {phrase!r}")
        mask = box_mask(det.boxes, (source.height, source.width)).astype(np.float32)
        return CandidateSet([Candidate(source, draw_boxes(source, det.boxes), mask, "boxes", seed)])

    def segment(self, record: dict, seed: int) -> CandidateSet:
        phrase = record.get("original_object", "")
        if not phrase.strip():
            return CandidateSet(reason="no_object", detail="the record names no object to segment")
        source = self._source(record["input_caption"], seed)
        g = self.models.grounder.ground(source, [phrase])[0]
        if g.masks is None:
            return CandidateSet(reason="no_detection", detail=g.reason or "")
        mask = g.masks.precise
        return CandidateSet([Candidate(source, overlay_mask(source, mask), mask, "overlay", seed)])

    def filter(self, record: dict, seed: int) -> CandidateSet:
        name = find_named(record.get("edited_object", ""), COLOR_FILTERS) or find_named(
            record["output_caption"], COLOR_FILTERS
        )
        if name is None:
            return CandidateSet(reason="unknown_filter", detail=f"no filter of {list(COLOR_FILTERS)} is named")
        source = self._source(record["input_caption"], seed)
        return CandidateSet([Candidate(source, apply_color_filter(source, name), None, name, seed)])

    def image_to_image(self, record: dict, seed: int) -> CandidateSet:
        original = find_named(record.get("original_object", ""), IMAGE_MAPS)
        to_photo = original is not None and "photo" in record.get("edited_object", "").lower()
        kind = original if to_photo else find_named(record.get("edited_object", ""), IMAGE_MAPS)
        if kind is None:
            return CandidateSet(reason="unknown_map", detail=f"no map kind of {list(IMAGE_MAPS)} is named")
        if kind not in COMPUTABLE_MAPS:
            detail = f"no model for {kind!r} maps; computable: {list(COMPUTABLE_MAPS)}"
            return CandidateSet(reason="unsupported_map", detail=detail)
        depth_fn = (lambda im: self.models.depth([im])[0]) if kind in ("depth map", "normal map") else None
        if to_photo:  # map -> photo: the photo is drawn from the output caption, its map is the input
            photo = self._source(record["output_caption"], seed)
            return CandidateSet([Candidate(compute_map(photo, kind, depth_fn), photo, None, f"{kind}->photo", seed)])
        source = self._source(record["input_caption"], seed)
        return CandidateSet([Candidate(source, compute_map(source, kind, depth_fn), None, kind, seed)])

    def learned(self, record: dict, seed: int) -> CandidateSet:
        detail = f"task {self.task.name!r} is learned and has no generation recipe"
        return CandidateSet(reason="no_recipe", detail=detail)
