"""Checks and loaders for pipeline folders (ours, diffusers' SD and IP2P), with one-sentence errors."""

from __future__ import annotations

from pathlib import Path

from .errors import MultiEditError
from .io_utils import looks_local

BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


def check_pipeline_folder(path: str | Path) -> dict:
    """Return the folder's ``model_index.json`` as a dict, or raise a clear error.

    ``path`` is a local folder or a Hugging Face repo id (which needs the hub to be reachable).
    """
    from diffusers import DiffusionPipeline

    local = Path(str(path)).expanduser()
    if looks_local(path) or str(path).count("/") != 1:
        if local.is_file():
            raise MultiEditError(f"Model folder {local} is a file; pass the pipeline folder that holds model_index.json.")
        if not local.is_dir():
            raise MultiEditError(f"Model folder {local} does not exist; pass a pipeline folder (see `multiedit init`).")
        if not (local / "model_index.json").is_file():
            raise MultiEditError(
                f"{local} is not a diffusers pipeline folder (it has no model_index.json); pass a folder written by "
                "`save_pretrained`, `multiedit init` or `multiedit train`."
            )
        path = local
    try:
        index = DiffusionPipeline.load_config(str(path))
    except Exception as exc:  # network, JSON syntax, missing repo
        raise MultiEditError(f"Could not read the pipeline config of {path} ({type(exc).__name__}: {exc}).") from None
    if not isinstance(index, dict):
        raise MultiEditError(f"{path}/model_index.json must hold a JSON object of components, not a "
                             f"{type(index).__name__}; re-save the pipeline with save_pretrained.")
    missing = [c for c in BASE_COMPONENTS if c not in index]
    if missing:
        raise MultiEditError(
            f"{path} is a {index.get('_class_name', 'pipeline')} without {missing}; "
            "pass a Stable Diffusion, InstructPix2Pix or multiedit pipeline folder."
        )
    if isinstance(path, Path):
        absent = [name for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list)
                  and len(spec) == 2 and spec[0] is not None and spec[1] is not None and not (path / name).is_dir()]
        if absent:
            raise MultiEditError(f"{path} lists component(s) {absent} in model_index.json but has no "
                                 f"{', '.join(a + '/' for a in absent)} folder; the copy is incomplete: copy or "
                                 "save the whole pipeline folder again.")
        weightless = [name for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list)
                      and (path / name / "config.json").is_file() and not _has_weights(path / name)]
        if weightless:
            raise MultiEditError(f"{path}/{weightless[0]}/ has a config.json but no weights file (*.safetensors or "
                                 "*.bin); the copy is incomplete: copy or save the whole pipeline folder again.")
    if "task_names" in index and index.get("_class_name") != "MultiEditPipeline":
        raise MultiEditError(f"{path}/model_index.json has task_names, as a MultiEditPipeline folder does, but "
                             f"_class_name {index.get('_class_name')!r}; set _class_name back to MultiEditPipeline.")
    if index.get("_class_name") == "MultiEditPipeline":
        names = index.get("task_names")
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise MultiEditError(f"{path}/model_index.json has task_names {names!r}; a MultiEditPipeline folder "
                                 "needs the list of its task names (as save_pretrained writes it).")
    return index


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.index.json"))


def load_components(path: str | Path, **kwargs) -> dict:
    """Load the five Stable Diffusion components of an SD/IP2P pipeline folder with diffusers' own loader."""
    from diffusers import DiffusionPipeline

    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("requires_safety_checker", False)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
    except Exception as exc:
        raise MultiEditError(f"Could not load the pipeline in {path} ({type(exc).__name__}: {exc}).") from None
    return {name: getattr(pipe, name) for name in BASE_COMPONENTS}
