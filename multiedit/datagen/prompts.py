"""Prompts for the per-task instruction agents (Emu Edit §3.1).

Emu Edit gives each task its own LLM "agent": a system prompt describing the task and in-context
examples. For diversity, each request shows a random subset (about 60%) of the task's examples in a
random order and asks for a randomly chosen verb from the task's verb list. The choice is seeded by
``(seed, task, caption_id)``, so a rerun sends exactly the same prompt for the same caption.

The in-context examples are chat turns: the user gives a caption, the assistant answers with the
JSON object the schema asks for, so the model sees the answer format it must produce.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass

from ..tasks import Task, TaskExample
from .validation import ANSWER_FIELDS

#: Fraction of a task's in-context examples shown per request (Emu Edit: "a random 60%").
DEFAULT_EXAMPLE_FRACTION = 0.6

ANSWER_FORMAT = (
    "Answer with one JSON object and nothing else. Its string fields are: "
    '"instruction" (the edit instruction, an imperative sentence), '
    '"output_caption" (the caption of the image after the edit; it must differ from the input caption), '
    '"original_object" (the object of the input image the edit acts on, or "" if none) and '
    '"edited_object" (the object or attribute the edit produces, or "" if none).'
)


@dataclass(frozen=True)
class Prompt:
    """One request's prompt.

    Attributes:
        messages: OpenAI chat messages (system, example user/assistant pairs, the caption).
        prompt_id: 12 hex digits identifying the system prompt + chosen examples.
        verb: the verb the instruction is asked to use (``None`` if the task lists none).
        example_indices: indices into ``task.examples`` of the examples shown, in shown order.
        sampling_seed: a 31-bit seed for the server's sampler, derived like the rest.
    """

    messages: list[dict]
    prompt_id: str
    verb: str | None
    example_indices: tuple[int, ...]
    sampling_seed: int


def request_rng(seed: int, task_name: str, caption_id: str) -> random.Random:
    """The random generator of one request: independent of order, process and ``PYTHONHASHSEED``."""
    digest = hashlib.sha256(f"{seed}\x1f{task_name}\x1f{caption_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def system_prompt(task: Task) -> str:
    """The task's system prompt (its own, or one built from its description) plus the answer format."""
    intro = task.system_prompt.strip() or (
        f'You write image-editing instructions for the task "{task.name}": {task.description.strip()} '
        "Given the caption of an image, write one instruction for this kind of edit, the caption of the "
        "image after the edit, and the objects involved."
    )
    return f"{intro}\n\n{ANSWER_FORMAT}"


def user_message(caption: str, verb: str | None) -> str:
    text = f"Input caption: {caption.strip()}"
    if verb:
        text += f'\nUse the verb "{verb}" in the instruction.'
    return text


def example_answer(example: TaskExample) -> str:
    return json.dumps({name: getattr(example, name) for name in ANSWER_FIELDS}, ensure_ascii=False)


def _example_verb(example: TaskExample, verbs: tuple[str, ...]) -> str | None:
    """The task verb an example's instruction starts with, so the examples follow the verb hint too."""
    text = example.instruction.strip().lower()
    for verb in sorted(verbs, key=len, reverse=True):
        if text.startswith(verb.lower() + " ") or text == verb.lower():
            return verb
    return None


def choose_examples(task: Task, rng: random.Random, fraction: float = DEFAULT_EXAMPLE_FRACTION) -> list[int]:
    """Indices of ``ceil(fraction * n)`` examples (at least one when the task has any), shuffled."""
    n = len(task.examples)
    if n == 0:
        return []
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    return rng.sample(range(n), k)


def build_prompt(
    task: Task, caption: str, caption_id: str, *, seed: int = 0, example_fraction: float = DEFAULT_EXAMPLE_FRACTION
) -> Prompt:
    """The seeded prompt for one caption; the same ``(seed, task, caption_id)`` gives the same prompt."""
    rng = request_rng(seed, task.name, caption_id)
    indices = choose_examples(task, rng, example_fraction)
    verb = rng.choice(task.verbs) if task.verbs else None
    sampling_seed = rng.getrandbits(31)
    messages = [{"role": "system", "content": system_prompt(task)}]
    for i in indices:
        ex = task.examples[i]
        messages.append({"role": "user", "content": user_message(ex.input_caption, _example_verb(ex, task.verbs))})
        messages.append({"role": "assistant", "content": example_answer(ex)})
    prompt_id = hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]
    messages.append({"role": "user", "content": user_message(caption, verb)})
    return Prompt(messages, prompt_id, verb, tuple(indices), sampling_seed)
