"""The task registry and the built-in Emu Edit task definitions."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from multiedit.errors import MultiEditError
from multiedit.tasks import (
    GROUPS,
    PAIR_STRATEGIES,
    REGISTRY,
    FilterThresholds,
    Task,
    TaskExample,
    TaskRegistry,
    get_task,
    list_tasks,
)
from multiedit.tasks.builtin import BUILTIN_TASKS, COLOR_FILTERS, IMAGE_MAPS

EXPECTED = [
    ("local", "region", "masked"),
    ("remove", "region", "masked"),
    ("add", "region", "masked"),
    ("texture", "region", "masked"),
    ("background", "region", "masked_complement"),
    ("global", "free-form", "p2p"),
    ("style", "free-form", "p2p"),
    ("text", "free-form", "p2p"),
    ("detect", "vision", "detect"),
    ("segment", "vision", "segment"),
    ("color", "vision", "filter"),
    ("image_to_image", "vision", "image_to_image"),
]
#: Tasks whose original_object is grounded in the source image, so the input caption must name it.
GROUNDED = {"local", "remove", "texture", "background", "detect", "segment"}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def _task_dict(name: str = "sketch_to_photo", **over) -> dict:
    data = {
        "name": name,
        "group": "vision",
        "description": "Turn a sketch into a photo.",
        "examples": [
            {"instruction": "make this sketch real", "input_caption": "a sketch of a cat",
             "output_caption": "a photo of a cat", "original_object": "sketch", "edited_object": "photo"},
        ],
        "pair_strategy": "learned",
        "filters": {"clip_direction": 0.1, "depth_l1": None},
        "system_prompt": "Write an instruction.",
        "verbs": ["make", "turn"],
    }
    data.update(over)
    return data


# --- built-in definitions ----------------------------------------------------------------------------


def test_builtin_tasks_in_order_with_groups_and_strategies():
    assert [(t.name, t.group, t.pair_strategy) for t in BUILTIN_TASKS] == EXPECTED
    # the global registry starts with exactly these, in this order
    assert list_tasks()[: len(EXPECTED)] == [n for n, _, _ in EXPECTED]
    assert get_task("add") is BUILTIN_TASKS[2]


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_builtin_task_is_complete(task):
    assert task.group in GROUPS and task.pair_strategy in PAIR_STRATEGIES
    assert task.description.strip().endswith(".") and task.description.count(". ") == 0  # one sentence
    assert 4 <= len(task.verbs) <= 8 and len(set(task.verbs)) == len(task.verbs)
    prompt = task.system_prompt
    for key in ("instruction", "output_caption", "original_object", "edited_object", "JSON"):
        assert key in prompt, f"{task.name} system prompt does not mention {key}"
    assert task.name in prompt
    assert len(task.examples) >= 12
    for ex in task.examples:
        assert isinstance(ex, TaskExample)
        assert ex.instruction.strip() and ex.input_caption.strip() and ex.output_caption.strip()
        assert ex.output_caption.strip().lower() != ex.input_caption.strip().lower(), ex
        assert ex.original_object == ex.original_object.strip() and ex.edited_object == ex.edited_object.strip()
    # in-context examples must be varied, not the same instruction or caption repeated
    assert len({e.instruction.lower() for e in task.examples}) == len(task.examples)
    assert len({e.input_caption.lower() for e in task.examples}) == len(task.examples)


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_builtin_examples_follow_object_conventions(task):
    for ex in task.examples:
        inp, out = ex.input_caption.lower(), ex.output_caption.lower()
        if task.name in GROUNDED:
            assert ex.original_object, f"{task.name}: grounded task needs original_object: {ex}"
            assert ex.original_object.lower() in inp, f"{task.name}: original_object not in input caption: {ex}"
        if ex.edited_object:
            assert ex.edited_object.lower() in out, f"{task.name}: edited_object not in output caption: {ex}"
        if task.name in ("remove", "detect", "segment"):
            assert ex.edited_object == ""
        if task.name in ("global", "style", "color"):
            assert ex.original_object == "" and ex.edited_object


def test_add_examples_added_object_in_output_and_new():
    for ex in get_task("add").examples:
        assert ex.edited_object
        assert _words(ex.edited_object) <= _words(ex.output_caption), ex
        head = ex.edited_object.split()[-1].lower()
        assert head not in _words(ex.input_caption), f"added object already in the input: {ex}"
        if ex.original_object:
            assert ex.original_object.lower() in ex.input_caption.lower(), ex


def test_remove_examples_removed_object_absent_from_output():
    for ex in get_task("remove").examples:
        assert ex.original_object.lower() not in ex.output_caption.lower(), ex
        head = ex.original_object.split()[-1].lower()
        assert head not in _words(ex.output_caption), ex


def test_local_examples_edited_object_in_output_and_changed():
    for ex in get_task("local").examples:
        assert ex.edited_object.lower() in ex.output_caption.lower(), ex
        assert ex.edited_object.lower() != ex.original_object.lower(), ex


def test_vision_vocabularies():
    for ex in get_task("color").examples:
        assert ex.edited_object in COLOR_FILTERS, ex
    assert {e.edited_object for e in get_task("color").examples} == set(COLOR_FILTERS)
    for ex in get_task("image_to_image").examples:
        assert ex.edited_object in IMAGE_MAPS + ("photo",), ex
        # exactly one side is a map: photo -> map or map -> photo
        assert (ex.original_object in IMAGE_MAPS) == (ex.edited_object == "photo"), ex
    i2i = get_task("image_to_image").examples
    assert "photo" in {e.edited_object for e in i2i}  # both directions are covered
    assert set(IMAGE_MAPS) <= {e.edited_object for e in i2i} | {e.original_object for e in i2i}


def test_no_instruction_shared_between_tasks():
    seen: dict[str, str] = {}
    for task in BUILTIN_TASKS:
        for ex in task.examples:
            key = " ".join(re.findall(r"[a-z0-9]+", ex.instruction.lower()))
            assert key not in seen, f"{ex.instruction!r} is in both {seen.get(key)} and {task.name}"
            seen[key] = task.name


def test_filters_per_task():
    f = {t.name: t.filters for t in BUILTIN_TASKS}
    assert f["add"].detector == "present" and f["remove"].detector == "absent"
    assert all(f[n].detector is None for n in f if n not in ("add", "remove"))
    assert f["local"] == FilterThresholds()  # IP2P defaults
    for n in ("style", "image_to_image", "background"):
        assert f[n].depth_l1 is None
    for n in ("detect", "segment", "color"):
        assert f[n].clip_direction < FilterThresholds().clip_direction
    for t in BUILTIN_TASKS:
        assert 0 <= t.filters.clip_direction <= 1 and 0 <= t.filters.clip_image <= 1
        assert 0 <= t.filters.clip_output <= 1


# --- registry behaviour ------------------------------------------------------------------------------


def test_unknown_task_lists_valid_names():
    with pytest.raises(MultiEditError) as info:
        get_task("teleport")
    msg = str(info.value)
    assert "teleport" in msg and "'add'" in msg and "'image_to_image'" in msg


def test_register_refuses_duplicates_and_replace_works():
    reg = TaskRegistry(BUILTIN_TASKS)
    custom = Task(name="add", group="region", description="A different add.", pair_strategy="masked")
    with pytest.raises(MultiEditError, match="already registered"):
        reg.register(custom)
    assert reg.get("add") is BUILTIN_TASKS[2]
    reg.register(custom, replace=True)
    assert reg.get("add") is custom
    assert reg.names() == [n for n, _, _ in EXPECTED]  # replacing keeps the position
    assert get_task("add") is BUILTIN_TASKS[2]  # the global registry is untouched


def test_register_from_dict_global_registry_cleaned_up():
    from multiedit.tasks import register_task

    before = list_tasks()
    try:
        task = register_task(_task_dict("tmp_from_dict"))
        assert get_task("tmp_from_dict") is task
        assert task.filters == FilterThresholds(clip_direction=0.1, depth_l1=None)
        assert task.verbs == ("make", "turn") and task.examples[0].edited_object == "photo"
        with pytest.raises(MultiEditError):
            register_task(_task_dict("tmp_from_dict"))
    finally:
        REGISTRY._tasks.pop("tmp_from_dict", None)
    assert list_tasks() == before


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_load_file_json_and_yaml(tmp_path, suffix):
    data = {"tasks": [_task_dict("a_task"), _task_dict("b_task", group="region", pair_strategy="masked")]}
    path = tmp_path / f"tasks{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data), encoding="utf-8")
    reg = TaskRegistry()
    tasks = reg.load_file(path)
    assert [t.name for t in tasks] == reg.names() == ["a_task", "b_task"]
    assert reg.get("b_task").group == "region"
    assert reg.get("a_task") == Task.from_dict(_task_dict("a_task"))
    with pytest.raises(MultiEditError, match="already registered"):
        reg.load_file(path)


def test_load_single_task_mapping(tmp_path):
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(_task_dict("only")), encoding="utf-8")
    reg = TaskRegistry()
    assert [t.name for t in reg.load_file(path)] == ["only"]


def test_unknown_keys_warn_but_load(tmp_path):
    path = tmp_path / "newer.json"
    path.write_text(json.dumps([_task_dict("future", priority=3)]), encoding="utf-8")
    reg = TaskRegistry()
    with pytest.warns(UserWarning, match="priority"):
        reg.load_file(path)
    assert "future" in reg


def test_missing_field_error_names_file(tmp_path):
    data = _task_dict("broken")
    del data["description"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    reg = TaskRegistry()
    with pytest.raises(MultiEditError) as info:
        reg.load_file(path)
    assert str(path) in str(info.value) and "description" in str(info.value)
    assert len(reg) == 0


def test_bad_group_error_names_file(tmp_path):
    path = tmp_path / "badgroup.yaml"
    path.write_text(yaml.safe_dump([_task_dict("odd", group="misc")]), encoding="utf-8")
    with pytest.raises(MultiEditError) as info:
        TaskRegistry().load_file(path)
    assert "misc" in str(info.value)
    assert str(path) in str(info.value)


def test_bad_group_is_refused(tmp_path):
    path = tmp_path / "badgroup.yaml"
    path.write_text(yaml.safe_dump([_task_dict("odd", group="misc")]), encoding="utf-8")
    with pytest.raises(MultiEditError, match="misc"):
        TaskRegistry().load_file(path)


def test_unparsable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(MultiEditError, match=re.escape(str(bad))):
        TaskRegistry().load_file(bad)
    with pytest.raises(MultiEditError, match="does not exist"):
        TaskRegistry().load_file(tmp_path / "nope.yaml")


def test_malformed_example_names_file(tmp_path):
    path = tmp_path / "ex.json"
    path.write_text(json.dumps(_task_dict("x", examples=[{"instruction": "hi"}])), encoding="utf-8")
    with pytest.raises(MultiEditError, match=re.escape(str(path))):
        TaskRegistry().load_file(path)


@pytest.mark.parametrize("task", BUILTIN_TASKS, ids=lambda t: t.name)
def test_to_dict_from_dict_round_trip(task):
    data = task.to_dict()
    # survives a JSON round trip too (the form a task file has)
    assert Task.from_dict(json.loads(json.dumps(data))) == task
    assert Task.from_dict(data) == task


def test_file_with_a_duplicate_registers_nothing(tmp_path):
    reg = TaskRegistry()
    reg.register(Task.from_dict(_task_dict("taken")))
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump([_task_dict("fresh"), _task_dict("taken")]), encoding="utf-8")
    with pytest.raises(MultiEditError, match="taken"):
        reg.load_file(path)
    assert "fresh" not in reg


def test_bad_detector_value_is_refused():
    with pytest.raises(MultiEditError, match="detector"):
        Task.from_dict({**_task_dict("odd"), "filters": {"detector": "maybe"}})
