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


def add_caption_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("captions")
    g.add_argument(
        "--captions",
        required=True,
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


#: Functions adding one stage sub-command each; other stages append theirs here.
STAGE_REGISTRARS: list[Registrar] = [register_instructions_stage]

#: Functions adding the full-pipeline flags to the ``datagen`` parser itself (``p``) and setting
#: ``func`` for the no-stage form; empty until the full pipeline exists. Their flags must not be
#: ``required=True`` (argparse would then demand them before a stage sub-command too): check them
#: in ``func`` instead.
PIPELINE_REGISTRARS: list[Callable[[argparse.ArgumentParser], None]] = []


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datagen",
        help="Generate edit data (Emu Edit's data engine); run one stage, e.g. `datagen instructions`.",
        description="Generate task-tagged edit data. Run one stage with `multiedit datagen STAGE ...`.",
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
