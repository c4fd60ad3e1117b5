"""``multiedit datagen``: Emu Edit's data engine, one stage at a time or all stages.

``multiedit datagen STAGE ...`` runs one stage; ``multiedit datagen --task ... --captions ... --out
DIR`` (no stage) is the full pipeline. Stages are added by registrar functions in
:data:`STAGE_REGISTRARS` (each adds one sub-command to the stage sub-parsers), and the full form's
flags by :data:`PIPELINE_REGISTRARS` (each adds flags to the ``datagen`` parser itself and may set
``func``), so a new stage or the full pipeline never rewrites the existing ones. Shared flag groups
(:func:`add_instruction_arguments`) can be reused by the full form.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

Registrar = Callable[[argparse._SubParsersAction], None]


def add_caption_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("captions")
    g.add_argument(
        "--captions",
        required=required,
        help="Input captions: a text file (one per line), JSONL, a Parquet file or folder, or a dataset name.",
    )
    g.add_argument(
        "--caption-column",
        default="caption",
        help="Caption field/column in JSONL, Parquet or datasets (default: caption).",
    )
    g.add_argument("--caption-split", default="train", help="Split of a Hugging Face dataset (default: train).")
    g.add_argument("--limit", type=int, default=None, help="Use only the first N distinct captions (before sharding).")


def add_instruction_arguments(p: argparse.ArgumentParser) -> None:
    """The LLM-writer flags of stage 1 (shared by ``datagen instructions`` and the full pipeline)."""
    g = p.add_argument_group("instruction writer (stage 1)")
    g.add_argument(
        "--llm",
        choices=["vllm", "template"],
        default="vllm",
        help="Writer: an OpenAI-compatible server such as vLLM (default), or the offline rule-based template writer.",
    )
    g.add_argument(
        "--llm-url",
        default=os.environ.get("MULTIEDIT_LLM_URL", "http://127.0.0.1:8000/v1"),
        help="API root of the server, ending in /v1 (default: $MULTIEDIT_LLM_URL or http://127.0.0.1:8000/v1).",
    )
    g.add_argument("--llm-model", default=None, help="Served model name (default: the server's only model).")
    g.add_argument(
        "--api-key",
        default=os.environ.get("MULTIEDIT_LLM_API_KEY"),
        help="Bearer token for the server (default: $MULTIEDIT_LLM_API_KEY).",
    )
    g.add_argument("--concurrency", type=int, default=16, help="Requests in flight at once (default 16).")
    g.add_argument("--temperature", type=float, default=0.9, help="Sampling temperature (default 0.9).")
    g.add_argument("--top-p", type=float, default=0.9, help="Nucleus sampling top-p (default 0.9).")
    g.add_argument("--max-tokens", type=int, default=512, help="Maximum tokens per answer (default 512).")
    g.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="Retries of a failed or invalid answer, with exponential backoff (default 3).",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="Seconds allowed for one answer before it is retried (default 120).",
    )
    g.add_argument(
        "--backoff", type=float, default=1.0, help="First backoff delay in seconds; doubles per retry (default 1)."
    )
    g.add_argument(
        "--example-fraction",
        type=float,
        default=0.6,
        help="Fraction of the task's in-context examples shown per request (Emu Edit: 0.6).",
    )
    g.add_argument("--retry-failures", action="store_true", help="Retry captions recorded as failed in an earlier run.")


def add_shard_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sharding")
    g.add_argument(
        "--num-shards", type=int, default=None, help="Split the captions into N shards (default: $WORLD_SIZE or 1)."
    )
    g.add_argument(
        "--shard-index", type=int, default=None, help="Which shard this process writes (default: $RANK or 0)."
    )


def register_instructions_stage(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "instructions",
        help="Stage 1: write task-tagged edit instructions for captions with an LLM (vLLM) or templates.",
        description="Write one instruction record per caption (instruction, output caption, objects) with a "
        "per-task LLM agent behind an OpenAI-compatible server (start one with `multiedit serve-llm`), "
        "or offline with --llm template. Resumable, shardable; failures go to failures.jsonl.",
    )
    p.add_argument("--task", required=True, help="Task name from the registry (e.g. add, remove, local, global).")
    p.add_argument("--tasks-file", default=None, help="A JSON/YAML file of extra task definitions to register first.")
    p.add_argument("--out", required=True, help="Output folder (instructions*.jsonl, failures*.jsonl, run*.json).")
    p.add_argument("--seed", type=int, default=0, help="Seed of example choice, verb choice and sampling (default 0).")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    add_caption_arguments(p)
    add_instruction_arguments(p)
    add_shard_arguments(p)
    p.set_defaults(func=run_instructions)


def instruction_config_from_args(args: argparse.Namespace, out_dir) -> object:
    from ..datagen.instructions import InstructionConfig

    return InstructionConfig(
        task=args.task,
        out_dir=out_dir,
        llm=args.llm,
        llm_url=args.llm_url,
        llm_model=args.llm_model,
        api_key=args.api_key,
        concurrency=args.concurrency,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        max_retries=args.max_retries,
        timeout=args.timeout,
        backoff=args.backoff,
        num_shards=args.num_shards,
        shard_index=args.shard_index,
        example_fraction=args.example_fraction,
        retry_failures=args.retry_failures,
        progress=not getattr(args, "no_progress", False),
    )


def run_instructions(args: argparse.Namespace) -> int:
    from ..datagen.captions import read_captions
    from ..datagen.instructions import generate_instructions

    if args.tasks_file:
        from ..tasks import load_tasks_file

        load_tasks_file(args.tasks_file)
    config = instruction_config_from_args(args, args.out)  # checks flags before reading captions
    captions = read_captions(args.captions, column=args.caption_column, split=args.caption_split, limit=args.limit)
    s = generate_instructions(captions, config)
    print(
        f"task {config.task}: {s.accepted} accepted, {s.failed} failed (accept rate {s.accept_rate:.0%}), "
        f"{s.already_done} already done, of {s.in_shard} captions in shard {config.shard_index}/{config.num_shards}."
    )
    for reason, n in sorted(s.failure_reasons.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  failed {n}x: {reason}")
    print(f"records: {s.records_path}\nfailures: {s.failures_path}")
    return 0


# --- stages 2-4 and the full pipeline ----------------------------------------------------------


def add_model_arguments(p: argparse.ArgumentParser, parts=("sd", "grounding", "sam", "clip", "depth")) -> None:
    """Model flags: each names the real checkpoint by default and accepts a local folder."""
    from ..datagen.defaults import MODELS

    g = p.add_argument_group("models (hub ids or local folders)")
    helps = {
        "sd": ("--sd-model", "sd_model", "Text-to-image Stable Diffusion pipeline"),
        "grounding": ("--grounding-model", "grounding_model", "Grounding DINO detector"),
        "sam": ("--sam-model", "sam_model", "SAM (transformers format, or an original sam_vit_*.pth file)"),
        "clip": ("--clip-model", "clip_model", "CLIP model of the filters"),
        "depth": ("--depth-model", "depth_model", "Depth model of the depth filter (Depth Anything / DPT)"),
    }
    for part in parts:
        flag, dest, text = helps[part]
        g.add_argument(flag, dest=dest, default=None, help=f"{text} (default: {MODELS[dest][0]}).")
    if "sam" in parts:
        g.add_argument("--sam-type", default=None, help="SAM type of a .pth checkpoint: vit_b, vit_l or vit_h "
                       "(default: read from the file name).")
    g.add_argument("--zoo", default=None, help="A folder written by `multiedit zoo`: every model not given "
                   "explicitly comes from its parts (tiny random models, for offline tries and tests).")
    g.add_argument("--device", default=None, help="torch device (default: cuda, or cuda:$LOCAL_RANK under "
                   "accelerate launch, else cpu).")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="Model dtype (default auto: float16 on GPU, float32 on CPU).")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pair generation (stage 3)")
    g.add_argument("--steps", type=int, default=50, help="Denoising steps (default 50).")
    g.add_argument("--guidance-scale", type=float, default=7.5, help="Classifier-free guidance scale (default 7.5).")
    g.add_argument("--cross-fraction", type=float, default=0.8, help="Prompt-to-Prompt τ: fraction of the first "
                   "steps in which shared tokens take the source's cross-attention maps (default 0.8).")
    g.add_argument("--self-fraction", type=float, default=0.4, help="Fraction of the first steps in which edits take "
                   "the source's self-attention maps (default 0.4).")
    g.add_argument("--p2p-cross-fractions", type=float, nargs="+", default=[0.2, 0.5, 0.8],
                   help="Unmasked tasks (global, style, text): one candidate per τ (default 0.2 0.5 0.8).")
    g.add_argument("--blend-fraction", type=float, default=1.0, help="Blend latents outside the mask with the source "
                   "during this fraction of the first steps (default 1.0: every step; Emu Edit blends early steps).")
    g.add_argument("--scheduler", default="ddim", choices=["ddim", "pipeline"],
                   help="ddim (deterministic, default) or the pipeline's own scheduler.")
    g.add_argument("--height", type=int, default=None, help="Image height (default: the model's native size).")
    g.add_argument("--width", type=int, default=None, help="Image width (default: the model's native size).")
    g.add_argument("--seeds-per-sample", type=int, default=1, help="Seeds tried per record; every seed adds its "
                   "candidates (default 1).")
    g = p.add_argument_group("grounding (stage 2)")
    g.add_argument("--box-threshold", type=float, default=0.3, help="Grounding DINO box threshold (default 0.3).")
    g.add_argument("--text-threshold", type=float, default=0.25, help="Grounding DINO text threshold (default 0.25).")
    g.add_argument("--max-boxes", type=int, default=5, help="Boxes kept per object, best first (default 5).")
    g.add_argument("--dilate-fraction", type=float, default=0.03, help="Dilation radius of the dilated mask, as a "
                   "fraction of the shorter image side (default 0.03).")
    g.add_argument("--blur-fraction", type=float, default=0.02, help="Gaussian sigma of the dilated mask's blur, as a "
                   "fraction of the shorter side (default 0.02).")


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (stage 4; defaults: the task's registry thresholds)")
    g.add_argument("--min-clip-direction", type=float, default=None, help="Minimum CLIP directional similarity.")
    g.add_argument("--min-clip-image", type=float, default=None, help="Minimum CLIP image similarity (source vs edit).")
    g.add_argument("--min-clip-output", type=float, default=None,
                   help="Minimum CLIP similarity of edit and output caption.")
    g.add_argument("--max-depth-l1", type=_depth_l1, default=None,
                   help="Maximum mean depth-map L1 on [0, 1] maps, or 'off'.")
    g.add_argument("--no-detector-check", action="store_true", help="Skip the detector check (add: object found; "
                   "remove: object gone).")
    g.add_argument("--classifier", default=None, help="A trained task classifier (or MultiEditPipeline folder): drop "
                   "records whose instruction it does not read as the intended task (off by default).")
    g.add_argument("--classifier-threshold", type=float, default=0.5, help="Minimum classifier probability of the "
                   "intended task (default 0.5).")


def _depth_l1(value: str) -> float | str:
    """``--max-depth-l1``: a number >= 0 or ``off`` (argparse reports the error with the usage line, exit 2)."""
    from ..datagen.engine import parse_depth_l1
    from ..errors import MultiEditError

    try:
        return parse_depth_l1(value)
    except MultiEditError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--max-depth-l1 ")) from None


def add_writer_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="Output folder: data/*.parquet, manifest*.json, dropped*.jsonl.")
    g.add_argument("--rows-per-shard", type=int, default=256, help="Samples per Parquet shard (default 256).")
    g.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")


def datagen_config_from_args(args: argparse.Namespace, **overrides):
    from ..datagen.engine import DatagenConfig

    names = [
        "sd_model", "grounding_model", "sam_model", "clip_model", "depth_model", "zoo", "sam_type", "classifier",
        "classifier_threshold", "steps", "guidance_scale", "cross_fraction", "self_fraction", "blend_fraction",
        "scheduler", "height", "width", "seeds_per_sample", "seed", "box_threshold", "text_threshold", "max_boxes",
        "dilate_fraction", "blur_fraction", "min_clip_direction", "min_clip_image", "min_clip_output",
        "max_depth_l1", "rows_per_shard", "num_shards", "shard_index", "device", "dtype",
    ]
    kw = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "p2p_cross_fractions", None):
        kw["p2p_cross_fractions"] = tuple(args.p2p_cross_fractions)
    kw["detector_check"] = not getattr(args, "no_detector_check", False)
    kw["progress"] = not getattr(args, "no_progress", False)
    kw.update(overrides)
    return DatagenConfig(**kw)


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if not getattr(args, n, None)]
    if missing:
        from ..errors import MultiEditError

        raise MultiEditError(f"`multiedit datagen` needs {' and '.join(missing)}; see `multiedit datagen --help`.")


def _load_tasks_file(args: argparse.Namespace) -> None:
    if getattr(args, "tasks_file", None):
        from ..tasks import load_tasks_file

        load_tasks_file(args.tasks_file)


def _print_summary(summary) -> None:
    for line in summary.lines():
        print(line)


def register_pipeline(p: argparse.ArgumentParser) -> None:
    """The no-stage form: ``multiedit datagen --task T --captions F --out D`` runs every stage
    (``--backend shapes``: ShapesWorld instead, ``multiedit datagen --backend shapes --task add -n N``)."""
    from ..datagen.shapes.cli import add_shapes_arguments, run_shapes

    p.add_argument("--task", default=None, help="Task name from the registry (e.g. add, remove, global, detect); "
                   "--backend shapes: names separated by commas (default: every trained task).")
    p.add_argument("--tasks-file", default=None, help="A JSON/YAML file of extra task definitions to register first.")
    p.add_argument("--instructions", default=None, help="Use the instruction records of an earlier "
                   "`datagen instructions` run in this folder instead of writing new ones.")
    p.add_argument("--seed", type=int, default=0, help="Seed of instructions and images (default 0).")
    add_caption_arguments(p, required=False)
    add_instruction_arguments(p)
    add_shard_arguments(p)
    add_model_arguments(p)
    add_generation_arguments(p)
    add_filter_arguments(p)
    add_writer_arguments(p)
    add_shapes_arguments(p)

    def run_pipeline(args: argparse.Namespace) -> int:
        from pathlib import Path

        from ..datagen.captions import read_captions
        from ..datagen.engine import run_datagen

        if args.backend == "shapes":
            return run_shapes(args, p)
        if not args.task and not args.out and not args.captions and not args.instructions:
            return _no_stage(p)
        _need(args, "task", "out")
        if not args.captions and not args.instructions:
            _need(args, "captions")
        _load_tasks_file(args)
        config = datagen_config_from_args(args, task=args.task, out_dir=args.out,
                                          limit=args.limit if args.instructions else None)
        captions, icfg = None, None
        if not args.instructions:
            icfg = instruction_config_from_args(args, Path(args.out) / "instructions")
            captions = read_captions(args.captions, column=args.caption_column, split=args.caption_split,
                                     limit=args.limit)
        summary = run_datagen(config, captions=captions, instructions_dir=args.instructions, instruction_config=icfg)
        _print_summary(summary)
        return 0

    p.set_defaults(func=run_pipeline)


def register_pairs_stage(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "pairs",
        help="Stages 2-3: source images, masks and every candidate pair, unfiltered.",
        description="For each instruction record: draw the source, ground the object (Grounding DINO + SAM), and "
        "draw one candidate edit per mask variant (or per τ) with Prompt-to-Prompt attention control and latent "
        "blending. Every candidate is written as a row (sharing its record's sample_id); score and select them "
        "with `multiedit datagen filter`.",
    )
    p.add_argument("--task", required=True, help="Task name from the registry.")
    p.add_argument("--tasks-file", default=None, help="A JSON/YAML file of extra task definitions to register first.")
    p.add_argument("--instructions", required=True, help="Folder of a `datagen instructions` run.")
    p.add_argument("--limit", type=int, default=None, help="Use only the first N records of this shard.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the images (default 0).")
    add_shard_arguments(p)
    add_model_arguments(p, parts=("sd", "grounding", "sam", "depth"))
    add_generation_arguments(p)
    add_writer_arguments(p)

    def run(args: argparse.Namespace) -> int:
        from ..datagen.engine import run_datagen

        _need(args, "out")
        _load_tasks_file(args)
        config = datagen_config_from_args(args, task=args.task, out_dir=args.out, limit=args.limit, apply_filters=False)
        _print_summary(run_datagen(config, instructions_dir=args.instructions))
        return 0

    p.set_defaults(func=run)


def register_filter_stage(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "filter",
        help="Stage 4: score a pair dataset (CLIP, depth, detector) and keep the best passing candidate per sample.",
        description="Score every row of a pair dataset (from `datagen pairs` or any dataset with input_image, "
        "edited_image, input_caption and output_caption) and write the best passing candidate per sample_id.",
    )
    p.add_argument("--dataset", required=True, help="Pair dataset folder (Parquet shards) or dataset name.")
    p.add_argument("--task", required=True, help="Task of rows without a task column (and its thresholds).")
    p.add_argument("--tasks-file", default=None, help="A JSON/YAML file of extra task definitions to register first.")
    add_shard_arguments(p)
    add_model_arguments(p, parts=("grounding", "sam", "clip", "depth"))
    add_filter_arguments(p)
    add_writer_arguments(p)

    def run(args: argparse.Namespace) -> int:
        from ..datagen.stages import filter_dataset

        _need(args, "out")
        _load_tasks_file(args)
        _print_summary(filter_dataset(args.dataset, datagen_config_from_args(args, task=args.task, out_dir=args.out)))
        return 0

    p.set_defaults(func=run)


def register_ground_stage(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "ground",
        help="Stage 2 alone: ground objects in images and write their three mask variants.",
        description="Find each --objects phrase in every image with Grounding DINO, segment it with SAM (one image "
        "embedding per image) and write precise, dilated+blurred and box masks as PNG, with masks.jsonl.",
    )
    p.add_argument("--images", required=True, help="An image file or a folder of images.")
    p.add_argument("--objects", required=True, nargs="+", help="Object phrases to ground (e.g. dog 'red car').")
    p.add_argument("--out", required=True, help="Output folder for the masks and masks.jsonl.")
    p.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    add_model_arguments(p, parts=("grounding", "sam"))
    g = p.add_argument_group("grounding")
    g.add_argument("--box-threshold", type=float, default=0.3, help="Grounding DINO box threshold (default 0.3).")
    g.add_argument("--text-threshold", type=float, default=0.25, help="Grounding DINO text threshold (default 0.25).")
    g.add_argument("--max-boxes", type=int, default=5, help="Boxes kept per object (default 5).")

    def run(args: argparse.Namespace) -> int:
        from ..datagen.stages import ground_images

        config = datagen_config_from_args(args, task="segment", out_dir=args.out)
        counts = ground_images(args.images, args.objects, config)
        print(f"{counts['masks']} object(s) grounded, {counts['no_detection']} without detection, in "
              f"{counts['images']} image(s) ({counts['already_done']} already done); masks in {args.out}")
        return 0

    p.set_defaults(func=run)


#: Functions adding one stage sub-command each; other stages append theirs here.
STAGE_REGISTRARS: list[Registrar] = [
    register_instructions_stage,
    register_pairs_stage,
    register_filter_stage,
    register_ground_stage,
]

#: Functions adding the full-pipeline flags to the ``datagen`` parser itself (``p``) and setting
#: ``func`` for the no-stage form. Their flags must not be ``required=True`` (argparse would then
#: demand them before a stage sub-command too): check them in ``func`` instead.
PIPELINE_REGISTRARS: list[Callable[[argparse.ArgumentParser], None]] = [register_pipeline]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datagen",
        help="Generate edit data (Emu Edit's data engine): `datagen --task T --captions F --out D`, or one stage.",
        description="Generate task-tagged edit pairs: `multiedit datagen --task add --captions FILE --out DIR` runs "
        "every stage (instructions, source image, masks, candidate pairs, filters, dataset); "
        "`multiedit datagen STAGE ...` runs one stage.",
    )
    p.set_defaults(func=lambda args: _no_stage(p))
    for registrar in PIPELINE_REGISTRARS:
        registrar(p)
    stages = p.add_subparsers(dest="stage", metavar="STAGE", title="stages")
    for registrar in STAGE_REGISTRARS:
        registrar(stages)


def _no_stage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2
