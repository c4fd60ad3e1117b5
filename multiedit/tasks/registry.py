"""The task registry: every edit task is an entry that says how its data is made and filtered.

Emu Edit (Sheynin et al., CVPR 2024, §3.1) groups its tasks as region-based, free-form and vision
tasks. A new task is a new :class:`Task` entry (``register_task`` or a JSON/YAML file), never an
edit to shared code.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import MultiEditError

GROUPS = ("region", "free-form", "vision")

#: Pair-generation strategies understood by ``multiedit.datagen`` (stage 3).
PAIR_STRATEGIES = (
    "masked",  # P2P + latent blending inside the object's mask (local, add, remove, texture)
    "masked_complement",  # as masked, but the edit region is everything except the object (background)
    "p2p",  # Prompt-to-Prompt without a mask (global, style, text)
    "detect",  # the target draws the grounding box on the source
    "segment",  # the target overlays the grounding mask on the source
    "filter",  # a deterministic image filter (color)
    "image_to_image",  # a dense map (depth, edges, segmentation) computed from the source
    "learned",  # a task learned by inversion; no generation recipe
)


@dataclass(frozen=True)
class TaskExample:
    """One in-context example: an instruction and the captions and objects it implies."""

    instruction: str
    input_caption: str
    output_caption: str
    original_object: str = ""
    edited_object: str = ""

    def __post_init__(self):
        for name in ("instruction", "input_caption", "output_caption"):
            if not str(getattr(self, name)).strip():
                raise MultiEditError(f"A task example has an empty `{name}`; every example needs one.")


@dataclass(frozen=True)
class FilterThresholds:
    """Stage-4 thresholds (defaults are IP2P's CLIP thresholds, Brooks et al. §3.1.2)."""

    clip_direction: float = 0.2
    clip_image: float = 0.75
    clip_output: float = 0.2
    depth_l1: float | None = 0.15  # max mean |depth(src) - depth(edit)| on [0,1] maps; None = off
    detector: str | None = None  # "present" (edited object found), "absent" (original object gone)

    def __post_init__(self):
        if self.detector not in (None, "present", "absent"):
            raise MultiEditError(f"filters.detector is {self.detector!r}; use null, 'present' or 'absent'.")
        for name in ("clip_direction", "clip_image", "clip_output"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise MultiEditError(f"filters.{name}={getattr(self, name)} must be a cosine similarity in [-1, 1].")


@dataclass(frozen=True)
class Task:
    """A registered edit task.

    Attributes:
        name: lower-case identifier (``"add"``), used on the command line and in datasets.
        group: one of :data:`GROUPS`.
        description: one sentence for humans and for the LLM agent's system prompt.
        examples: in-context examples (instruction, captions, objects); at least 12 for built-ins.
        pair_strategy: one of :data:`PAIR_STRATEGIES`.
        filters: stage-4 thresholds.
        system_prompt: the LLM agent's system prompt for this task.
        verbs: verbs the instruction writer varies between (Emu Edit's diversity trick).
    """

    name: str
    group: str
    description: str
    examples: tuple[TaskExample, ...] = ()
    pair_strategy: str = "masked"
    filters: FilterThresholds = field(default_factory=FilterThresholds)
    system_prompt: str = ""
    verbs: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum() or self.name != self.name.lower():
            raise MultiEditError(
                f"Task name {self.name!r} is invalid; use lower-case letters, digits, '_' or '-'."
            )
        if self.group not in GROUPS:
            raise MultiEditError(f"Task {self.name!r} has group {self.group!r}; use one of {list(GROUPS)}.")
        if self.pair_strategy not in PAIR_STRATEGIES:
            raise MultiEditError(
                f"Task {self.name!r} has pair_strategy {self.pair_strategy!r}; use one of {list(PAIR_STRATEGIES)}."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "task definition") -> Task:
        """Build a task from plain data; unknown keys warn (older/newer files), missing keys fail."""
        if not isinstance(data, dict):
            raise MultiEditError(f"{source}: a task must be a mapping, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown task field(s) {unknown}.", stacklevel=2)
        missing = [k for k in ("name", "group", "description") if k not in data]
        if missing:
            raise MultiEditError(f"{source}: task is missing required field(s) {missing}.")
        kw = {k: v for k, v in data.items() if k in known}
        try:
            kw["examples"] = tuple(
                e if isinstance(e, TaskExample) else TaskExample(**e) for e in kw.get("examples", ())
            )
            filt = kw.get("filters", {})
            kw["filters"] = filt if isinstance(filt, FilterThresholds) else FilterThresholds(**filt)
        except (TypeError, MultiEditError) as exc:
            raise MultiEditError(f"{source}: task {data.get('name')!r} has a malformed field ({exc}).") from None
        verbs = kw.get("verbs", ())
        kw["verbs"] = (verbs,) if isinstance(verbs, str) else tuple(verbs)
        try:
            return cls(**kw)
        except MultiEditError as exc:
            raise MultiEditError(f"{source}: {exc}") from None


class TaskRegistry:
    """An ordered name → :class:`Task` mapping that refuses duplicates and lists names on a miss."""

    def __init__(self, tasks: Iterable[Task] = ()):
        self._tasks: dict[str, Task] = {}
        for t in tasks:
            self.register(t)

    def register(self, task: Task, *, replace: bool = False) -> Task:
        if task.name in self._tasks and not replace:
            raise MultiEditError(
                f"Task {task.name!r} is already registered; choose another name or pass replace=True."
            )
        self._tasks[task.name] = task
        return task

    def get(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise MultiEditError(f"Unknown task {name!r}. Available: {self.names()}.") from None

    def names(self) -> list[str]:
        return list(self._tasks)

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def load_file(self, path: str | Path) -> list[Task]:
        """Register the tasks in a JSON or YAML file (a task mapping, a list of them, or ``{"tasks": [...]}``)."""
        path = Path(path)
        if not path.is_file():
            raise MultiEditError(f"Task file {path} does not exist; pass a JSON or YAML file of task definitions.")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise MultiEditError(f"Task file {path} could not be parsed ({exc}); fix its syntax.") from None
        if isinstance(data, dict) and "tasks" in data:
            data = data["tasks"]
        items = data if isinstance(data, list) else [data]
        tasks = [Task.from_dict(d, source=str(path)) for d in items]
        clash = [t.name for t in tasks if t.name in self._tasks]
        if clash:  # all or nothing: check every name before registering any
            raise MultiEditError(f"{path}: task(s) {clash} are already registered; rename them in the file.")
        for t in tasks:
            self.register(t)
        return tasks
