"""The datagen engine: instructions → source → masks → candidates → filters → dataset (Emu Edit §3).

:func:`run_datagen` is ``multiedit datagen --task TASK ...``: it runs stage 1 (or reads
``--instructions``), then for every record of this shard that is not finished yet makes the
candidates (:mod:`.candidates`), scores them (:func:`score_candidates`, :mod:`.filters`), keeps the
best passing one and writes it (:class:`.writer.DatasetWriter`). Each stage also runs alone:
:func:`generate_dataset` with ``apply_filters=False`` writes every candidate unscored (``datagen
pairs``); :func:`filter_dataset` scores and filters any pair dataset (``datagen filter``);
:func:`ground_images` writes the mask variants of given images (``datagen ground``).

Every model is a flag with the real checkpoint as default, loaded on first use
(:class:`DatagenModels`); ``zoo`` points all of them at a folder written by ``multiedit zoo``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from ..errors import MultiEditError
from ..tasks import Task, get_task
from .candidates import MASKED, Candidate, CandidateMaker
from .defaults import MODELS
from .filters import FILTER_ORDER, CandidateScores, Thresholds, failed_filters, select_best
from .writer import DatasetWriter

logger = logging.getLogger(__name__)


def parse_depth_l1(value: float | str) -> float | str:
    """``--max-depth-l1``: ``"off"``, or a number >= 0 (a mean L1 of [0, 1] depth maps), given as a number or text."""
    if value == "off":
        return value
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not x >= 0:  # also NaN
        raise MultiEditError(f"--max-depth-l1 {value!r} is not a number >= 0 or 'off'; pass e.g. 0.2, or off.")
    return x


@dataclass
class DatagenConfig:
    """Settings of stages 2-4 (the CLI flags of ``multiedit datagen``); see ``--help`` for each.

    Model fields left ``None`` resolve to ``zoo/<part>`` when ``zoo`` is set, else to the real
    checkpoint in :data:`MODELS`. Filter overrides left ``None`` keep the task's registry
    thresholds; ``max_depth_l1="off"`` switches the depth check off.
    """

    task: str
    out_dir: Path
    sd_model: str | None = None
    grounding_model: str | None = None
    sam_model: str | None = None
    clip_model: str | None = None
    depth_model: str | None = None
    zoo: str | None = None
    sam_type: str | None = None
    classifier: str | None = None
    classifier_threshold: float = 0.5
    steps: int = 50
    guidance_scale: float = 7.5
    cross_fraction: float = 0.8
    self_fraction: float = 0.4
    p2p_cross_fractions: tuple[float, ...] = (0.2, 0.5, 0.8)
    blend_fraction: float = 1.0
    scheduler: str = "ddim"
    height: int | None = None
    width: int | None = None
    seeds_per_sample: int = 1
    seed: int = 0
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    max_boxes: int = 5
    dilate_fraction: float = 0.03
    blur_fraction: float = 0.02
    min_clip_direction: float | None = None
    min_clip_image: float | None = None
    min_clip_output: float | None = None
    max_depth_l1: float | str | None = None
    detector_check: bool = True
    apply_filters: bool = True
    rows_per_shard: int = 256
    num_shards: int | None = None
    shard_index: int | None = None
    limit: int | None = None
    device: str | None = None
    dtype: str = "auto"
    progress: bool = True

    def __post_init__(self):
        from .instructions import resolve_shard

        self.out_dir = Path(self.out_dir)
        if self.zoo and not Path(self.zoo).is_dir():
            raise MultiEditError(f"--zoo {self.zoo} is not a folder; write one with `multiedit zoo --out {self.zoo}`.")
        for name, (default, part) in MODELS.items():
            if getattr(self, name) is None:
                setattr(self, name, str(Path(self.zoo) / part) if self.zoo else default)
        fractions = {"cross_fraction": self.cross_fraction, "self_fraction": self.self_fraction,
                     "blend_fraction": self.blend_fraction}
        fractions.update({f"p2p_cross_fractions[{i}]": f for i, f in enumerate(self.p2p_cross_fractions)})
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise MultiEditError(f"--{name.replace('_', '-')} is {value}; it must be a fraction in [0, 1].")
        for name in ("steps", "seeds_per_sample", "rows_per_shard", "max_boxes"):
            if getattr(self, name) < 1:
                raise MultiEditError(f"--{name.replace('_', '-')} is {getattr(self, name)}; it must be at least 1.")
        if not self.p2p_cross_fractions:
            raise MultiEditError("--p2p-cross-fractions needs at least one value.")
        if self.limit is not None and self.limit < 1:
            raise MultiEditError(f"--limit is {self.limit}; it must be at least 1.")
        if self.max_depth_l1 is not None:
            self.max_depth_l1 = parse_depth_l1(self.max_depth_l1)
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise MultiEditError(f"--dtype {self.dtype!r}; use auto, float32, float16 or bfloat16.")
        self.num_shards, self.shard_index = resolve_shard(self.num_shards, self.shard_index)

    def torch_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        if torch.cuda.is_available():  # under `accelerate launch`, one GPU per process
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cpu")

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if self.torch_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def thresholds(self, task: Task) -> Thresholds:
        return Thresholds.for_task(
            task,
            clip_direction=self.min_clip_direction,
            clip_image=self.min_clip_image,
            clip_output=self.min_clip_output,
            depth_l1=self.max_depth_l1,
            detector="off" if not self.detector_check else None,
        )

    def model_ids(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in MODELS} | {"classifier_model": self.classifier or ""}

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class DatagenModels:
    """The models of a run, each loaded on first use (a color run never loads SAM)."""

    def __init__(self, config: DatagenConfig):
        self.config = config
        self.device, self.dtype = config.torch_device(), config.torch_dtype()

    def path(self, name: str) -> str:
        """The model of config field ``name``; a part missing from ``--zoo`` fails with the fix."""
        value, c = getattr(self.config, name), self.config
        part = MODELS[name][1]
        if c.zoo and Path(value) == Path(c.zoo) / part and not Path(value).is_dir():
            raise MultiEditError(f"--zoo {c.zoo} has no {part!r} part; write it with "
                                 f"`multiedit zoo --out {c.zoo} --parts {part}`.")
        return value

    @cached_property
    def sampler(self):
        from .pairs import PairSampler, load_sd_pipeline

        c = self.config
        pipe = load_sd_pipeline(self.path("sd_model"), self.device, self.dtype)
        return PairSampler(pipe, num_inference_steps=c.steps, guidance_scale=c.guidance_scale,
                           blend_fraction=c.blend_fraction, scheduler=c.scheduler, height=c.height, width=c.width)

    @cached_property
    def grounder(self):
        from .grounding import Grounder, load_sam

        c = self.config
        sam = load_sam(self.path("sam_model"), self.device, self.dtype, model_type=c.sam_type)
        return Grounder(self.path("grounding_model"), sam, box_threshold=c.box_threshold,
                        text_threshold=c.text_threshold, max_boxes=c.max_boxes, dilate_fraction=c.dilate_fraction,
                        blur_fraction=c.blur_fraction, device=self.device, dtype=self.dtype)

    @cached_property
    def clip(self):
        from .scoring import ClipEmbedder

        return ClipEmbedder(self.path("clip_model"), self.device, self.dtype)

    @cached_property
    def depth(self):
        from .scoring import DepthEstimator

        return DepthEstimator(self.path("depth_model"), self.device, self.dtype)

    @cached_property
    def classifier(self):
        from ..classifier.model import load_classifier

        return load_classifier(self.config.classifier, self.device)

    @property
    def unet_calls(self) -> int:
        """UNet forward calls so far (each runs a whole batch: CFG halves times branches)."""
        return self.__dict__["sampler"].unet_calls if "sampler" in self.__dict__ else 0

    @property
    def unet_images(self) -> int:
        """Latents evaluated by the UNet so far (calls times batch size)."""
        return self.__dict__["sampler"].unet_images if "sampler" in self.__dict__ else 0


@dataclass
class DatagenSummary:
    """What a run did. ``total`` = ``already_done`` + ``kept`` + the sum of ``dropped`` (per reason)."""

    task: str
    total: int
    already_done: int
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    candidates: int = 0
    candidate_failures: dict[str, int] = field(default_factory=dict)
    unet_calls: int = 0
    unet_images: int = 0
    out_dir: Path | None = None

    @property
    def processed(self) -> int:
        return self.kept + sum(self.dropped.values())

    @property
    def accept_rate(self) -> float:
        return self.kept / self.processed if self.processed else 0.0

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def lines(self) -> list[str]:
        out = [
            f"task {self.task}: {self.kept} kept, {sum(self.dropped.values())} dropped (accept rate "
            f"{self.accept_rate:.0%}), {self.already_done} already done, of {self.total} records in this shard."
        ]
        out += [f"  dropped by {reason}: {n}" for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])]
        if self.candidates:
            fails = ", ".join(f"{k} {v}" for k, v in self.candidate_failures.items() if v)
            out.append(f"  {self.candidates} candidates scored; failures per filter: {fails or 'none'}")
        if self.unet_calls:
            def per(n: int) -> str:
                return f"{n / self.kept:.1f} per kept sample" if self.kept else "no sample kept"

            out.append(f"  UNet calls: {self.unet_calls} ({per(self.unet_calls)}); latents evaluated: "
                       f"{self.unet_images} ({per(self.unet_images)})")
        if self.out_dir is not None:
            out.append(f"dataset: {Path(self.out_dir) / 'data'}")
        return out


def sample_id(record: dict) -> str:
    """A record's sample id: ``<task>-<caption_id>`` (stable across runs; keys resume and sharding)."""
    return f"{record['task']}-{record['caption_id']}"


def sample_seeds(seed: int, caption_id: str, n: int) -> list[int]:
    """``n`` seeds for a caption, derived from the run seed and the caption id (order-independent)."""
    return [int(hashlib.sha1(f"{seed}:{caption_id}:{k}".encode()).hexdigest()[:8], 16) for k in range(n)]


# --------------------------------------------------------------------------------------- scoring


def score_candidates(
    candidates: list[Candidate], record: dict, models: DatagenModels, th: Thresholds, strategy: str
) -> list[CandidateScores]:
    """Measure every score ``th`` needs, for every candidate of one record (CLIP always)."""
    from .filters import clip_direction_similarity, clip_image_similarity, clip_output_similarity, depth_l1

    if not candidates:
        return []
    inputs = list({id(c.input_image): c.input_image for c in candidates}.values())
    slot = {id(im): i for i, im in enumerate(inputs)}
    emb = models.clip.images(inputs + [c.edited_image for c in candidates])
    src_img = emb[[slot[id(c.input_image)] for c in candidates]]
    edit_img = emb[len(inputs):]
    txt = models.clip.texts([record["input_caption"], record["output_caption"]])
    n = len(candidates)
    direction = clip_direction_similarity(src_img, edit_img, txt[0:1].expand(n, -1), txt[1:2].expand(n, -1))
    image_sim = clip_image_similarity(src_img, edit_img)
    output_sim = clip_output_similarity(edit_img, txt[1:2].expand(n, -1))
    scores = [
        CandidateScores(float(direction[i]), float(image_sim[i]), float(output_sim[i])) for i in range(n)
    ]
    if th.depth_l1 is not None:
        maps = models.depth(inputs + [c.edited_image for c in candidates])
        for i, c in enumerate(candidates):
            mask = c.mask if strategy in MASKED else None
            scores[i].depth_l1 = depth_l1(maps[slot[id(c.input_image)]], maps[len(inputs) + i], mask)
    if th.detector is not None:
        phrase = record.get("edited_object" if th.detector == "present" else "original_object", "")
        if phrase.strip():
            for i, c in enumerate(candidates):
                det = models.grounder.detect(c.edited_image, phrase)
                scores[i].detector_found, scores[i].detector_score = det.found, det.best_score
    return scores


def classifier_probabilities(records: list[dict], models: DatagenModels) -> list[float]:
    """The task classifier's probability that each record's instruction is its own task (Emu Edit's
    optional filter; the classifier is trained with ``multiedit classifier train``)."""
    from ..classifier.predict import filter_by_classifier

    if not records:
        return []
    model, tokenizer = models.classifier
    _, probs = filter_by_classifier(
        model, tokenizer, [r["instruction"] for r in records], [r["task"] for r in records],
        threshold=0.0, return_probabilities=True,
    )
    return [float(p) for p in probs]


# --------------------------------------------------------------------------------------- rows


def mask_image(mask: np.ndarray | None) -> PIL.Image.Image | None:
    if mask is None:
        return None
    return PIL.Image.fromarray((np.clip(mask, 0, 1) * 255).round().astype(np.uint8), "L")


def build_row(record: dict, cand: Candidate, index: int, n: int, scores: CandidateScores | None, all_scores: list,
              config: DatagenConfig, task: Task, classifier_prob: float) -> dict:
    """One dataset row (ARCHITECTURE.md layout): images, texts, every score, generation parameters."""
    s = scores or CandidateScores()
    found = -1 if s.detector_found is None else int(s.detector_found)
    return {
        "sample_id": sample_id(record),
        "caption_id": record["caption_id"],
        "task": task.name,
        "edit_prompt": record["instruction"],
        "input_caption": record["input_caption"],
        "output_caption": record["output_caption"],
        "original_object": record.get("original_object", "") or "",
        "edited_object": record.get("edited_object", "") or "",
        "input_image": cand.input_image,
        "edited_image": cand.edited_image,
        "mask": mask_image(cand.mask),
        "clip_direction": float(s.clip_direction),
        "clip_image": float(s.clip_image),
        "clip_output": float(s.clip_output),
        "depth_l1": float(s.depth_l1),
        "detector_found": found,
        "detector_score": float(s.detector_score),
        "classifier_prob": float(classifier_prob),
        "candidate_scores": json.dumps(all_scores),
        "candidate_index": index,
        "num_candidates": n,
        "pair_strategy": task.pair_strategy,
        "mask_variant": cand.variant,
        "seed": int(cand.seed),
        "cross_fraction": float(cand.cross_fraction),
        "self_fraction": float(cand.self_fraction),
        "blend_fraction": float(config.blend_fraction),
        "steps": int(config.steps),
        "guidance_scale": float(config.guidance_scale),
        "scheduler": config.scheduler,
        **config.model_ids(),
        "writer": record.get("writer", "") or "",
        "llm_model": record.get("llm_model", "") or "",
        "prompt_id": record.get("prompt_id", "") or "",
    }


def _score_summary(cands: list[Candidate], scores: list[CandidateScores], th: Thresholds) -> list[dict]:
    return [
        {"variant": c.variant, "seed": c.seed, **_finite(s.to_dict()), "failed": failed_filters(s, th)}
        for c, s in zip(cands, scores)
    ]


def _finite(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------- the run


def generate_dataset(records: list[dict], config: DatagenConfig, models: DatagenModels | None = None) -> DatagenSummary:
    """Stages 2-4 on instruction records (this shard's), writing ``config.out_dir``; resumable.

    With ``config.apply_filters=False`` (the ``pairs`` stage) every candidate is written unscored,
    one row each, sharing its record's ``sample_id``.
    """
    from tqdm.auto import tqdm

    task = get_task(config.task)
    if task.pair_strategy == "learned":
        raise MultiEditError(
            f"Task {task.name!r} is learned by task inversion and has no data recipe; pick another --task."
        )
    models = models or DatagenModels(config)
    th = config.thresholds(task)
    maker = CandidateMaker(task, models, config)
    records = [r for r in records if r.get("task") == task.name]
    run_info = {**config.to_dict(), "thresholds": th.to_dict()}
    with DatasetWriter(config.out_dir, config.num_shards, config.shard_index,
                       rows_per_shard=config.rows_per_shard, run_info=run_info) as writer:
        done = writer.done()
        pending = [r for r in records if sample_id(r) not in done]
        summary = DatagenSummary(task.name, len(records), len(records) - len(pending), out_dir=config.out_dir)
        summary.candidate_failures = dict.fromkeys(FILTER_ORDER, 0)
        probs = [math.nan] * len(pending)
        if config.classifier:
            probs = classifier_probabilities(pending, models)
        bar = tqdm(pending, desc=f"datagen[{task.name}]", unit="sample", disable=not config.progress,
                   dynamic_ncols=True)
        for record, prob in zip(bar, probs):
            sid = sample_id(record)
            if config.classifier and prob < config.classifier_threshold:
                writer.add_dropped(sid, "classifier", classifier_prob=prob)
                summary.drop("classifier")
            else:
                _one(record, prob, config, task, th, models, maker, writer, summary)
            bar.set_postfix(accept=f"{summary.accept_rate:.0%}", refresh=False)
        bar.close()
        summary.unet_calls, summary.unet_images = models.unet_calls, models.unet_images
        writer.write_manifest({"last_run": _summary_dict(summary)})
    return summary


def _one(record, prob, config, task, th, models, maker, writer, summary) -> None:
    sid = sample_id(record)
    made = maker(record, sample_seeds(config.seed, record["caption_id"], config.seeds_per_sample))
    if not made.candidates:
        logger.info("skipped %s: %s (%s)", sid, made.reason, made.detail)
        writer.add_dropped(sid, made.reason or "no_candidates", detail=made.detail)
        summary.drop(made.reason or "no_candidates")
        return
    cands = made.candidates
    if not config.apply_filters:
        rows = [build_row(record, c, i, len(cands), None, [], config, task, prob) for i, c in enumerate(cands)]
        writer.add_kept(sid, rows)
        summary.kept += 1
        return
    best, scores, table = score_and_select(cands, record, models, th, task, summary, writer, sid)
    if best is None:
        return
    writer.add_kept(sid, [build_row(record, cands[best], best, len(cands), scores[best], table, config, task, prob)])
    summary.kept += 1


def score_and_select(cands, record, models, th, task, summary, writer, sid):
    """Score every candidate, count per-filter failures, and pick the best passing one.

    Returns ``(best index or None, scores, score table)``; a sample with no passing candidate is
    recorded as dropped (with its reason) in ``writer`` and ``summary``.
    """
    scores = score_candidates(cands, record, models, th, task.pair_strategy)
    summary.candidates += len(cands)
    for s in scores:
        for name in failed_filters(s, th):
            summary.candidate_failures[name] += 1
    table = _score_summary(cands, scores, th)
    best, reason = select_best(scores, th)
    if best is None:
        writer.add_dropped(sid, reason, candidates=table)
        summary.drop(reason)
    return best, scores, table


def _summary_dict(s: DatagenSummary) -> dict:
    return {"total": s.total, "already_done": s.already_done, "kept": s.kept, "dropped": s.dropped,
            "candidates": s.candidates, "candidate_failures": s.candidate_failures, "unet_calls": s.unet_calls,
            "unet_images": s.unet_images}


def run_datagen(config: DatagenConfig, *, captions=None, instructions_dir: str | Path | None = None,
                instruction_config=None, models: DatagenModels | None = None) -> DatagenSummary:
    """The whole pipeline: stage 1 into ``out_dir/instructions`` (unless ``instructions_dir`` is
    given), then :func:`generate_dataset` on this shard's records of ``config.task``."""
    from .instructions import InstructionConfig, generate_instructions, in_shard, load_instruction_records

    get_task(config.task)
    if instructions_dir is None:
        if captions is None:
            raise MultiEditError(
                "Pass --captions (to write instructions first) or --instructions DIR from an earlier run."
            )
        icfg = instruction_config or InstructionConfig(
            task=config.task, out_dir=config.out_dir / "instructions", llm="template", seed=config.seed,
            num_shards=config.num_shards, shard_index=config.shard_index, progress=config.progress,
        )
        s = generate_instructions(captions, icfg)
        logger.info("instructions: %d accepted, %d failed, %d already done", s.accepted, s.failed, s.already_done)
        instructions_dir = icfg.out_dir
    records = [
        r for r in load_instruction_records(instructions_dir, config.task)
        if in_shard(r["caption_id"], config.num_shards, config.shard_index)
    ]
    if config.limit is not None:
        records = records[: config.limit]
    if not records:
        raise MultiEditError(
            f"No {config.task!r} instruction records in {instructions_dir} for shard "
            f"{config.shard_index}/{config.num_shards}; run stage 1 for this task first."
        )
    return generate_dataset(records, config, models)
