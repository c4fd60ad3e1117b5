"""The offline instruction writer (``--llm template``): deterministic, rule-based, no LLM.

It fills per-task sentence templates with words from the task registry (the objects named in the
tasks' in-context examples) and small built-in vocabularies. It exists for the embedded default
dataset, demos and tests; its records say ``writer: "template"`` so they are never mistaken for LLM
output. The same ``(seed, task, caption_id)`` always gives the same answer, and every answer goes
through the same validation as an LLM answer.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..tasks import REGISTRY, Task
from ..tasks import builtin as _builtin
from .prompts import request_rng
from .validation import normalize, object_phrase

WRITER_ID = "template-v1"

OBJECTS = (
    "hat",
    "dog",
    "cat",
    "bird",
    "boat",
    "tree",
    "car",
    "flower",
    "balloon",
    "bench",
    "lamp",
    "umbrella",
    "kite",
    "vase",
)
MATERIALS = ("marble", "wooden", "golden", "glass", "stone", "knitted")
BACKGROUNDS = ("a sandy beach", "a snowy forest", "a busy city street", "a desert", "outer space", "a mountain lake")
GLOBAL_EDITS = (  # (instruction, caption suffix, edited object)
    ("Make it night time", "at night", "night"),
    ("Make it snow", "in the snow", "snow"),
    ("Make it a rainy day", "on a rainy day", "rain"),
    ("Make it sunset", "at sunset", "sunset"),
    ("Make it foggy", "in thick fog", "fog"),
    ("Make it autumn", "in autumn", "autumn"),
)
STYLES = ("watercolor painting", "pencil sketch", "oil painting", "pixel art image", "cartoon", "mosaic")
WORDS = ("hello", "open", "sale", "welcome", "stop", "love")
# Color filters and dense maps must be ones stage 3 can compute: take the registry's lists.
FILTERS = tuple(getattr(_builtin, "COLOR_FILTERS", ("grayscale", "sepia", "inverted", "blurred")))
MAPS = tuple(getattr(_builtin, "IMAGE_MAPS", ("depth map", "normal map", "edge map", "segmentation map")))

# Words that follow an article but are not the object: framing nouns, quantities, adjectives.
_NOT_OBJECTS = set(
    "photo picture image painting view close up closeup shot drawing illustration scene group couple pair "
    "lot few small large big little old young red green blue yellow orange purple pink black white gray grey "
    "brown gold silver tall short beautiful cute new wooden empty single".split()
)
_STOP = {"a", "an", "the", "of", "with", "and", "on", "in", "at", "to", "near", "next", "by", "is", "are"}

ADD_VERBS = ("add", "put", "insert", "include")
REMOVE_VERBS = ("remove", "delete", "erase", "take away")
DETECT_VERBS = ("detect", "find", "locate")
SEGMENT_VERBS = ("segment", "mask", "outline")


# Which example fields name concrete objects (others name seasons, styles, materials, filters).
_OBJECT_FIELDS = {
    "add": ("edited_object",),
    "remove": ("original_object",),
    "local": ("original_object", "edited_object"),
    "detect": ("original_object",),
    "segment": ("original_object",),
}


@lru_cache(maxsize=1)
def registry_objects() -> tuple[str, ...]:
    """:data:`OBJECTS` plus the single-word objects named in the registry's object-level examples."""
    found = []
    for task in REGISTRY:
        for ex in task.examples:
            for name in _OBJECT_FIELDS.get(task.name, ()):
                words = object_phrase(getattr(ex, name)).split()
                if (
                    len(words) == 1
                    and words[0].isalpha()
                    and words[0] not in _NOT_OBJECTS
                    and not words[0].endswith("s")
                ):
                    found.append(words[0])
    return tuple(dict.fromkeys([*OBJECTS, *found]))


def find_object(caption: str, *, last: bool = False) -> str | None:
    """A noun of ``caption`` to act on: known object words and words right after an article, the
    first (or ``last``) of them by position."""
    words = normalize(caption).split()
    known = set(registry_objects())
    candidates = [
        w
        for i, w in enumerate(words)
        if w in known
        or (i > 0 and words[i - 1] in ("a", "an", "the") and w.isalpha() and w not in _NOT_OBJECTS and w not in _STOP)
    ]
    if not candidates:
        return None
    return candidates[-1] if last else candidates[0]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _verb(task: Task, default: tuple[str, ...], rng) -> str:
    verbs = [v for v in task.verbs if v] or list(default)
    return rng.choice(verbs)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _replace_object(caption: str, obj: str, new: str) -> str:
    """Replace the first ``obj`` with ``new``, fixing an article right before it (``a dog`` → ``an owl``)."""
    pattern = re.compile(rf"\b(?:(a|an)\s+)?{re.escape(obj)}\b", re.IGNORECASE)
    return pattern.sub(lambda m: f"{article(new)} {new}" if m.group(1) else new, caption, count=1)


_CONNECTORS = r"with|and|holding|next to|near|beside|behind|in front of|on|in|at|under|by|of"


def _remove_object(caption: str, obj: str) -> str:
    """Drop the noun phrase of ``obj`` and the preposition tying it in (``a man with a hat`` → ``a man``)."""
    pattern = re.compile(
        rf"(?:\s*\b(?:{_CONNECTORS})\b)?\s*\b(?:(?:a|an|the|some|two|three)\s+)?"
        rf"(?:[a-z]+\s+)?{re.escape(obj)}(?:s|es)?\b",
        re.IGNORECASE,
    )
    out = " ".join(pattern.sub("", caption, count=1).split()).strip(" ,.")
    return out or "an empty scene"


def write_template_answer(
    task: Task, caption: str, caption_id: str, seed: int = 0
) -> tuple[dict | None, str | None, str]:
    """Write one answer for ``caption``: ``(answer, None, template_id)`` or ``(None, reason, template_id)``.

    ``answer`` has the four schema fields. ``template_id`` names the template used
    (``"template-v1/add"``), so records show which rule wrote them.
    """
    rng = request_rng(seed, task.name, caption_id)
    name = task.name
    tid = f"{WRITER_ID}/{name}"
    cap = caption.strip().rstrip(".")
    orig = edited = ""
    if name == "add":
        present = set(normalize(cap).split())
        choices = [o for o in registry_objects() if o not in present] or list(OBJECTS)
        edited = rng.choice(choices)
        instruction = f"{_verb(task, ADD_VERBS, rng)} {article(edited)} {edited}"
        output = f"{cap} with {article(edited)} {edited}"
    elif name in ("remove", "local", "texture", "detect", "segment"):
        orig = find_object(cap, last=name == "remove")
        if orig is None:
            return None, "the template writer found no object in the caption", tid
        if name == "remove":
            instruction = f"{_verb(task, REMOVE_VERBS, rng)} the {orig}"
            output = _remove_object(cap, orig)
        elif name == "local":
            present = set(normalize(cap).split())
            edited = rng.choice([o for o in registry_objects() if o not in present])
            instruction = f"Replace the {orig} with {article(edited)} {edited}"
            output = _replace_object(cap, orig, edited)
        elif name == "texture":
            material = rng.choice(MATERIALS)
            edited = f"{material} {orig}"
            instruction = f"Make the {orig} {material}"
            output = _replace_object(cap, orig, edited)
        elif name == "detect":
            instruction = f"{_verb(task, DETECT_VERBS, rng)} the {orig}"
            output = f"{cap} with a box around the {orig}"
        else:
            instruction = f"{_verb(task, SEGMENT_VERBS, rng)} the {orig}"
            output = f"{cap} with the {orig} highlighted by a mask"
    elif name == "background":
        scene = rng.choice(BACKGROUNDS)
        edited = object_phrase(scene)
        instruction = f"Change the background to {scene}"
        output = f"{cap} in front of {scene}"
    elif name == "global":
        instruction, suffix, edited = rng.choice(GLOBAL_EDITS)
        output = f"{cap} {suffix}"
    elif name == "style":
        style = rng.choice(STYLES)
        edited = style
        instruction = f"Turn it into {article(style)} {style}"
        output = f"{article(style)} {style} of {cap}"
    elif name == "text":
        word = rng.choice(WORDS)
        edited = word
        instruction = f'Write the word "{word}" on it'
        output = f'{cap} with the word "{word}" written on it'
    elif name == "color":
        filt = rng.choice(FILTERS)
        edited = filt
        instruction = f"Make the image {filt}"
        output = f"{article(filt)} {filt} image of {cap}"
    elif name == "image_to_image":
        kind = rng.choice(MAPS)
        edited = kind
        instruction = f"Generate the {kind} of this image"
        output = f"the {kind} of {cap}"
    else:  # a user-added task: a generic instruction built from its name, labelled by the template id
        verb = task.verbs[0] if task.verbs else "apply"
        label = name.replace("_", " ").replace("-", " ")
        tid = f"{WRITER_ID}/generic"
        instruction = f"{verb} {label}" if task.verbs else f"Apply {label}"
        output = f"{cap}, {label}"
    answer = {
        "instruction": _sentence(instruction),
        "output_caption": output,
        "original_object": orig,
        "edited_object": edited,
    }
    return answer, None, tid
