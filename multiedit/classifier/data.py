"""Training data for the task classifier: ``(instruction, task)`` rows from files or the registry.

Sources (``--data``):

* ``registry``: the registry's in-context examples, augmented deterministically (see
  :func:`registry_instructions`) so a small classifier has enough rows to learn from.
* a folder of Parquet shards (a multiedit dataset: ``edit_prompt`` and ``task`` columns), or one
  ``.parquet`` file, read with ``datasets.load_dataset("parquet", ...)`` (only those two columns);
* a ``.jsonl`` file of ``{"instruction": ..., "task": ...}`` objects, one per line;
* a ``.csv`` file with an ``instruction,task`` header.

``edit_prompt`` is accepted wherever ``instruction`` is (and vice versa). Every label must name a
registered task; the first unknown one stops loading with the file, row and valid names.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import MultiEditError

logger = logging.getLogger(__name__)

#: Instruction column names, in order of preference.
INSTRUCTION_COLUMNS = ("instruction", "edit_prompt")
TASK_COLUMN = "task"

Row = tuple[str, str]  # (instruction, task)


def _registry():
    from .. import tasks

    return tasks.REGISTRY


def classifier_labels(data_tasks: Iterable[str] = ()) -> list[str]:
    """The label set: every registered task in registry order, except tasks learned by inversion
    (``pair_strategy == "learned"``) that the data does not contain.

    A learned task has no examples and no generation recipe; the classifier can only predict it if
    it was trained on data labelled with it, so it joins the label set only then.
    """
    present = set(data_tasks)
    return [t.name for t in _registry() if t.pair_strategy != "learned" or t.name in present]


def check_labels(rows: Iterable[tuple[str, str, str]], source: str) -> list[Row]:
    """Validate ``(instruction, task, where)`` triples; drop empty instructions (logged).

    Raises ``MultiEditError`` at the first task label the registry does not know.
    """
    registry = _registry()
    out: list[Row] = []
    empty = 0
    for instruction, task, where in rows:
        task = "" if task is None else str(task).strip()
        if task not in registry:
            raise MultiEditError(
                f"{source}, {where}: unknown task label {task!r}; valid task names are {registry.names()}."
            )
        instruction = "" if instruction is None else str(instruction).strip()
        if not instruction:
            empty += 1
            continue
        out.append((instruction, task))
    if empty:
        logger.warning("%s: skipped %d row(s) with an empty instruction.", source, empty)
    if not out:
        raise MultiEditError(f"{source} holds no labelled instructions; it needs instruction and task values.")
    return out


def load_labeled_instructions(data: str | Path, per_task: int = 200, seed: int = 0) -> list[Row]:
    """Read ``(instruction, task)`` rows from ``data`` (``"registry"`` or a path; see module doc)."""
    if str(data) == "registry":
        return registry_instructions(per_task=per_task, seed=seed)
    path = Path(data)
    if not path.exists():
        raise MultiEditError(
            f"Training data {path} does not exist; pass a Parquet folder, a .jsonl or .csv file, or `registry`."
        )
    if path.is_dir() or path.suffix.lower() == ".parquet":
        return check_labels(_parquet_rows(path), str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return check_labels(_jsonl_rows(path), str(path))
    if suffix == ".csv":
        return check_labels(_csv_rows(path), str(path))
    raise MultiEditError(
        f"Training data {path} has an unsupported format {suffix!r}; use a Parquet folder, .parquet, .jsonl or .csv."
    )


def _pick_instruction_column(columns: Iterable[str], source: str) -> str:
    columns = list(columns)
    for name in INSTRUCTION_COLUMNS:
        if name in columns:
            if TASK_COLUMN not in columns:
                break
            return name
    raise MultiEditError(
        f"{source} has columns {columns}; the classifier needs an instruction column "
        f"({' or '.join(INSTRUCTION_COLUMNS)}) and a {TASK_COLUMN!r} column."
    )


def _parquet_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    import pyarrow.parquet as pq
    from datasets import load_dataset

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise MultiEditError(f"Training data folder {path} holds no .parquet files.")
    column = _pick_instruction_column(pq.read_schema(files[0]).names, str(path))
    kwargs = {"data_dir": str(path)} if path.is_dir() else {"data_files": str(path)}
    ds = load_dataset("parquet", split="train", columns=[column, TASK_COLUMN], **kwargs)
    for i, row in enumerate(ds):
        yield row[column], row[TASK_COLUMN], f"row {i + 1}"


def _jsonl_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise MultiEditError(
                    f"{path}, line {lineno}: not valid JSON; write one JSON object per line."
                ) from None
            if not isinstance(obj, dict):
                raise MultiEditError(f"{path}, line {lineno}: expected a JSON object with instruction and task.")
            column = _pick_instruction_column(obj.keys(), f"{path}, line {lineno},")
            yield obj[column], obj[TASK_COLUMN], f"line {lineno}"


def _csv_rows(path: Path) -> Iterator[tuple[str, str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        column = _pick_instruction_column(reader.fieldnames or [], str(path))
        for row in reader:
            yield row[column], row[TASK_COLUMN], f"line {reader.line_num}"


# ---------------------------------------------------------------------------------------------------
# Registry-derived instructions
# ---------------------------------------------------------------------------------------------------

#: Ways people wrap a request; applied on top of the registry's own wording.
WRAPPERS = ("{}", "please {}", "{}, please", "can you {}?", "could you {}?", "I'd like you to {}")
_POLITE = re.compile(r"^(please|can you|could you|would you|i'd like you to)\s+", re.IGNORECASE)


def _word_re(phrase: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", re.IGNORECASE)


def _object_variants(instruction: str, phrase: str, pool: list[str]) -> set[str]:
    """Replace ``phrase`` (or, if absent, its head noun) in ``instruction`` with each of ``pool``."""
    if not phrase:
        return set()
    pattern = _word_re(phrase)
    if not pattern.search(instruction):
        head = phrase.split()[-1]
        pattern, pool = _word_re(head), [p.split()[-1] for p in pool]
        if len(head) < 3 or not pattern.search(instruction):
            return set()
    return {pattern.sub(lambda _m, s=sub: s, instruction, count=1) for sub in pool}


def _verb_variants(instruction: str, verbs: tuple[str, ...]) -> set[str]:
    """Swap a leading task verb (after any polite prefix) for each of the task's other verbs."""
    m = _POLITE.match(instruction)
    prefix, body = (instruction[: m.end()], instruction[m.end() :]) if m else ("", instruction)
    for verb in sorted(verbs, key=len, reverse=True):  # "take away" before "take"
        if re.match(rf"{re.escape(verb)}\b", body, re.IGNORECASE):
            rest = body[len(verb) :]
            return {prefix + other + rest for other in verbs if other.lower() != verb.lower()}
    return set()


def _wrap(instruction: str, wrapper: str, verbs: tuple[str, ...]) -> str:
    """Wrap an imperative (one that starts with a task verb) in ``wrapper``; leave others as they are."""
    starts_with_verb = any(re.match(rf"{re.escape(v)}\b", instruction, re.IGNORECASE) for v in verbs)
    if wrapper == "{}" or not starts_with_verb or "please" in instruction.lower():
        return instruction
    core = instruction.rstrip("?.! ")
    core = core[0].lower() + core[1:] if core[:1].isupper() and not core[1:2].isupper() else core
    return wrapper.format(core)


def task_instructions(task) -> list[str]:
    """Every augmented instruction for one task, sorted (so sampling from it is deterministic).

    For each example: its instruction; the same with its leading verb swapped for each of the
    task's ``verbs`` (as Emu Edit varies its LLM agents' verbs for diversity); each of those with
    its ``original_object`` / ``edited_object`` swapped for the same field of the task's other
    examples; and every imperative among them also in polite forms (:data:`WRAPPERS`). The results
    are not always grammatical ("swap the car red"), but each still reads as its own task.
    """
    originals = sorted({e.original_object for e in task.examples if e.original_object})
    edited = sorted({e.edited_object for e in task.examples if e.edited_object})
    out: set[str] = set()
    for ex in task.examples:
        base = {ex.instruction.strip()}
        base |= _verb_variants(ex.instruction, task.verbs)
        objects = set()
        for text in base:
            objects |= _object_variants(text, ex.original_object, [o for o in originals if o != ex.original_object])
            objects |= _object_variants(text, ex.edited_object, [o for o in edited if o != ex.edited_object])
        for text in base | objects:
            out.update(_wrap(text, w, task.verbs) for w in WRAPPERS)
    return sorted(out)


def registry_instructions(per_task: int = 200, seed: int = 0, tasks: Iterable[str] | None = None) -> list[Row]:
    """Up to ``per_task`` augmented ``(instruction, task)`` rows per registered task (see
    :func:`task_instructions`), drawn with ``random.Random(seed)``; tasks without examples give none.
    """
    registry = _registry()
    names = list(tasks) if tasks is not None else classifier_labels()
    rng = random.Random(seed)
    rows: list[Row] = []
    seen: dict[str, str] = {}
    for name in names:
        candidates = [s for s in task_instructions(registry.get(name)) if seen.setdefault(s.lower(), name) == name]
        chosen = candidates if len(candidates) <= per_task else rng.sample(candidates, per_task)
        rows.extend((text, name) for text in chosen)
    if not rows:
        raise MultiEditError("The task registry has no examples to train the classifier on; pass --data with a file.")
    return rows


def stratified_split(rows: list[Row], val_fraction: float, seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Split ``rows`` into (train, val) with ``val_fraction`` of each task in val (at least one row
    of every task with two or more), after dropping exact duplicates so no instruction is in both.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise MultiEditError(f"--val-fraction must be in [0, 1), got {val_fraction}.")
    by_task: dict[str, list[str]] = defaultdict(list)
    seen = set()
    for text, task in rows:
        if (text, task) not in seen:
            seen.add((text, task))
            by_task[task].append(text)
    rng = random.Random(seed)
    train: list[Row] = []
    val: list[Row] = []
    for task in sorted(by_task):
        texts = sorted(by_task[task])
        rng.shuffle(texts)
        n_val = 0 if val_fraction == 0 or len(texts) < 2 else max(1, round(len(texts) * val_fraction))
        val.extend((t, task) for t in texts[:n_val])
        train.extend((t, task) for t in texts[n_val:])
    rng.shuffle(train)
    return train, val
