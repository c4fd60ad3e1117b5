"""Benchmark readers: the Emu Edit test set, MagicBrush, and our own dataset format.

Layouts (column names as on the Hugging Face Hub):

* ``emu`` — ``facebook/emu_edit_test_set``: ``image`` (input), ``instruction``, ``task``, ``input_caption``,
  ``output_caption``, ``idx``, ``hash``, ``split``; splits ``validation`` (2,022 rows) and ``test``
  (3,589 rows). ``facebook/emu_edit_test_set_generations`` adds ``edited_image`` (Emu Edit's outputs)
  and ``model``, and its split *names* are swapped relative to the test set (its ``validation`` has the
  3,589 test rows); the per-row ``split`` column is checked against the split read and any
  disagreement is logged and written to the report.
* ``magicbrush`` — ``osunlp/MagicBrush``: ``img_id``, ``turn_index`` (1-based), ``source_img``, ``mask_img``,
  ``instruction``, ``target_img``; splits ``train`` and ``dev`` (528 rows). The turns of one ``img_id``
  form a multi-turn session. Captions for CLIP-T are not in the Hub dataset: an ``output_caption``
  column, or ``captions=`` a JSON file (MagicBrush's ``global_descriptions.json``,
  ``{img_id: {"...output<turn>...": caption}}``, or ``{sample_id: caption}``).
* ``ours`` — :mod:`multiedit.dataset_io`: ``input_image``, ``edited_image``, ``edit_prompt``, ``task``,
  ``input_caption``, ``output_caption``.

Sources: a Hub name (needs network), a folder of Parquet files (a local copy of a Hub repository:
files named ``<split>-*.parquet`` are grouped by split; other names form one ``train`` split), a
``save_to_disk`` folder, or any folder ``datasets.load_dataset`` reads. Images stay encoded until a
sample is scored. A missing optional column or a bad cell is a per-sample problem, never a crash.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

from ..errors import MultiEditError, brief
from ..io_utils import looks_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    name: str
    columns: dict  # role -> column name: input, target, output, instruction, task, input_caption, output_caption, group, turn, id
    required: tuple
    default_split: str
    protocols: tuple  # "emu" (no ground truth) and/or "magicbrush" (ground truth)


LAYOUTS = {
    "emu": Layout(
        "emu",
        dict(input="image", output="edited_image", instruction="instruction", task="task",
             input_caption="input_caption", output_caption="output_caption", id="idx"),
        ("image",), "test", ("emu",),
    ),
    "magicbrush": Layout(
        "magicbrush",
        dict(input="source_img", target="target_img", instruction="instruction", group="img_id", turn="turn_index",
             output_caption="output_caption"),
        ("source_img", "target_img"), "dev", ("magicbrush",),
    ),
    "ours": Layout(
        "ours",
        dict(input="input_image", target="edited_image", instruction="edit_prompt", task="task",
             input_caption="input_caption", output_caption="output_caption", id="id"),
        ("input_image", "edited_image"), "train", ("emu", "magicbrush"),
    ),
}
SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "eval")


class SampleProblem(Exception):
    """A problem with one sample (unreadable image, missing cell): it is excluded and reported, not fatal."""


@dataclass
class EvalSample:
    """One edit to score. ``id`` is stable and file-name safe (predictions are ``<id>.png``)."""

    id: str
    row: int
    instruction: str | None = None
    task: str | None = None
    input_caption: str | None = None
    output_caption: str | None = None
    group: str | None = None
    turn: int | None = None


@dataclass
class EvalSet:
    layout: Layout
    source: str
    split: str | None
    split_sizes: dict
    samples: list
    columns: dict  # role -> column, only roles whose column exists
    ds: object = None
    notes: list = field(default_factory=list)
    _row_cache: tuple = (None, None)

    def has(self, role: str) -> bool:
        return role in self.columns

    def image(self, sample: EvalSample, role: str) -> PIL.Image.Image:
        """Decode ``sample``'s image in ``role`` (input, target, output), or raise :class:`SampleProblem`."""
        from ..training.data import decode_image

        if role not in self.columns:
            raise SampleProblem(f"the data has no {role} image column")
        col = self.columns[role]
        if self._row_cache[0] != sample.row:
            self._row_cache = (sample.row, self.ds[sample.row])
        value = self._row_cache[1][col]
        if value is None:
            raise SampleProblem(f"column {col!r} is empty in row {sample.row}")
        try:
            return decode_image(value, f"row {sample.row}, column {col!r}")
        except MultiEditError as exc:
            raise SampleProblem(str(exc)) from None

    def groups(self) -> dict:
        """Multi-turn sessions: group id → its samples by turn (empty when the data has no turns)."""
        out: dict = {}
        for s in self.samples:
            if s.group is not None:
                out.setdefault(s.group, []).append(s)
        return {g: sorted(v, key=lambda s: s.turn or 0) for g, v in out.items()}

    @property
    def has_turns(self) -> bool:
        return any(len(v) > 1 for v in self.groups().values())


# ----------------------------------------------------------------------------------------- loading


def detect_layout(columns: list[str]) -> str:
    cols = set(columns)
    if {"source_img", "target_img"} <= cols:
        return "magicbrush"
    if {"input_image", "edited_image"} <= cols:
        return "ours"
    if "image" in cols and ({"instruction", "output_caption"} & cols):
        return "emu"
    raise MultiEditError(
        f"Cannot tell the layout of a dataset with columns {sorted(cols)}; pass --layout emu, magicbrush or ours "
        "(emu needs 'image', magicbrush 'source_img'/'target_img', ours 'input_image'/'edited_image')."
    )


def _choose_split(available: list[str], requested: str | None, default: str, source: str) -> str:
    if requested is not None:
        if requested not in available:
            raise MultiEditError(f"Dataset {source} has no split {requested!r} (splits: {available}); pass --split.")
        return requested
    if default in available:
        return default
    if len(available) == 1:
        return available[0]
    raise MultiEditError(f"Dataset {source} has splits {available}; choose one with --split.")


def _parquet_splits(path: Path) -> dict[str, list[str]]:
    files = sorted(p for p in path.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(path).parts))
    splits: dict[str, list[str]] = {}
    for f in files:
        m = re.match(rf"^({'|'.join(SPLIT_NAMES)})(?=[-_.])", f.name)
        name = m.group(1) if m else (f.parent.name if f.parent.name in SPLIT_NAMES else "train")
        splits.setdefault(name, []).append(str(f))
    return splits


def open_split(source: str, split: str | None, default_split: str):
    """(dataset, split name, {split: rows}) for a Hub name or a local folder; clear errors otherwise."""
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if (path / "dataset_dict.json").is_file():
                dd = datasets.load_from_disk(str(path))
                sizes = {k: len(v) for k, v in dd.items()}
                name = _choose_split(list(dd), split, default_split, source)
                return dd[name], name, sizes
            if (path / "dataset_info.json").is_file():
                ds = datasets.load_from_disk(str(path))
                return ds, split, {split or "(single)": len(ds)}
            groups = _parquet_splits(path)
            if groups:
                import pyarrow.parquet as pq

                sizes = {k: sum(pq.ParquetFile(f).metadata.num_rows for f in v) for k, v in groups.items()}
                name = _choose_split(list(groups), split, default_split, source)
                ds = datasets.load_dataset("parquet", data_files={name: groups[name]}, split=name)
                return ds, name, sizes
            dd = datasets.load_dataset(str(path))
            sizes = {k: len(v) for k, v in dd.items()}
            name = _choose_split(list(dd), split, default_split, source)
            return dd[name], name, sizes
        if path.exists():
            raise MultiEditError(f"Dataset {source} is not a folder; pass a dataset folder or a Hugging Face dataset name.")
        if looks_local(source):  # a mistyped path: fail now, not after a round of hub retries
            raise MultiEditError(f"--data {source} is not a local folder; check the path, or pass a Hugging Face "
                                 "dataset name such as osunlp/MagicBrush.")
    except MultiEditError:
        raise
    except Exception as exc:
        raise MultiEditError(
            f"Could not read the dataset folder {source} ({brief(exc)}); pass a folder of Parquet files, "
            "a save_to_disk folder or a Hugging Face dataset name."
        ) from None
    try:  # a Hub name: split sizes from the metadata first, then only the split we need
        info = datasets.load_dataset_builder(source).info
        sizes = {k: v.num_examples for k, v in (info.splits or {}).items()}
        name = _choose_split(list(sizes), split, default_split, source) if sizes else (split or default_split)
        return datasets.load_dataset(source, split=name), name, sizes
    except MultiEditError:
        raise
    except Exception as exc:
        raise MultiEditError(
            f"Could not load dataset {source!r} from the Hugging Face Hub ({brief(exc, 160)}); "
            f"if this machine is offline, download it elsewhere (`huggingface-cli download --repo-type dataset {source} "
            "--local-dir DIR`) and pass --data DIR."
        ) from None


def _safe_id(value) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(value)).strip(".") or "_"


def _text(values, i):
    v = values[i] if values is not None else None
    return None if v is None else str(v)


def load_captions(path: str | Path) -> dict:
    """Caption per sample id from MagicBrush's ``global_descriptions.json`` or a flat ``{sample_id: caption}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MultiEditError(f"Cannot read the captions file {path} ({exc}); pass a JSON file.") from None
    if not isinstance(raw, dict):
        raise MultiEditError(f"The captions file {path} must hold a JSON object, got {type(raw).__name__}.")
    out = {}
    for key, value in raw.items():
        if isinstance(value, str):
            out[_safe_id(key)] = value
        elif isinstance(value, dict):  # MagicBrush: {img_id: {"<img_id>-output<turn>.png": caption}}
            for name, cap in value.items():
                m = re.search(r"output(\d+)", str(name))
                if m and isinstance(cap, str):
                    out[_safe_id(f"{key}_{int(m.group(1))}")] = cap
        else:
            raise MultiEditError(f"The captions file {path}: entry {key!r} is neither a caption nor a mapping of them.")
    return out


def load_eval_set(source: str, layout: str = "auto", split: str | None = None, limit: int | None = None,
                  captions: str | Path | None = None) -> EvalSet:
    """Read a benchmark in one of :data:`LAYOUTS` (``auto`` detects it from the columns)."""
    import datasets

    default = LAYOUTS[layout].default_split if layout in LAYOUTS else "test"
    ds, split_name, sizes = open_split(source, split, default)
    name = detect_layout(ds.column_names) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise MultiEditError(f"Unknown --layout {layout!r}; use emu, magicbrush, ours or auto.")
    lay = LAYOUTS[name]
    missing = [c for c in lay.required if c not in ds.column_names]
    if missing:
        raise MultiEditError(
            f"Dataset {source} (split {split_name}) has no column {missing[0]!r} required by the {name} layout "
            f"(columns: {ds.column_names}); check --layout."
        )
    columns = {role: col for role, col in lay.columns.items() if col in ds.column_names}
    for role in ("input", "target", "output"):
        if role in columns and isinstance(ds.features.get(columns[role]), datasets.Image):
            ds = ds.cast_column(columns[role], datasets.Image(decode=False))
    log.info("%s: split sizes %s; evaluating split %r (%d rows)", source, sizes, split_name, len(ds))
    notes = _split_column_notes(ds, split_name, sizes, name)
    for role in ("instruction", "task", "input_caption", "output_caption"):
        if role in lay.columns and role not in columns and not (role == "output_caption" and captions):
            notes.append(f"column {lay.columns[role]!r} is missing: metrics that need it are excluded for every sample")

    n = len(ds)
    col = {role: (ds[c] if role not in ("input", "target", "output") else None) for role, c in columns.items()}
    ids = _ids(name, col, n)
    caps = load_captions(captions) if captions else {}
    samples = []
    for i in range(n):
        turn = col.get("turn")
        samples.append(EvalSample(
            id=ids[i], row=i, instruction=_text(col.get("instruction"), i), task=_text(col.get("task"), i),
            input_caption=_text(col.get("input_caption"), i),
            output_caption=caps.get(ids[i], _text(col.get("output_caption"), i)),
            group=_text(col.get("group"), i), turn=None if turn is None or turn[i] is None else int(turn[i]),
        ))
    if captions:
        columns["output_caption"] = "(captions file)"
    if limit is not None:
        samples = _limit(samples, limit)
    return EvalSet(lay, str(source), split_name, sizes, samples, columns, ds, notes)


def _ids(layout: str, col: dict, n: int) -> list[str]:
    if layout == "magicbrush" and "group" in col and "turn" in col:
        ids = [_safe_id(f"{col['group'][i]}_{col['turn'][i]}") for i in range(n)]
    elif "id" in col:
        ids = [_safe_id(v) for v in col["id"]]
    else:
        ids = []
    if len(set(ids)) != n:
        if ids:
            log.warning("sample ids are not unique; using row numbers as ids")
        ids = [f"{i:05d}" for i in range(n)]
    return ids


def _limit(samples: list[EvalSample], limit: int) -> list[EvalSample]:
    """The first ``limit`` samples; with sessions, whole sessions only (at least one)."""
    if limit < 1:
        raise MultiEditError(f"--limit must be at least 1, got {limit}.")
    if all(s.group is None for s in samples):
        return samples[:limit]
    order, by_group = [], {}
    for s in samples:
        if s.group not in by_group:
            order.append(s.group)
        by_group.setdefault(s.group, []).append(s)
    kept = []
    for g in order:
        if kept and len(kept) + len(by_group[g]) > limit:
            break
        kept += by_group[g]
    return kept


def _split_column_notes(ds, split_name, sizes: dict, layout: str) -> list[str]:
    notes = []
    if "split" in ds.column_names and split_name:
        counts: dict = {}
        for v in ds["split"]:
            counts[v] = counts.get(v, 0) + 1
        other = {k: v for k, v in counts.items() if k != split_name}
        if other:
            notes.append(
                f"split mix-up: {sum(other.values())} of {len(ds)} rows read from split {split_name!r} say "
                f"split={sorted(other)} in their 'split' column (the known swap of facebook/emu_edit_test_set_generations)"
            )
            log.warning(notes[-1])
    if layout == "emu" and sizes.get("validation") == 3589 and sizes.get("test") == 2022:
        notes.append("split sizes are swapped relative to facebook/emu_edit_test_set (test 3,589 / validation 2,022): "
                     "the Emu Edit test rows are this dataset's 'validation' split")
        log.warning(notes[-1])
    return notes
