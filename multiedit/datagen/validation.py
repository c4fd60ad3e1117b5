"""Validation of instruction answers: the JSON schema sent to the LLM and the per-task rules.

LLM output is untrusted data (ARCHITECTURE.md, stage 1): it is parsed as JSON, checked against
:func:`answer_schema`, then against the common rules and the task's own rule. Nothing in it is
executed or used as a path. A rule returns ``None`` when the answer passes, else one short reason
that ends up in the failures file.

The per-task rules live in one table, :data:`TASK_RULES`, keyed by task name; a task that is not in
it (a user-added task) gets :func:`default_rule`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

#: The four fields the LLM writes (Emu Edit's agent output).
ANSWER_FIELDS = ("instruction", "output_caption", "original_object", "edited_object")

#: Maximum length in characters of each field; also sent as ``maxLength`` in the schema, so a
#: constrained decoder cannot run on forever.
MAX_CHARS = {"instruction": 200, "output_caption": 300, "original_object": 60, "edited_object": 60}

_ARTICLES = {"a", "an", "the", "some"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def answer_schema(max_chars: dict[str, int] | None = None) -> dict:
    """The strict JSON schema of one answer: four string fields, all required, nothing else.

    ``max_chars`` overrides :data:`MAX_CHARS` per field (tests use small limits to keep a random
    model's answers short).
    """
    limits = {**MAX_CHARS, **(max_chars or {})}
    props = {}
    for name in ANSWER_FIELDS:
        props[name] = {"type": "string", "maxLength": int(limits[name])}
        if name in ("instruction", "output_caption"):
            props[name]["minLength"] = 1
    return {
        "type": "object",
        "properties": props,
        "required": list(ANSWER_FIELDS),
        "additionalProperties": False,
    }


def normalize(text: str) -> str:
    """Lower-case, NFKC, punctuation to spaces, whitespace collapsed: the form captions are compared in."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def object_phrase(obj: str) -> str:
    """``obj`` normalized with leading articles dropped (``"A red hat"`` → ``"red hat"``)."""
    words = normalize(obj).split()
    while words and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def mentions(caption: str, obj: str, *, head_noun: bool = False) -> bool:
    """Whether ``caption`` mentions ``obj`` as whole words.

    The full phrase (articles dropped) must appear; with ``head_noun`` its last word alone is
    enough (``"a small dog"`` is mentioned by ``"a dog on a sofa"``), and a plural ``s``/``es`` on
    either side is tolerated.
    """
    phrase = object_phrase(obj)
    if not phrase:
        return False
    padded = f" {normalize(caption)} "
    if f" {phrase} " in padded:
        return True
    if head_noun:
        head = phrase.split()[-1]
        words = set(padded.split())
        stem = head[:-2] if head.endswith("es") else head[:-1] if head.endswith("s") else head
        return bool({head, stem, stem + "s", stem + "es"} & words)
    return False


# --- rules -------------------------------------------------------------------------------------

Rule = Callable[[dict, str], "str | None"]


def _need(answer: dict, field: str) -> str | None:
    return None if answer[field].strip() else f"{field} is empty"


def _object_in_output(field: str) -> Rule:
    def rule(answer: dict, input_caption: str) -> str | None:
        reason = _need(answer, field)
        if reason:
            return reason
        if not mentions(answer["output_caption"], answer[field], head_noun=True):
            return f"{field} {answer[field]!r} does not appear in output_caption"
        return None

    rule.__doc__ = f"``{field}`` is non-empty and appears in the output caption."
    return rule


def default_rule(answer: dict, input_caption: str) -> str | None:
    """Only the common checks (used for tasks without their own rule)."""
    return None


def rule_add(answer: dict, input_caption: str) -> str | None:
    """``add``: the added object is named and appears in the output caption."""
    return _object_in_output("edited_object")(answer, input_caption)


def rule_remove(answer: dict, input_caption: str) -> str | None:
    """``remove``: the removed object is named, is in the input caption and gone from the output."""
    reason = _need(answer, "original_object")
    if reason:
        return reason
    obj = answer["original_object"]
    if not mentions(input_caption, obj, head_noun=True):
        return f"original_object {obj!r} is not in the input caption"
    if mentions(answer["output_caption"], obj):
        return f"original_object {obj!r} still appears in output_caption"
    return None


def rule_local(answer: dict, input_caption: str) -> str | None:
    """``local``: an object of the input is changed into the edited object, which the output names."""
    reason = _need(answer, "original_object") or _object_in_output("edited_object")(answer, input_caption)
    if reason:
        return reason
    if object_phrase(answer["original_object"]) == object_phrase(answer["edited_object"]):
        return "original_object and edited_object are the same"
    return None


def rule_grounded(answer: dict, input_caption: str) -> str | None:
    """``detect``/``segment``: the target object is named and is in the input caption."""
    reason = _need(answer, "original_object")
    if reason:
        return reason
    if not mentions(input_caption, answer["original_object"], head_noun=True):
        return f"original_object {answer['original_object']!r} is not in the input caption"
    return None


#: Task name → rule. Tasks not listed use :func:`default_rule`.
TASK_RULES: dict[str, Rule] = {
    "add": rule_add,
    "remove": rule_remove,
    "local": rule_local,
    "texture": _object_in_output("edited_object"),
    "background": _object_in_output("edited_object"),
    "text": _object_in_output("edited_object"),
    "global": default_rule,  # output differs (common check)
    "style": default_rule,
    "color": default_rule,
    "image_to_image": default_rule,
    "detect": rule_grounded,
    "segment": rule_grounded,
}


def rule_for(task_name: str) -> Rule:
    return TASK_RULES.get(task_name, default_rule)


# --- entry points ------------------------------------------------------------------------------


def check_answer(
    answer: Any, task_name: str, input_caption: str, max_chars: dict[str, int] | None = None
) -> str | None:
    """Validate a parsed answer; ``None`` if it passes, else the first reason it fails.

    Common checks: a JSON object with exactly the four string fields; no control characters;
    each field within its length limit; ``instruction`` and ``output_caption`` non-empty; the output
    caption differs from the input caption after :func:`normalize`. Then the task's rule.
    """
    if not isinstance(answer, dict):
        return f"answer is a JSON {type(answer).__name__}, not an object"
    missing = [f for f in ANSWER_FIELDS if f not in answer]
    if missing:
        return f"missing field(s) {missing}"
    extra = sorted(set(answer) - set(ANSWER_FIELDS))
    if extra:
        return f"unexpected field(s) {extra}"
    limits = {**MAX_CHARS, **(max_chars or {})}
    for name in ANSWER_FIELDS:
        value = answer[name]
        if not isinstance(value, str):
            return f"{name} is a {type(value).__name__}, not a string"
        if _CONTROL.search(value):
            return f"{name} contains control characters"
        if len(value) > limits[name]:
            return f"{name} is longer than {limits[name]} characters"
    for name in ("instruction", "output_caption"):
        if not normalize(answer[name]):
            return f"{name} is empty"
    if normalize(answer["output_caption"]) == normalize(input_caption):
        return "output_caption equals the input caption"
    return rule_for(task_name)(answer, input_caption)


def parse_answer(
    content: str, task_name: str, input_caption: str, max_chars: dict[str, int] | None = None
) -> tuple[dict | None, str | None]:
    """Parse the LLM's message content and validate it: ``(answer, None)`` or ``(None, reason)``.

    The answer's strings are stripped of surrounding whitespace.
    """
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, TypeError) as exc:
        snippet = (content or "")[:60]
        return None, f"answer is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): {snippet!r}"
    if isinstance(data, dict):
        data = {k: v.strip() if isinstance(v, str) else v for k, v in data.items()}
    reason = check_answer(data, task_name, input_caption, max_chars)
    return (None, reason) if reason else (data, None)
