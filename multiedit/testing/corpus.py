"""A small local text corpus for training the zoo's tokenizers (registry examples + common words)."""

from __future__ import annotations

COMMON = (
    "a an the of and with in on at to from into onto over under near next behind front left right "
    "make turn change replace remove add put place insert delete erase take away get rid show draw "
    "color colour red green blue yellow orange purple pink black white gray grey brown gold silver "
    "dog cat horse bird car tree house man woman person child boat sky sea mountain road city street "
    "field forest table chair cup bottle book flower hat shirt dress background foreground image photo "
    "picture painting sketch style night day winter summer snow rain sunset sunny cloudy fog lighting "
    "texture wood stone glass metal marble detect segment box mask outline depth map edge filter "
    "sepia blur sharpen brighter darker contrast circle square triangle star shape small large big"
)


def corpus_lines() -> list[str]:
    """Lines of text covering the registry's instructions and captions plus common words."""
    from ..tasks import REGISTRY

    lines = [COMMON]
    for task in REGISTRY:
        lines.append(task.description)
        for ex in task.examples:
            lines.extend([ex.instruction, ex.input_caption, ex.output_caption])
    return lines
