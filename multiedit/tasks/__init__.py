"""Task registry: the Emu Edit tasks and any the user adds.

>>> from multiedit.tasks import get_task, list_tasks
>>> get_task("add").group
'region'
"""

from .builtin import BUILTIN_TASKS
from .registry import GROUPS, PAIR_STRATEGIES, FilterThresholds, Task, TaskExample, TaskRegistry

#: The process-wide registry, pre-filled with the built-in tasks in a fixed order.
REGISTRY = TaskRegistry(BUILTIN_TASKS)


def get_task(name: str) -> Task:
    """Look a task up by name; an unknown name raises an error listing the valid ones."""
    return REGISTRY.get(name)


def list_tasks() -> list[str]:
    """Names of all registered tasks, built-ins first, in registration order."""
    return REGISTRY.names()


def register_task(task: Task | dict, *, replace: bool = False) -> Task:
    """Add a task from Python (a :class:`Task` or its dict form); duplicates are refused."""
    if isinstance(task, dict):
        task = Task.from_dict(task)
    return REGISTRY.register(task, replace=replace)


def load_tasks_file(path) -> list[Task]:
    """Register every task in a JSON or YAML file."""
    return REGISTRY.load_file(path)


__all__ = [
    "GROUPS",
    "PAIR_STRATEGIES",
    "REGISTRY",
    "FilterThresholds",
    "Task",
    "TaskExample",
    "TaskRegistry",
    "get_task",
    "list_tasks",
    "load_tasks_file",
    "register_task",
]
