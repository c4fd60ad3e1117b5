"""Instruction templates for ShapesWorld edits, split into train and test phrasings (disjoint).

Keys are edit operations (``EditSpec.op``). Slots: ``{shape}`` ("red circle"), ``{colour}``, ``{kind}``,
``{pos}`` ("top left"), ``{bg}`` (a background colour), ``{texture}`` ("striped"). The test templates
never occur in training data, so the benchmark and the classifier are scored on wordings the models
have not seen (Emu Edit evaluates on human-written instructions, not its generated ones).
"""

from __future__ import annotations

import random

TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "add": (
        ["add a {colour} {kind} at the {pos}", "put a {colour} {kind} in the {pos}",
         "draw a {colour} {kind} at the {pos}", "place a {colour} {kind} in the {pos} spot",
         "add a {colour} {kind} to the {pos}"],
        ["insert a {colour} {kind} at the {pos}", "there should be a {colour} {kind} in the {pos}"],
    ),
    "remove": (
        ["remove the {shape}", "delete the {shape}", "take away the {shape}", "get rid of the {shape}",
         "erase the {shape}"],
        ["make the {shape} disappear", "remove the {shape} from the picture please"],
    ),
    "recolour": (
        ["make the {shape} {colour}", "change the colour of the {shape} to {colour}", "paint the {shape} {colour}",
         "turn the {shape} {colour}", "recolor the {shape} {colour}"],
        ["the {shape} should be {colour}", "colour the {shape} in {colour}"],
    ),
    "rekind": (
        ["turn the {shape} into a {kind}", "replace the {shape} with a {kind}", "change the {shape} to a {kind}",
         "make the {shape} a {kind}", "swap the {shape} for a {kind}"],
        ["the {shape} should become a {kind}", "transform the {shape} into a {kind}"],
    ),
    "texture": (
        ["make the {shape} {texture}", "give the {shape} a {texture} pattern", "fill the {shape} with a {texture} texture",
         "change the texture of the {shape} to {texture}", "the {shape} should look {texture}"],
        ["use a {texture} fill for the {shape}", "apply a {texture} texture to the {shape}"],
    ),
    "background": (
        ["change the background to {bg}", "make the background {bg}", "set a {bg} background",
         "paint the background {bg}", "replace the background with {bg}"],
        ["the background should be {bg}", "use {bg} as the background color"],
    ),
    "night": (
        ["make it night", "turn it into a night scene", "make it look like nighttime", "change the time to night",
         "it should be night"],
        ["show it at night", "make the scene dark like at night"],
    ),
    "fog": (
        ["make it foggy", "add fog", "cover the scene in fog", "make the weather foggy", "put a thick fog over it"],
        ["show it on a misty day", "let there be fog"],
    ),
    "sketch": (
        ["make it a sketch", "turn it into a line drawing", "draw it as an outline sketch", "render it as a pencil sketch",
         "convert to a sketch style"],
        ["show only the outlines like a drawing", "make it look hand sketched"],
    ),
    "detect": (
        ["detect the {shape}", "draw a box around the {shape}", "find the {shape}", "put a bounding box on the {shape}",
         "locate the {shape}"],
        ["mark where the {shape} is with a box", "show me the {shape} with a rectangle"],
    ),
    "segment": (
        ["segment the {shape}", "highlight the {shape}", "create a mask for the {shape}", "mask the {shape}",
         "select the {shape}"],
        ["outline the area of the {shape} with a mask", "give me a segmentation of the {shape}"],
    ),
    "grayscale": (
        ["make it black and white", "convert to grayscale", "remove all the colour", "apply a grayscale filter",
         "make it monochrome"],
        ["desaturate the image", "drain the colors from the picture"],
    ),
    "invert": (
        ["invert the colors", "make it a negative", "apply an invert filter", "invert the image",
         "turn it into a photo negative"],
        ["flip every color to its opposite", "show the colour negative"],
    ),
    # Held out of training: learned by task inversion.
    "mirror": (
        ["mirror the image", "flip it horizontally", "flip left and right", "show its mirror image",
         "reflect it left to right"],
        ["make a mirrored copy", "swap left and right sides"],
    ),
    "sepia": (
        ["apply a sepia filter", "make it sepia", "give it a sepia tone", "make it look like an old sepia photo",
         "use a sepia effect"],
        ["age the photo with brown tones", "old fashioned brownish tint"],
    ),
}

SPLITS = ("train", "test")


def phrase(op: str, slots: dict, split: str, rng: random.Random) -> str:
    """A random ``split`` phrasing of ``op`` with ``slots`` filled in."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; use one of {SPLITS}")
    templates = TEMPLATES[op][SPLITS.index(split)]
    return rng.choice(templates).format(**slots)
