"""ShapesWorld scenes and their exact rendering.

A scene is a background colour plus up to four shapes, each in its own cell of a 3×3 grid. Rendering
is pure integer geometry on pixel centres (no anti-aliasing), so every pixel belongs to exactly one
shape or to the background and masks are exact.

Images are ``(H, W, 3) uint8`` arrays (``H = W = size``, default 64, ``MIN_SIZE..MAX_SIZE``); label maps
are ``(H, W) int16`` holding the index of the shape drawn at each pixel (``-1`` = background).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, replace

import numpy as np

SIZE = 64
# Shapes scale with the image but textures stay 2 px: from 32 px up every shape of every kind, size, cell and
# texture shows its colour and the three kinds differ; below it some do not (size 16: a small striped shape is
# all white; 31: two kinds draw the same pixels; under 8: shapes with no pixel). MAX_SIZE bounds the memory.
MIN_SIZE, MAX_SIZE = 32, 1024
GRID = 3

# Shape colours (sRGB uint8) and background colours (light, so every shape stands out).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "gray": (190, 190, 190),
    "beige": (235, 220, 190),
    "light blue": (185, 215, 245),
    "light green": (195, 235, 195),
    "pink": (245, 200, 215),
}
KINDS = ("circle", "square", "triangle")
TEXTURES = ("solid", "striped", "checkered")
SIZES = {"small": 6, "large": 9}  # half-extent in pixels at SIZE=64
WHITE = (255, 255, 255)
# Cells in reading order; the names are what instructions and captions say.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)


@dataclass(frozen=True)
class Shape:
    """One shape: ``kind`` in KINDS, ``colour`` in COLOURS, ``size`` in SIZES, ``cell`` in 0..8
    (index into POSITIONS), ``texture`` in TEXTURES (stripes/checks alternate the colour with white)."""

    kind: str
    colour: str
    size: str
    cell: int
    texture: str = "solid"

    @property
    def name(self) -> str:
        """How instructions refer to it: ``"red circle"`` (unique within a scene by construction)."""
        return f"{self.colour} {self.kind}"

    def describe(self) -> str:
        tex = "" if self.texture == "solid" else f"{self.texture} "
        return f"a {self.size} {tex}{self.colour} {self.kind} at the {POSITIONS[self.cell]}"


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...] = field(default_factory=tuple)
    size: int = SIZE

    def caption(self) -> str:
        parts = [s.describe() for s in self.shapes]
        body = ", ".join(parts) if parts else "nothing"
        return f"{body} on a {self.background} background"

    def free_cells(self) -> list[int]:
        used = {s.cell for s in self.shapes}
        return [c for c in range(GRID * GRID) if c not in used]

    def find(self, name: str) -> int:
        for i, s in enumerate(self.shapes):
            if s.name == name:
                return i
        raise KeyError(name)

    def with_shapes(self, shapes) -> Scene:
        return replace(self, shapes=tuple(shapes))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Scene:
        d = json.loads(text)
        return Scene(d["background"], tuple(Shape(**s) for s in d["shapes"]), d["size"])


def random_scene(rng: random.Random, min_shapes: int = 1, max_shapes: int = 3, size: int = SIZE) -> Scene:
    """1–3 shapes in distinct cells with distinct (colour, kind) names."""
    n = rng.randint(min_shapes, max_shapes)
    cells = rng.sample(range(GRID * GRID), n)
    names = rng.sample([(c, k) for c in COLOURS for k in KINDS], n)
    shapes = tuple(
        Shape(kind=k, colour=c, size=rng.choice(list(SIZES)), cell=cell, texture=rng.choice(TEXTURES))
        for cell, (c, k) in zip(cells, names)
    )
    return Scene(background=rng.choice(list(BACKGROUNDS)), shapes=shapes, size=size)


def _centre(cell: int, size: int) -> tuple[float, float]:
    """Pixel-centre coordinates (cx, cy) of a grid cell."""
    step = size / GRID
    return (cell % GRID + 0.5) * step, (cell // GRID + 0.5) * step


def shape_mask(shape: Shape, size: int = SIZE) -> np.ndarray:
    """``(size, size) bool``: the pixels whose centres fall inside the shape."""
    r = SIZES[shape.size] * size / SIZE
    cx, cy = _centre(shape.cell, size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    if shape.kind == "circle":
        return dx * dx + dy * dy <= r * r
    if shape.kind == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape.kind == "triangle":  # apex up: half-width grows linearly from 0 at the top to r at the bottom
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def texture_pattern(texture: str, size: int = SIZE) -> np.ndarray:
    """``(size, size) bool``: True where a shape with this texture shows its colour (else white)."""
    y, x = np.mgrid[0:size, 0:size]
    if texture == "solid":
        return np.ones((size, size), bool)
    if texture == "striped":  # horizontal stripes, 2 px
        return (y // 2) % 2 == 0
    if texture == "checkered":  # 2 px checks
        return (x // 2 + y // 2) % 2 == 0
    raise ValueError(f"unknown texture {texture!r}")


def label_map(scene: Scene) -> np.ndarray:
    """``(H, W) int16``: index of the shape at each pixel, -1 for background (later shapes on top)."""
    labels = np.full((scene.size, scene.size), -1, np.int16)
    for i, s in enumerate(scene.shapes):
        labels[shape_mask(s, scene.size)] = i
    return labels


def render(scene: Scene) -> np.ndarray:
    """``(H, W, 3) uint8`` image of ``scene``."""
    img = np.empty((scene.size, scene.size, 3), np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    labels = label_map(scene)
    for i, s in enumerate(scene.shapes):
        m = labels == i
        on = texture_pattern(s.texture, scene.size)
        img[m & on] = COLOURS[s.colour]
        img[m & ~on] = WHITE
    return img
