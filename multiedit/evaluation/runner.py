"""``evaluate``: the library function behind ``multiedit eval``; ``run_editor`` makes predictions first.

Output folder::

    OUT/report.json, OUT/report.md   the per-task tables, backbone identities, data notes, exclusions
    OUT/examples.png                 a grid of examples (input | output | target)
    OUT/predictions/<id>.png         with --model: the single-turn edits (same layout --predictions reads)
    OUT/predictions/iterative/<id>.png   with --model and multi-turn data: the iterative chain
    OUT/predictions/settings.json    with --model: the settings that made the edits (see :mod:`.provenance`)
    OUT/cache/scores-<hash>.jsonl    per-sample scores; a rerun reuses them (hash = data + backbones)

Every write is atomic or append-only; rerunning the same command skips finished edits and scores, and a
rerun with other generation settings is refused rather than reusing edits made with the old ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import PIL.Image

from ..errors import MultiEditError
from ..io_utils import atomic_file, check_output_path
from .backbones import DEFAULT_CLIP, DEFAULT_DINO, ClipBackbone, DinoBackbone, resolve_device
from .checks import check_eval_args, check_predictions_present, require_scored
from .datasets import EvalSample, EvalSet, SampleProblem, load_eval_set
from .provenance import check_settings, generation_settings, record_settings
from .scoring import DataOutputs, PredictionDir, ScoreCache, score_setting

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ editing


def _task_mode_check(evalset: EvalSet, pipe, task: str) -> None:
    has_classifier = pipe.task_classifier is not None and pipe.classifier_tokenizer is not None
    if task == "classifier":
        if not has_classifier:
            raise MultiEditError("--task classifier, but this model has no task classifier; pass --task data or a task name.")
    elif task != "data":
        pipe.task_id(task)  # an unknown name fails here, listing the model's tasks
    elif not has_classifier and not any(s.task in pipe.task_names for s in evalset.samples):
        raise MultiEditError(
            f"The data names no task this model knows ({pipe.task_names}) and the model has no task classifier; "
            "pass --task NAME to use one task for every sample."
        )


def _task_for(sample: EvalSample, pipe, task: str):
    if task == "classifier":
        return None
    if task != "data":
        return task
    if sample.task in pipe.task_names:
        return sample.task
    if pipe.task_classifier is not None:
        return None  # the pipeline's classifier chooses
    raise SampleProblem(f"task {sample.task!r} is not a task of this model and it has no classifier; pass --task NAME")


def _edit(pipe, image: PIL.Image.Image, sample: EvalSample, task, opts: dict) -> PIL.Image.Image:
    import torch

    from ..images import fit_to_model

    if not sample.instruction or not sample.instruction.strip():
        raise SampleProblem("the instruction is empty")
    model_in, _ = fit_to_model(image, multiple=pipe.vae_scale_factor, resolution=opts["resolution"])
    out = pipe(
        prompt=sample.instruction, image=model_in, task=task, num_inference_steps=opts["steps"],
        guidance_scale=opts["guidance_scale"], image_guidance_scale=opts["image_guidance_scale"],
        generator=torch.Generator().manual_seed(opts["seed"]), output_type="pil",
    ).images[0]
    return out.resize(image.size, PIL.Image.LANCZOS) if out.size != image.size else out


def _save(img: PIL.Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")


def run_editor(evalset: EvalSet, pipe, pred_dir: str | Path, task: str = "data", steps: int = 20, seed: int = 0,
               guidance_scale: float = 7.5, image_guidance_scale: float = 1.5, resolution: int | None = None,
               alpha: float = 0.03, multi_turn: bool = True) -> dict:
    """Edit every sample into ``pred_dir`` (layout of :class:`PredictionDir`); existing files are kept (resume).

    ``task``: ``data`` (each sample's task; the model's classifier where the data names none it knows),
    ``classifier``, or one task name for all. Multi-turn sessions are also edited iteratively, each turn
    from the previous turn's output, with Emu Edit's sequential thresholding ``alpha`` (0 disables it).
    Every sample uses the generator seed ``seed``. Returns ``{(sample id, setting): reason}`` for
    samples that could not be edited; they are reported, not scored.
    """
    from tqdm.auto import tqdm

    from ..sequential import sequential_threshold

    if "instruction" not in evalset.columns:
        raise MultiEditError(
            f"--model needs instructions, but the data has no {evalset.layout.columns['instruction']!r} column."
        )
    _task_mode_check(evalset, pipe, task)
    opts = dict(steps=steps, seed=seed, guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale,
                resolution=resolution)
    pred_dir = Path(pred_dir)
    preds = PredictionDir(pred_dir)
    failures, done = {}, 0
    for s in tqdm(evalset.samples, desc="editing", unit="edit", disable=None):
        if preds.path(s, "single_turn") is not None:
            done += 1
            continue
        try:
            _save(_edit(pipe, evalset.image(s, "input"), s, _task_for(s, pipe, task), opts), pred_dir / f"{s.id}.png")
        except SampleProblem as exc:
            failures[(s.id, "single_turn")] = f"not edited: {exc}"
    if done:
        log.info("editing: %d of %d predictions already in %s (resumed)", done, len(evalset.samples), pred_dir)
    if not (multi_turn and evalset.has_turns):
        return failures
    chains = [turns for turns in evalset.groups().values() if len(turns) > 1]
    for turns in tqdm(chains, desc="editing sessions", unit="session", disable=None):
        previous, broken = None, None
        for k, s in enumerate(turns):
            if broken:
                failures[(s.id, "multi_turn")] = broken
                continue
            try:
                if k == 0:
                    if (s.id, "single_turn") in failures:
                        raise SampleProblem(failures[(s.id, "single_turn")])
                    previous = preds.load(s, "multi_turn", first_turn=True)
                    continue
                path = preds.path(s, "multi_turn")
                if path is not None:
                    previous = preds.load(s, "multi_turn")
                    continue
                edited = _edit(pipe, previous, s, _task_for(s, pipe, task), opts)
                if alpha > 0:
                    edited = sequential_threshold(previous, edited, alpha=alpha)
                _save(edited, pred_dir / "iterative" / f"{s.id}.png")
                previous = edited
            except SampleProblem as exc:
                broken = f"session broken at turn {s.turn}: {exc}"
                failures[(s.id, "multi_turn")] = broken
    return failures


# --------------------------------------------------------------------------------------- evaluation


def _files_state(path: Path) -> list:
    """(name, size, mtime) of a local dataset's data files: editing the data invalidates cached scores."""
    if path.is_file():
        st = path.stat()
        return [(path.name, st.st_size, st.st_mtime_ns)]
    files = [p for ext in ("*.parquet", "*.arrow") for p in path.rglob(ext)] + list(path.glob("*.json"))
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _fingerprint(evalset: EvalSet, clip_info: dict, dino_info: dict, captions) -> str:
    """Key of the score cache: the data (and its files' state), the layout and split, the captions, the backbones."""
    src = Path(evalset.source).expanduser()
    key = {
        "version": 1, "layout": evalset.layout.name, "split": evalset.split,
        "source": str(src.resolve()) if src.exists() else evalset.source,
        "files": _files_state(src) if src.exists() else None,
        "captions": [str(Path(captions).resolve()), _files_state(Path(captions))] if captions else None,
        "clip": {k: clip_info.get(k) for k in ("name", "path", "commit", "config_sha256")},
        "dino": {k: dino_info.get(k) for k in ("name", "path", "commit", "config_sha256")},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def evaluate(
    data: str, out: str | Path, layout: str = "auto", split: str | None = None, model: str | Path | None = None,
    predictions: str | Path | None = None, clip: str = DEFAULT_CLIP, dino: str = DEFAULT_DINO,
    limit: int | None = None, steps: int = 20, seed: int = 0, task: str = "data", captions: str | Path | None = None,
    guidance_scale: float = 7.5, image_guidance_scale: float = 1.5, resolution: int | None = None,
    alpha: float = 0.03, batch_size: int = 16, device: str | None = None, examples: int = 16,
    task_embeddings: list = (), pipe=None,
) -> dict:
    """Score an editor on a benchmark and write the report into ``out``; returns the report dict.

    Outputs come from ``model`` (edited now, into ``out/predictions``), from ``predictions`` (a folder
    in :class:`PredictionDir`'s layout), or, with neither, from the data (an ``edited_image`` column of
    the emu layout, e.g. Emu Edit's own generations; in our layout the dataset's edited images are then
    scored as outputs, without ground-truth metrics). With ``model``, ``out/predictions/settings.json``
    records the generation settings; a rerun with other settings raises :class:`MultiEditError` (see
    :mod:`.provenance`). A run in which no sample can be scored at all raises too, naming the first problem.
    """
    from .report import build_report, write_report

    if model is not None and predictions is not None:
        raise MultiEditError("Pass either --model (edit now) or --predictions (score existing outputs), not both.")
    if model is not None or pipe is not None:
        from ..editing import check_edit_settings

        check_edit_settings(steps, guidance_scale, image_guidance_scale, seed, resolution, alpha)
    elif steps < 1:
        raise MultiEditError(f"--steps must be at least 1, got {steps}.")
    out = check_output_path(out, "--out", "folder")
    if predictions is not None and not Path(predictions).is_dir():
        raise MultiEditError(f"--predictions {predictions} is not a folder; pass the folder holding <id>.png files.")
    check_eval_args(batch_size, examples, limit)
    device = resolve_device(device)
    evalset = load_eval_set(data, layout=layout, split=split, limit=limit, captions=captions)
    if not evalset.samples:
        raise MultiEditError(f"Dataset {data} (split {evalset.split}) has no rows to evaluate.")
    if model is not None or pipe is not None:
        gen = generation_settings(evalset, model, task_embeddings, task, steps, seed, guidance_scale,
                                  image_guidance_scale, resolution, alpha)
        check_settings(out / "predictions", gen)  # before any model loads: other settings are refused at once
    elif predictions is not None:
        check_predictions_present(evalset.samples, PredictionDir(predictions))
    out.mkdir(parents=True, exist_ok=True)
    notes = list(evalset.notes)

    clip_model = ClipBackbone.load(clip, device)  # before any editing: a missing backbone fails in seconds
    dino_model = DinoBackbone.load(dino, device)

    protocols = tuple(evalset.layout.protocols)
    if model is not None or pipe is not None:
        from ..editing import load_pipeline

        pipe = pipe or load_pipeline(model, task_embeddings)
        if clip_model.device.type != "cpu":
            pipe = pipe.to(clip_model.device)
        pred_dir = out / "predictions"
        record_settings(pred_dir, gen)
        failures = run_editor(evalset, pipe, pred_dir, task=task, steps=steps, seed=seed, guidance_scale=guidance_scale,
                              image_guidance_scale=image_guidance_scale, resolution=resolution, alpha=alpha)
        outputs = PredictionDir(pred_dir, failures)
        source = {"kind": "model", "model": str(model) if model else "(in-memory pipeline)", "steps": steps, "seed": seed,
                  "task": task, "guidance_scale": guidance_scale, "image_guidance_scale": image_guidance_scale,
                  "resolution": resolution, "alpha": alpha, "predictions": str(pred_dir)}
    elif predictions is not None:
        outputs = PredictionDir(predictions)
        source = {"kind": "predictions", "predictions": str(predictions)}
    elif evalset.has("output"):
        outputs = DataOutputs(evalset, "output")
        source = {"kind": "data", "column": evalset.columns["output"]}
    elif evalset.has("target"):
        outputs = DataOutputs(evalset, "target")
        protocols = tuple(p for p in protocols if p != "magicbrush")
        source = {"kind": "data", "column": evalset.columns["target"]}
        notes.append("no --model or --predictions: the dataset's own edited images are scored (no ground-truth metrics)")
    else:
        raise MultiEditError("Nothing to score: this data holds no edited images; pass --model DIR or --predictions DIR.")
    if "magicbrush" in protocols and not evalset.has("target"):
        protocols = tuple(p for p in protocols if p != "magicbrush")
    if not protocols:
        raise MultiEditError("No metric applies: the data has no input images to compare against; check --layout.")

    cache = ScoreCache(out / "cache" / f"scores-{_fingerprint(evalset, clip_model.info, dino_model.info, captions)}.jsonl")
    records = {"single_turn": score_setting(evalset, evalset.samples, "single_turn", protocols, outputs,
                                            clip_model, dino_model, cache, batch_size)}
    require_scored(records["single_turn"], evalset.samples, outputs)
    groups = evalset.groups()
    if evalset.has_turns and outputs.kind == "predictions" and evalset.has("target"):
        in_groups = [s for turns in groups.values() for s in turns]
        firsts = {turns[0].id for turns in groups.values()}
        records["multi_turn"] = score_setting(evalset, in_groups, "multi_turn", ("magicbrush",), outputs,
                                              clip_model, dino_model, cache, batch_size, firsts)
    elif evalset.has_turns:
        notes.append("the data has multi-turn sessions, but multi-turn scores need --model or --predictions")

    report = build_report(evalset, records, protocols, source, clip_model.info, dino_model.info, notes)
    write_report(out, report, evalset, records, outputs, examples=examples)
    return report
