"""``edit_image``: the library function behind ``multiedit edit``."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import PIL.Image

from .errors import MultiEditError
from .images import fit_to_model, load_image
from .io_utils import atomic_file, check_output_path

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default-model"
#: (text, image) guidance scales: InstructPix2Pix's, and the embedded ShapesWorld model's (trained and
#: benchmarked at these; guidance >= 2 hurt it).
IP2P_GUIDANCE = (7.5, 1.5)
DEFAULT_MODEL_GUIDANCE = (1.5, 1.0)


def default_model() -> Path:
    """The embedded default model folder, or a clear error when this install has none."""
    if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        return DEFAULT_MODEL_DIR
    raise MultiEditError(
        "No --model given and no embedded default model is installed; pass --model DIR "
        "(e.g. `multiedit zoo --out zoo` and then --model zoo/pipeline)."
    )


def load_pipeline(model: str | Path | None, task_embeddings: list[str | Path] = ()):
    """Load a MultiEditPipeline folder (an SD/IP2P folder is converted on the fly) plus learned tasks."""
    from .model_folder import check_pipeline_folder
    from .pipeline import MultiEditPipeline

    model = default_model() if model is None else model
    index = check_pipeline_folder(model)
    if index.get("_class_name") == MultiEditPipeline.__name__:
        try:
            pipe = MultiEditPipeline.from_pretrained(str(model))
        except MultiEditError:
            raise
        except Exception as exc:
            raise MultiEditError(f"Could not load the pipeline in {model} ({type(exc).__name__}: {exc}).") from None
    else:
        log.info("%s is a %s; converting it with MultiEditPipeline.from_base", model, index.get("_class_name"))
        pipe = MultiEditPipeline.from_base(model)
    for path in task_embeddings:
        name = pipe.load_task_embedding(path)
        log.info("loaded learned task %r from %s", name, path)
    return pipe


def check_edit_settings(steps: int, guidance_scale: float | None, image_guidance_scale: float | None, seed: int,
                        resolution: int | None, alpha: float) -> None:
    """Reject settings that would fail deep in the pipeline or quietly give a garbage image."""
    if steps < 1:
        raise MultiEditError(f"--steps must be at least 1, got {steps}.")
    for flag, value in (("--guidance-scale", guidance_scale), ("--image-guidance-scale", image_guidance_scale)):
        if value is not None and not math.isfinite(value):
            raise MultiEditError(f"{flag} {value} is not a finite number; IP2P uses 7.5 (text) and 1.5 (image).")
    if not 0 <= seed < 2**63:
        raise MultiEditError(f"--seed {seed} is out of range; use an integer from 0 to 2**63 - 1.")
    if resolution is not None and resolution < 8:
        raise MultiEditError(f"--resolution {resolution} is too small; give the shorter side in pixels, at least 8.")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise MultiEditError(f"--alpha {alpha} must be a finite number of 0 or more (the default is 0.03).")


@dataclass
class EditResult:
    output: Path
    tasks: list[str]
    notes: list[str] = field(default_factory=list)


def edit_image(
    image: str | Path,
    instructions: list[str],
    out: str | Path,
    model: str | Path | None = None,
    task: str | list[str] | None = None,
    task_embeddings: list[str | Path] = (),
    steps: int = 20,
    guidance_scale: float | None = None,
    image_guidance_scale: float | None = None,
    seed: int = 0,
    resolution: int | None = None,
    min_task_confidence: float | None = None,
    alpha: float = 0.03,
    side_by_side: bool = False,
    pipe=None,
) -> EditResult:
    """Edit ``image`` with one instruction, or several applied in turn (sequential thresholding ``alpha``).

    ``task``: one name for every turn, one per turn, or None for the model's classifier. The output has the
    input's size; its format follows ``out``'s extension. Nothing is written
    unless the edit succeeds. Guidance scales left at ``None`` are IP2P's (7.5, 1.5), or (1.5, 1.0) for
    the embedded default model (no ``model`` and no ``pipe``).
    """
    import torch

    out = Path(out)
    if not instructions or any(not str(i).strip() for i in instructions):
        raise MultiEditError("An --instruction is empty; pass the edit to make, e.g. --instruction 'make it snow'.")
    check_output_path(out, "--out", "file")
    ext = out.suffix.lower()
    if ext not in PIL.Image.registered_extensions():
        raise MultiEditError(f"Cannot tell the image format of --out {out}; end it with .png, .jpg or .webp.")
    check_edit_settings(steps, guidance_scale, image_guidance_scale, seed, resolution, alpha)
    if isinstance(task, (list, tuple)):
        if len(task) == 1:
            task = task[0]
        elif len(task) != len(instructions):
            raise MultiEditError(f"{len(task)} --task values for {len(instructions)} --instruction(s); give one task "
                                 "for every turn, or one for all of them.")
        else:
            task = list(task)
    source = load_image(image, "input image")
    text_default, image_default = DEFAULT_MODEL_GUIDANCE if model is None and pipe is None else IP2P_GUIDANCE
    guidance_scale = text_default if guidance_scale is None else guidance_scale
    image_guidance_scale = image_default if image_guidance_scale is None else image_guidance_scale
    pipe = pipe or load_pipeline(model, task_embeddings)
    for name in [task] if isinstance(task, str) else task or []:
        pipe.task_id(name)  # unknown task: fail before any work
    notes = []
    model_in, note = fit_to_model(source, multiple=pipe.vae_scale_factor, resolution=resolution)
    if note:
        notes.append(note)
    kwargs = dict(
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        image_guidance_scale=image_guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        min_task_confidence=min_task_confidence,
    )
    if len(instructions) == 1:
        result = pipe(prompt=instructions[0], image=model_in, task=task, **kwargs)
        edited, tasks = result.images[0], result.tasks
        if result.task_predictions:
            p = result.task_predictions[0]
            notes.append(f"task {tasks[0]!r} predicted by the classifier (p={p.probabilities[tasks[0]]:.2f})")
    else:
        tasks = []
        if task is None:  # resolve every turn's task up front, so a refusal happens before any editing
            tasks = [pipe._resolve_tasks(None, [i], min_task_confidence)[0][0] for i in instructions]
            tasks = [pipe.task_names[t] for t in tasks]
        kwargs.pop("min_task_confidence")
        turns = pipe.edit_sequence(instructions, model_in, task=tasks or task, alpha=alpha, **kwargs)
        edited = turns[-1]
        tasks = tasks or (task if isinstance(task, list) else [task] * len(instructions))
        notes.append(f"{len(instructions)} turns with sequential thresholding (alpha={alpha})")
    if edited.size != source.size:
        edited = edited.resize(source.size, PIL.Image.LANCZOS)
        notes.append(f"output resized back to {source.size[0]}x{source.size[1]}")
    if side_by_side:
        canvas = PIL.Image.new("RGB", (source.width * 2, source.height), "white")
        canvas.paste(source, (0, 0))
        canvas.paste(edited, (source.width, 0))
        edited = canvas
    with atomic_file(out) as tmp:
        edited.save(tmp, format=PIL.Image.registered_extensions()[ext])
    return EditResult(output=out, tasks=tasks, notes=notes)
