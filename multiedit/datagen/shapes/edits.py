"""Exact ShapesWorld edits, one family per registry task (plus held-out tasks for task inversion).

An edit is an :class:`EditSpec` (task, operation, parameters) sampled for a scene; :func:`apply_edit`
returns the exact edited image, the edited-region mask and the output caption. Region edits (add,
remove, local, texture, background) change the scene and re-render it; the others are stated pixel
formulas on the rendered image:

- ``global`` night: ``round(x · (0.30, 0.35, 0.55))``; fog: ``round(0.4·x + 0.6·215)``.
- ``style`` sketch: white, with black on every shape pixel whose 4-neighbour has another label.
- ``detect``: a 1-px magenta (230, 0, 230) rectangle one pixel outside the shape's bounding box.
- ``segment``: shape pixels ``round(0.5·x + 0.5·(230, 0, 230))``.
- ``color`` grayscale: ``round(0.299 R + 0.587 G + 0.114 B)``; invert: ``255 − x``.
- held out — ``mirror``: left-right flip; ``sepia``: the usual sepia matrix, clipped to 255.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from . import world
from .world import BACKGROUNDS, COLOURS, KINDS, POSITIONS, TEXTURES, Scene, Shape

# Registry task → the operations that realise it here.
TASK_OPS: dict[str, tuple[str, ...]] = {
    "add": ("add",),
    "remove": ("remove",),
    "local": ("recolour", "rekind"),
    "texture": ("texture",),
    "background": ("background",),
    "global": ("night", "fog"),
    "style": ("sketch",),
    "detect": ("detect",),
    "segment": ("segment",),
    "color": ("grayscale", "invert"),
}
TRAINED_TASKS = tuple(TASK_OPS)
# Not in the registry and never in training data: learned later by task inversion.
HELDOUT_TASKS: dict[str, tuple[str, ...]] = {"mirror": ("mirror",), "sepia": ("sepia",)}
ALL_TASK_OPS = {**TASK_OPS, **HELDOUT_TASKS}
REGION_TASKS = ("add", "remove", "local", "texture", "background")

MARK = (230, 0, 230)
NIGHT = (0.30, 0.35, 0.55)
FOG_LEVEL, FOG_MIX = 215, 0.6
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


@dataclass(frozen=True)
class EditSpec:
    """``task`` (registry name or held-out name), ``op`` (a key of phrasings.TEMPLATES), ``params``."""

    task: str
    op: str
    params: dict = field(default_factory=dict)

    def slots(self) -> dict:
        """Values for the instruction templates."""
        return dict(self.params)


@dataclass
class EditResult:
    """``image``: (H, W, 3) uint8; ``mask``: (H, W) bool, the pixels the edit may change;
    ``scene``: the edited scene (region edits) or None; ``caption``: the output caption."""

    image: np.ndarray
    mask: np.ndarray
    scene: Scene | None
    caption: str


def sample_edit(task: str, scene: Scene, rng: random.Random) -> EditSpec | None:
    """A random valid edit of ``task`` for ``scene``, or None when the scene admits none."""
    op = rng.choice(ALL_TASK_OPS[task])
    shapes = scene.shapes
    names = {s.name for s in shapes}
    if op == "add":
        free = scene.free_cells()
        options = [(c, k) for c in COLOURS for k in KINDS if f"{c} {k}" not in names]
        if not free or not options:
            return None
        colour, kind = rng.choice(options)
        return EditSpec(task, op, {"colour": colour, "kind": kind, "pos": POSITIONS[rng.choice(free)]})
    if op in ("remove", "detect", "segment", "recolour", "rekind", "texture"):
        if not shapes:
            return None
        s = rng.choice(shapes)
        p = {"shape": s.name}
        if op == "recolour":
            choices = [c for c in COLOURS if f"{c} {s.kind}" not in names]
            if not choices:
                return None
            p["colour"] = rng.choice(choices)
        elif op == "rekind":
            choices = [k for k in KINDS if f"{s.colour} {k}" not in names]
            if not choices:
                return None
            p["kind"] = rng.choice(choices)
        elif op == "texture":
            p["texture"] = rng.choice([t for t in TEXTURES if t != s.texture])
        return EditSpec(task, op, p)
    if op == "background":
        return EditSpec(task, op, {"bg": rng.choice([b for b in BACKGROUNDS if b != scene.background])})
    return EditSpec(task, op, {})


def _sketch(scene: Scene) -> np.ndarray:
    labels = world.label_map(scene)
    pad = np.pad(labels, 1, constant_values=-1)
    c = pad[1:-1, 1:-1]
    edge = (c >= 0) & (
        (pad[:-2, 1:-1] != c) | (pad[2:, 1:-1] != c) | (pad[1:-1, :-2] != c) | (pad[1:-1, 2:] != c)
    )
    out = np.full((*labels.shape, 3), 255, np.uint8)
    out[edge] = 0
    return out


def _box(mask: np.ndarray) -> np.ndarray:
    """The 1-px rectangle one pixel outside ``mask``'s bounding box (clipped to the image)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 1, h - 1)
    x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 1, w - 1)
    box = np.zeros_like(mask)
    box[y0, x0 : x1 + 1] = box[y1, x0 : x1 + 1] = True
    box[y0 : y1 + 1, x0] = box[y0 : y1 + 1, x1] = True
    return box


def pixel_filter(op: str, img: np.ndarray) -> np.ndarray:
    """The whole-image formulas (``night``, ``fog``, ``grayscale``, ``invert``, ``mirror``, ``sepia``)."""
    x = img.astype(np.float64)
    if op == "night":
        y = x * np.array(NIGHT)
    elif op == "fog":
        y = (1 - FOG_MIX) * x + FOG_MIX * FOG_LEVEL
    elif op == "grayscale":
        y = np.repeat((x @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    elif op == "invert":
        y = 255.0 - x
    elif op == "mirror":
        y = x[:, ::-1]
    elif op == "sepia":
        y = x @ SEPIA.T
    else:
        raise ValueError(f"not a pixel filter: {op!r}")
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _shape_region(scene: Scene, index: int) -> np.ndarray:
    return world.label_map(scene) == index


def apply_edit(scene: Scene, spec: EditSpec) -> EditResult:
    """The exact result of ``spec`` on ``scene``."""
    p, op = spec.params, spec.op
    src = world.render(scene)
    full = np.ones(src.shape[:2], bool)
    if op in ("add", "remove", "recolour", "rekind", "texture", "background"):
        shapes = list(scene.shapes)
        if op == "add":
            shapes.append(Shape(p["kind"], p["colour"], "large", POSITIONS.index(p["pos"]), "solid"))
            new = scene.with_shapes(shapes)
            mask = _shape_region(new, len(shapes) - 1)
        elif op == "background":
            new = Scene(p["bg"], scene.shapes, scene.size)
            mask = world.label_map(scene) < 0
        else:
            i = scene.find(p["shape"])
            old_mask = _shape_region(scene, i)
            s = shapes[i]
            if op == "remove":
                del shapes[i]
            elif op == "recolour":
                shapes[i] = Shape(s.kind, p["colour"], s.size, s.cell, s.texture)
            elif op == "rekind":
                shapes[i] = Shape(p["kind"], s.colour, s.size, s.cell, s.texture)
            else:
                shapes[i] = Shape(s.kind, s.colour, s.size, s.cell, p["texture"])
            new = scene.with_shapes(shapes)
            mask = old_mask if op == "remove" else old_mask | _shape_region(new, i)
        return EditResult(world.render(new), mask, new, new.caption())
    caption = scene.caption()
    if op in ("detect", "segment"):
        region = _shape_region(scene, scene.find(p["shape"]))
        out = src.copy()
        if op == "detect":
            mask = _box(region)
            out[mask] = MARK
            return EditResult(out, mask, None, f"{caption}, with a box around the {p['shape']}")
        blend = np.rint(0.5 * src.astype(np.float64) + 0.5 * np.array(MARK)).astype(np.uint8)
        out[region] = blend[region]
        return EditResult(out, region, None, f"{caption}, with the {p['shape']} highlighted")
    if op == "sketch":
        return EditResult(_sketch(scene), full, None, f"a line sketch of {caption}")
    suffix = {"night": "at night", "fog": "in fog", "grayscale": "in black and white", "invert": "as a negative",
              "mirror": "mirrored", "sepia": "in sepia"}[op]
    return EditResult(pixel_filter(op, src), full, None, f"{caption}, {suffix}")
