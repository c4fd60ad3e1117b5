"""Grounding objects in generated images: Grounding DINO boxes, SAM masks, three mask variants (stage 2).

Emu Edit (Sheynin et al. 2024, §3.2) grounds the object an instruction names with Grounding DINO
(Liu et al. 2023) and turns its box into a mask with SAM (Kirillov et al. 2023); each object gives
three masks, and each mask one candidate edit: the precise mask, the mask dilated and Gaussian
blurred (room for a new shape and a soft seam), and the bounding box.

SAM runs in two halves: the heavy image encoder once per image (:meth:`Grounder.set_image`), then
the light prompt encoder and mask decoder once per box prompt, reusing the image embedding for
every object of that image. Two SAM backends: transformers' ``SamModel`` (``facebook/sam-vit-base``
or any folder in that format; the default) and, for the original ``.pth`` checkpoints, the
``segment-anything`` package (optional extra ``multiedit[sam]``), whose weights are read with
``torch.load(..., weights_only=True)``.

Coordinates: boxes are ``(N, 4)`` float arrays, ``XYXY`` in pixels of the image they were found
in; masks are ``(H, W)`` arrays, ``H x W`` the image size.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..errors import MultiEditError, brief, require

logger = logging.getLogger(__name__)

MASK_VARIANTS = ("precise", "dilated", "box")


@dataclass
class Detection:
    """Grounding DINO's boxes for one phrase: ``boxes`` ``(N, 4)`` XYXY pixels, ``scores`` ``(N,)``
    in [0, 1], best first."""

    phrase: str
    boxes: np.ndarray
    scores: np.ndarray

    @property
    def found(self) -> bool:
        return len(self.scores) > 0

    @property
    def best_score(self) -> float:
        return float(self.scores.max()) if self.found else 0.0


@dataclass
class MaskVariants:
    """The three masks of one object, each ``(H, W)`` float32 in [0, 1] (1 = the object's region)."""

    precise: np.ndarray
    dilated: np.ndarray
    box: np.ndarray

    def items(self) -> list[tuple[str, np.ndarray]]:
        return [(name, getattr(self, name)) for name in MASK_VARIANTS]

    def complement(self) -> MaskVariants:
        """Everything but the object (for background edits): ``1 - m`` of each variant."""
        return MaskVariants(*(1.0 - m for _, m in self.items()))


@dataclass
class Grounding:
    """One phrase grounded in one image: its detection, its masks, or why there are none."""

    phrase: str
    detection: Detection
    masks: MaskVariants | None
    reason: str | None = None


def detection_prompt(phrase: str) -> str:
    """Grounding DINO's text prompt for a phrase: lower case, one phrase ending in ``"."``."""
    text = " ".join(re.sub(r"[.?]", " ", phrase.lower()).split())
    return f"{text}."


def mask_variants(
    precise: np.ndarray, boxes: np.ndarray, *, dilate_fraction: float = 0.03, blur_fraction: float = 0.02
) -> MaskVariants:
    """Build the three variants from a binary object mask and its boxes.

    Args:
        precise: ``(H, W)`` bool or {0, 1} mask (the union of the object's SAM masks).
        boxes: ``(N, 4)`` XYXY pixel boxes; the box variant is the union of the filled boxes.
        dilate_fraction: dilation radius as a fraction of ``min(H, W)`` (at least 1 pixel).
        blur_fraction: Gaussian sigma of the blur, as a fraction of ``min(H, W)``.

    The dilated variant is the dilated mask, Gaussian blurred, then raised back to 1 wherever the
    precise mask is 1: the object itself stays fully editable while the border fades out.
    """
    m = torch.as_tensor(np.asarray(precise, dtype=np.float32))
    h, w = m.shape
    radius = max(1, int(round(dilate_fraction * min(h, w))))
    dilated = F.max_pool2d(m[None, None], kernel_size=2 * radius + 1, stride=1, padding=radius)[0, 0]
    sigma = max(0.5, blur_fraction * min(h, w))
    blurred = gaussian_blur(dilated, sigma)
    soft = torch.maximum(blurred, m).clamp(0, 1)
    box = box_mask(boxes, (h, w)).astype(np.float32)
    return MaskVariants(m.numpy().astype(np.float32), soft.numpy().astype(np.float32), box)


def box_mask(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool union of filled XYXY pixel boxes (each covers every pixel it touches)."""
    h, w = size
    out = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        c0, r0 = max(0, int(math.floor(x0))), max(0, int(math.floor(y0)))
        c1, r1 = min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1)))
        out[r0:r1, c0:c1] = True
    return out


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(H, W)`` tensor (kernel radius 3σ, edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    t = F.pad(m[None, None], (radius, radius, radius, radius), mode="replicate")
    t = F.conv2d(t, kernel.view(1, 1, 1, -1))
    t = F.conv2d(t, kernel.view(1, 1, -1, 1))
    return t[0, 0]


def sam_box_coordinates(boxes: np.ndarray, image_size: tuple[int, int], longest_edge: int) -> np.ndarray:
    """Scale XYXY pixel boxes of an ``(H, W)`` image to SAM's resized input (longest side ``longest_edge``).

    The same rule as SAM's ``ResizeLongestSide`` and transformers' ``SamProcessor``: the image is
    resized to ``round(H * s), round(W * s)`` with ``s = longest_edge / max(H, W)``.
    """
    h, w = image_size
    s = longest_edge / max(h, w)
    new_h, new_w = int(h * s + 0.5), int(w * s + 0.5)
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    out[:, [0, 2]] *= new_w / w
    out[:, [1, 3]] *= new_h / h
    return out


class TransformersSam:
    """SAM through transformers' ``SamModel`` / ``SamProcessor`` (a hub id or local folder)."""

    def __init__(self, path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import SamModel, SamProcessor

        try:
            self.model = SamModel.from_pretrained(path, dtype=dtype).to(device).eval()
            self.processor = SamProcessor.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise MultiEditError(
                f"Could not load SAM from {path!r} ({brief(exc)}); pass --sam-model a transformers SAM "
                "folder or hub id (facebook/sam-vit-base), or an original .pth checkpoint."
            ) from None
        self.device, self.dtype = torch.device(device), dtype
        self.embedding_calls = 0
        self._embeddings = None

    @torch.no_grad()
    def set_image(self, image: PIL.Image.Image) -> None:
        """Run the image encoder once; every :meth:`predict_boxes` until the next call reuses it."""
        inputs = self.processor(images=image, return_tensors="pt")
        self._embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        self._sizes = inputs["original_sizes"], inputs["reshaped_input_sizes"]
        self._image_size = (image.height, image.width)
        self.embedding_calls += 1

    @torch.no_grad()
    def predict_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` bool masks for ``(N, 4)`` XYXY pixel boxes of the image given to :meth:`set_image`."""
        if self._embeddings is None:
            raise RuntimeError("TransformersSam.predict_boxes() needs set_image() first.")
        longest = self.processor.image_processor.size["longest_edge"]
        scaled = sam_box_coordinates(boxes, self._image_size, longest)
        input_boxes = torch.as_tensor(scaled, dtype=self.dtype, device=self.device)[None]  # (1, N, 4)
        out = self.model(image_embeddings=self._embeddings, input_boxes=input_boxes, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(out.pred_masks.float().cpu(), *self._sizes)
        return masks[0][:, 0].numpy().astype(bool)


class SegmentAnythingSam:
    """SAM through the ``segment-anything`` package, for the original ``sam_vit_*.pth`` checkpoints.

    ``model_type`` is ``vit_b``/``vit_l``/``vit_h``; by default it is read from the file name
    (``sam_vit_b_01ec64.pth``). The state dict is loaded with ``weights_only=True``: a pickle in a
    downloaded file can then only hold tensors, never code.
    """

    def __init__(self, checkpoint: str | Path, model_type: str | None = None, device: torch.device | str = "cpu"):
        sa = require("segment_anything", "sam")
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise MultiEditError(f"SAM checkpoint {checkpoint} does not exist; pass the path of a sam_vit_*.pth file.")
        if model_type is None:
            found = re.search(r"vit_[blh]", checkpoint.name)
            if not found:
                raise MultiEditError(
                    f"Cannot tell the SAM model type from {checkpoint.name!r}; pass --sam-type vit_b, vit_l or vit_h."
                )
            model_type = found.group(0)
        if model_type not in sa.sam_model_registry:
            raise MultiEditError(f"--sam-type {model_type!r} is not one of {sorted(sa.sam_model_registry)}.")
        model = sa.sam_model_registry[model_type](checkpoint=None)
        try:  # weights_only: a pickle in a downloaded file may hold tensors, never code
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise MultiEditError(
                f"{checkpoint} is not a plain {model_type} SAM state dict ({brief(exc)}); "
                "use the original sam_vit_*.pth file or a transformers SAM folder."
            ) from None
        self.predictor = sa.SamPredictor(model.to(device).eval())
        self.embedding_calls = 0
        self._has_image = False

    @torch.no_grad()
    def set_image(self, image: PIL.Image.Image) -> None:
        self.predictor.set_image(np.asarray(image.convert("RGB")), image_format="RGB")
        self.embedding_calls += 1
        self._has_image = True

    @torch.no_grad()
    def predict_boxes(self, boxes: np.ndarray) -> np.ndarray:
        if not self._has_image:
            raise RuntimeError("SegmentAnythingSam.predict_boxes() needs set_image() first.")
        p = self.predictor
        t = p.transform.apply_boxes_torch(torch.as_tensor(np.asarray(boxes), dtype=torch.float32), p.original_size)
        masks, _, _ = p.predict_torch(
            point_coords=None, point_labels=None, boxes=t.to(p.device), multimask_output=False
        )
        return masks[:, 0].cpu().numpy().astype(bool)


def load_sam(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, model_type=None):
    """A SAM backend for ``path``: a ``.pth``/``.pt`` file → :class:`SegmentAnythingSam`, else transformers."""
    if str(path).endswith((".pth", ".pt")):
        return SegmentAnythingSam(path, model_type=model_type, device=device)
    return TransformersSam(path, device=device, dtype=dtype)


class Grounder:
    """Grounding DINO + SAM: phrases in, boxes and mask variants out.

    Args:
        dino_path: a Grounding DINO checkpoint (``IDEA-Research/grounding-dino-tiny`` or a folder).
        sam: a SAM backend (:func:`load_sam`), or ``None`` for detection only.
        box_threshold, text_threshold: Grounding DINO's thresholds (0.3 / 0.25, as its authors use).
        max_boxes: keep at most this many boxes per phrase (best first).
        dilate_fraction, blur_fraction: see :func:`mask_variants`.
    """

    def __init__(
        self,
        dino_path: str,
        sam=None,
        *,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        max_boxes: int = 5,
        dilate_fraction: float = 0.03,
        blur_fraction: float = 0.02,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        try:
            self.model = AutoModelForZeroShotObjectDetection.from_pretrained(dino_path, dtype=dtype)
            self.processor = AutoProcessor.from_pretrained(dino_path)
        except (OSError, ValueError) as exc:
            raise MultiEditError(
                f"Could not load Grounding DINO from {dino_path!r} ({brief(exc)}); pass "
                "--grounding-model a local folder or hub id (IDEA-Research/grounding-dino-tiny)."
            ) from None
        self.model.to(device).eval()
        self.sam = sam
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.max_boxes = max_boxes
        self.dilate_fraction, self.blur_fraction = dilate_fraction, blur_fraction
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def detect(self, image: PIL.Image.Image, phrase: str) -> Detection:
        """Boxes of ``phrase`` in ``image`` above the thresholds, best first (possibly none)."""
        inputs = self.processor(images=image, text=detection_prompt(phrase), return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(image.height, image.width)],
        )[0]
        # Count detections by scores: with none, transformers returns text_labels == [""].
        scores = result["scores"].float().cpu().numpy()
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        order = np.argsort(-scores)[: self.max_boxes]
        return Detection(phrase, boxes[order], scores[order])

    def ground(self, image: PIL.Image.Image, phrases: list[str], *, reuse_embedding: bool = True) -> list[Grounding]:
        """Detect and segment every phrase in ``image``.

        The SAM image embedding is computed once for the image and reused for every phrase
        (``reuse_embedding=False`` recomputes it per phrase; only the benchmark wants that). A phrase
        without a detection gets ``masks=None`` and a ``reason``.
        """
        out = []
        embedded = False
        for phrase in phrases:
            if not phrase.strip():
                nothing = Detection(phrase, np.zeros((0, 4)), np.zeros(0))
                out.append(Grounding(phrase, nothing, None, "empty object name"))
                continue
            det = self.detect(image, phrase)
            if not det.found:
                reason = f"no detection of {phrase!r} above box threshold {self.box_threshold}"
                out.append(Grounding(phrase, det, None, reason))
                continue
            boxes_mask = box_mask(det.boxes, (image.height, image.width))
            if self.sam is None:
                precise = boxes_mask
            else:
                if not embedded or not reuse_embedding:
                    self.sam.set_image(image)
                    embedded = True
                precise = self.sam.predict_boxes(det.boxes).any(axis=0)
                if not precise.any():  # SAM found nothing inside the boxes: fall back to them
                    logger.debug("SAM gave an empty mask for %r; using its boxes", phrase)
                    precise = boxes_mask
            variants = mask_variants(
                precise, det.boxes, dilate_fraction=self.dilate_fraction, blur_fraction=self.blur_fraction
            )
            out.append(Grounding(phrase, det, variants))
        return out
