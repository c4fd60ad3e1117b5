"""Reading task-inversion examples: our dataset folder, or a plain folder of image pairs.

Plain layout::

    DIR/input/<id>.png      source images
    DIR/edited/<id>.png     edited images (same ids)
    DIR/instructions.jsonl  {"id": "<id>", "instruction": "..."} per line (or pass one instruction for all)
"""

from __future__ import annotations

import json
from pathlib import Path

import PIL.Image

from ..errors import MultiEditError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def read_plain_folder(path: Path, instruction: str | None) -> dict[str, list]:
    """Columns ``input_image``/``edited_image`` (paths) and ``edit_prompt`` from a plain folder."""
    inputs, edited = _images(path / "input"), _images(path / "edited")
    if not inputs and not edited:
        raise MultiEditError(f"{path} has no images in input/ and edited/; add pairs with matching file names.")
    only_in, only_ed = sorted(set(inputs) - set(edited)), sorted(set(edited) - set(inputs))
    if only_in or only_ed:
        raise MultiEditError(
            f"Unmatched pairs in {path}: input/ without edited/: {only_in[:5]}, edited/ without input/: {only_ed[:5]}; "
            "every input/<id> needs an edited/<id>."
        )
    ids = sorted(inputs)
    for i in ids:
        for p in (inputs[i], edited[i]):
            try:
                with PIL.Image.open(p) as img:
                    img.load()
            except Exception:
                raise MultiEditError(f"{p} is not a readable image; fix or remove the pair {i!r}.") from None
    prompts = _instructions(path, ids, instruction)
    return {"input_image": [str(inputs[i]) for i in ids], "edited_image": [str(edited[i]) for i in ids],
            "edit_prompt": [prompts[i] for i in ids]}


def _instructions(path: Path, ids: list[str], instruction: str | None) -> dict[str, str]:
    file = path / "instructions.jsonl"
    if instruction is not None:
        if not instruction.strip():
            raise MultiEditError("--instruction is empty; pass the instruction shared by all examples.")
        return {i: instruction for i in ids}
    if not file.is_file():
        raise MultiEditError(f"{path} has no instructions.jsonl; add one or pass --instruction TEXT for all examples.")
    found = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            found[str(row["id"])] = str(row["instruction"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MultiEditError(f"{file}, line {n}: expected {{\"id\": ..., \"instruction\": ...}}.") from None
    missing = [i for i in ids if not found.get(i, "").strip()]
    if missing:
        raise MultiEditError(f"{file} has no instruction for {missing[:5]}; add a line per example.")
    return found


def load_examples(path: str | Path, instruction: str | None = None):
    """A ``datasets.Dataset`` with ``input_image``, ``edited_image``, ``edit_prompt`` from either layout."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise MultiEditError(f"--examples {path} is not a folder; pass a dataset folder or a folder with input/ and edited/.")
    if (path / "input").is_dir() or (path / "edited").is_dir():
        return datasets.Dataset.from_dict(read_plain_folder(path, instruction))
    if any(path.rglob("*.parquet")):
        from ..training.data import load_edit_dataset

        ds = load_edit_dataset(str(path))
        if instruction is not None:
            ds = ds.map(lambda _: {"edit_prompt": instruction})
        return ds
    raise MultiEditError(
        f"{path} holds no examples; use input/*.png + edited/*.png (+ instructions.jsonl) or a dataset folder."
    )
