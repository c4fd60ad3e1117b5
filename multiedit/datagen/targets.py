"""Targets of the vision tasks, drawn from the source image (datagen stage 3, no diffusion).

Emu Edit (Sheynin et al. 2024, §3.1) phrases recognition tasks as edits: ``detect`` draws the
grounded boxes on the source, ``segment`` overlays the grounded mask, ``color`` applies a named
image filter (deterministic: the same name always does the same thing), and ``image_to_image``
turns the photo into a dense map (or a map back into the photo). All functions take and return
RGB PIL images of the same size.
"""

from __future__ import annotations

import re

import numpy as np
import PIL.Image
from PIL import ImageDraw, ImageEnhance, ImageFilter, ImageOps

from ..tasks.builtin import COLOR_FILTERS, IMAGE_MAPS

BOX_COLOR = (255, 0, 0)
MASK_COLOR = (0, 255, 0)


def draw_boxes(image: PIL.Image.Image, boxes: np.ndarray, color=BOX_COLOR, width: int | None = None) -> PIL.Image.Image:
    """The image with every XYXY pixel box outlined (line width ~1% of the shorter side, at least 1)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = width or max(1, round(min(out.size) / 100))
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
    return out


def overlay_mask(image: PIL.Image.Image, mask: np.ndarray, color=MASK_COLOR, alpha: float = 0.5) -> PIL.Image.Image:
    """The image with ``color`` blended in at ``alpha`` where the ``(H, W)`` mask (in [0, 1]) is on."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.clip(np.asarray(mask, dtype=np.float32), 0, 1)[..., None] * alpha
    out = arr * (1 - m) + np.asarray(color, dtype=np.float32) * m
    return PIL.Image.fromarray(np.round(out).clip(0, 255).astype(np.uint8))


def _sepia(img: PIL.Image.Image) -> PIL.Image.Image:
    g = np.asarray(ImageOps.grayscale(img), dtype=np.float32)
    tone = np.stack([g * 1.07, g * 0.74, g * 0.43], axis=-1) + np.array([20.0, 10.0, 0.0])
    return PIL.Image.fromarray(tone.clip(0, 255).astype(np.uint8))


def _tint(img: PIL.Image.Image, gains) -> PIL.Image.Image:
    arr = np.asarray(img, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
    return PIL.Image.fromarray(arr.clip(0, 255).astype(np.uint8))


_FILTERS = {
    "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
    "sepia": _sepia,
    "inverted": ImageOps.invert,
    "blurred": lambda im: im.filter(ImageFilter.GaussianBlur(radius=max(1.0, min(im.size) / 100))),
    "sharpened": lambda im: ImageEnhance.Sharpness(im).enhance(3.0),
    "brightened": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
    "darkened": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    "high-contrast": lambda im: ImageEnhance.Contrast(im).enhance(1.8),
    "low-contrast": lambda im: ImageEnhance.Contrast(im).enhance(0.5),
    "saturated": lambda im: ImageEnhance.Color(im).enhance(2.0),
    "desaturated": lambda im: ImageEnhance.Color(im).enhance(0.3),
    "warm-toned": lambda im: _tint(im, (1.12, 1.0, 0.85)),
    "cool-toned": lambda im: _tint(im, (0.85, 1.0, 1.12)),
    "posterized": lambda im: ImageOps.posterize(im, 3),
    "solarized": lambda im: ImageOps.solarize(im, threshold=128),
    "embossed": lambda im: im.filter(ImageFilter.EMBOSS),
}
assert set(_FILTERS) == set(COLOR_FILTERS), "every registry color filter needs an image op"


def find_named(text: str, names) -> str | None:
    """The longest of ``names`` that occurs in ``text`` as whole words (case-insensitive; hyphens and
    punctuation count as spaces), or ``None``."""
    def norm(s: str) -> str:
        return " " + " ".join(re.sub(r"[^a-z0-9]+", " ", s.lower()).split()) + " "

    padded = norm(text)
    hits = [n for n in names if norm(n) in padded]
    return max(hits, key=len) if hits else None


def apply_color_filter(image: PIL.Image.Image, name: str) -> PIL.Image.Image:
    """Apply the registry filter ``name`` (one of ``COLOR_FILTERS``)."""
    if name not in _FILTERS:
        raise ValueError(f"unknown color filter {name!r}; known: {sorted(_FILTERS)}")
    return _FILTERS[name](image.convert("RGB")).convert("RGB")


def edge_map(image: PIL.Image.Image) -> PIL.Image.Image:
    """White edges on black: the grey image's edge filter, contrast-stretched."""
    edges = ImageOps.autocontrast(ImageOps.grayscale(image).filter(ImageFilter.FIND_EDGES))
    return edges.convert("RGB")


def sketch(image: PIL.Image.Image) -> PIL.Image.Image:
    """A black-on-white contour sketch (the inverted, slightly smoothed edge map)."""
    edges = ImageOps.grayscale(image).filter(ImageFilter.SMOOTH).filter(ImageFilter.FIND_EDGES)
    return ImageOps.invert(ImageOps.autocontrast(edges)).convert("RGB")


def depth_image(depth: np.ndarray) -> PIL.Image.Image:
    """A relative depth map ``(H, W)`` as a grey RGB image (min-max scaled; near = bright for
    Depth Anything's disparity-like output)."""
    d = np.asarray(depth, dtype=np.float32)
    lo, hi = float(d.min()), float(d.max())
    g = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    return PIL.Image.fromarray((g * 255).round().astype(np.uint8)).convert("RGB")


def normal_image(depth: np.ndarray) -> PIL.Image.Image:
    """Surface normals estimated from a depth map's gradients, as RGB (``(n + 1) / 2 * 255``)."""
    d = np.asarray(depth, dtype=np.float32)
    lo, hi = float(d.min()), float(d.max())
    d = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    gy, gx = np.gradient(d * max(d.shape) / 8.0)
    n = np.stack([-gx, -gy, np.ones_like(d)], axis=-1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return PIL.Image.fromarray(((n + 1) / 2 * 255).round().clip(0, 255).astype(np.uint8))


#: Map kinds this module can compute; the others of ``IMAGE_MAPS`` need a model we do not ship.
COMPUTABLE_MAPS = ("depth map", "normal map", "edge map", "sketch")
assert set(COMPUTABLE_MAPS) <= set(IMAGE_MAPS)


def compute_map(image: PIL.Image.Image, kind: str, depth_fn=None) -> PIL.Image.Image:
    """The ``kind`` map of ``image``; ``depth_fn(image) -> (H, W) array`` is needed for depth and normals."""
    if kind == "edge map":
        return edge_map(image)
    if kind == "sketch":
        return sketch(image)
    if kind in ("depth map", "normal map"):
        if depth_fn is None:
            raise ValueError(f"a {kind} needs a depth model")
        depth = depth_fn(image)
        return depth_image(depth) if kind == "depth map" else normal_image(depth)
    raise ValueError(f"cannot compute a {kind!r}; computable: {list(COMPUTABLE_MAPS)}")
