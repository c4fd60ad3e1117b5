"""Datagen stage 1: task-tagged edit instructions for a list of captions (Emu Edit §3.1).

For each caption, the task's agent (an LLM behind vLLM's OpenAI-compatible server, or the offline
template writer) writes ``instruction``, ``output_caption``, ``original_object`` and
``edited_object``. Answers are constrained by a JSON schema and validated (:mod:`.validation`);
an answer that fails is retried with backoff, then recorded in the failures file with its reasons.

Output format: JSON Lines, one record per line, appended and flushed as each caption finishes.
Records arrive one at a time at LLM speed, so an append-only log loses at most the line being
written when a run is killed (a torn last line is trimmed on resume), and a rerun resumes from the
set of ``(task, caption_id)`` already written. Parquet would need buffering (losing a whole buffer
on a crash) or many tiny files. Later stages read the records with :func:`load_instruction_records`.

Layout of ``out_dir`` (one process per shard, so no two processes append to one file)::

    instructions.jsonl / failures.jsonl / run.json               # one shard
    instructions-00001-of-00004.jsonl / failures-00001-of-00004.jsonl / run-00001-of-00004.json

Shards merge by concatenation: a caption belongs to shard ``int(caption_id, 16) % num_shards``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from ..errors import MultiEditError
from ..io_utils import write_text_atomic
from ..tasks import Task, get_task
from .captions import Caption, caption_id
from .llm_client import ChatClient, LLMUnavailableError, RetryPolicy
from .prompts import DEFAULT_EXAMPLE_FRACTION, build_prompt
from .template_writer import WRITER_ID, write_template_answer
from .validation import answer_schema, check_answer, parse_answer

logger = logging.getLogger(__name__)

WRITERS = ("vllm", "template")


@dataclass
class InstructionConfig:
    """Settings of the instruction stage (the CLI flags of ``multiedit datagen instructions``).

    ``llm`` picks the writer: ``"vllm"`` (any OpenAI-compatible server at ``llm_url``) or
    ``"template"`` (offline, rule-based). ``llm_model=None`` uses the server's only model.
    ``num_shards``/``shard_index`` default to ``WORLD_SIZE``/``RANK`` (set by ``accelerate launch``),
    else one shard. ``max_chars`` overrides the per-field length limits of the schema.
    ``max_server_failures`` consecutive captions lost to server errors stop the run (the server is
    gone); default ``max(5, concurrency)``.
    """

    task: str
    out_dir: Path
    llm: str = "vllm"
    llm_url: str = "http://127.0.0.1:8000/v1"
    llm_model: str | None = None
    api_key: str | None = None
    concurrency: int = 16
    temperature: float = 0.9
    top_p: float = 0.9
    max_tokens: int = 512
    seed: int = 0
    max_retries: int = 3
    timeout: float = 120.0
    backoff: float = 1.0
    num_shards: int | None = None
    shard_index: int | None = None
    example_fraction: float = DEFAULT_EXAMPLE_FRACTION
    retry_failures: bool = False
    max_chars: dict[str, int] | None = None
    max_server_failures: int | None = None
    progress: bool = True

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        if self.llm not in WRITERS:
            raise MultiEditError(f"--llm {self.llm!r} is not a writer; use one of {list(WRITERS)}.")
        checks = [
            (self.concurrency >= 1, f"--concurrency must be at least 1, got {self.concurrency}"),
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            (self.max_tokens >= 1, f"--max-tokens must be at least 1, got {self.max_tokens}"),
            (self.max_retries >= 0, f"--max-retries must be >= 0, got {self.max_retries}"),
            (self.timeout > 0, f"--timeout must be positive, got {self.timeout}"),
            (0 < self.example_fraction <= 1, f"--example-fraction must be in (0, 1], got {self.example_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise MultiEditError(message + ".")
        self.num_shards, self.shard_index = resolve_shard(self.num_shards, self.shard_index)


@dataclass
class InstructionSummary:
    """What a run did: captions in this shard, already done before, accepted and failed now."""

    in_shard: int
    already_done: int
    accepted: int
    failed: int
    records_path: Path
    failures_path: Path
    failure_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def accept_rate(self) -> float:
        n = self.accepted + self.failed
        return self.accepted / n if n else 0.0


# --- sharding and files --------------------------------------------------------------------------


def resolve_shard(num_shards: int | None, shard_index: int | None) -> tuple[int, int]:
    """``(num_shards, shard_index)``, defaulting to ``WORLD_SIZE``/``RANK`` from the environment."""
    names = ("--num-shards", "--shard-index")
    if num_shards is None and shard_index is None:
        names = ("$WORLD_SIZE", "$RANK")
        try:
            num_shards = int(os.environ.get("WORLD_SIZE", "1"))
            shard_index = int(os.environ.get("RANK", "0"))
        except ValueError:
            raise MultiEditError(
                f"$WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} or $RANK={os.environ.get('RANK')!r} is not a whole "
                "number; fix them, or pass --num-shards and --shard-index."
            ) from None
    elif num_shards is None or shard_index is None:
        raise MultiEditError("Pass both --num-shards and --shard-index, or neither.")
    if num_shards < 1:
        raise MultiEditError(f"{names[0]} is {num_shards}; it must be at least 1.")
    if not 0 <= shard_index < num_shards:
        raise MultiEditError(
            f"{names[1]} {shard_index} is out of range for {names[0]} {num_shards}; use 0..{num_shards - 1}."
        )
    return num_shards, shard_index


def in_shard(cid: str, num_shards: int, shard_index: int) -> bool:
    """Whether the caption with id ``cid`` (hex) belongs to shard ``shard_index`` of ``num_shards``."""
    return int(cid, 16) % num_shards == shard_index


def shard_paths(out_dir: Path, num_shards: int, shard_index: int) -> tuple[Path, Path, Path]:
    """``(records, failures, run_info)`` file paths of one shard."""
    tag = "" if num_shards == 1 else f"-{shard_index:05d}-of-{num_shards:05d}"
    return out_dir / f"instructions{tag}.jsonl", out_dir / f"failures{tag}.jsonl", out_dir / f"run{tag}.json"


class JsonlAppender:
    """Append-only JSON Lines writer, flushed per record, holding an exclusive lock on the file.

    Opening it trims a torn last line (a run killed mid-write), so the file always ends on a
    complete record.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        trim_partial_line(self.path)
        self._f = open(self.path, "a", encoding="utf-8")
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._f.close()
            raise MultiEditError(
                f"Another run is writing {self.path}; wait for it, or give this run another --out or --shard-index."
            ) from None

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def trim_partial_line(path: Path) -> int:
    """Cut a trailing line without a newline off ``path``; returns the bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return 0
        block, pos = 65536, size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
    logger.warning("%s: trimmed a partial last line (%d bytes) left by an interrupted run", path, size - keep)
    return size - keep


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON Lines file; a torn last line and unparsable lines are skipped (with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    out, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn last line of a killed run
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict):
                out.append(row)
    if bad:
        logger.warning("%s: skipped %d unparsable line(s)", path, bad)
    return out


def load_instruction_records(out_dir: str | Path, task: str | None = None) -> list[dict]:
    """All accepted records under ``out_dir`` (every shard), one per ``(task, caption_id)``.

    Each record has ``instruction``, ``output_caption``, ``original_object``, ``edited_object``,
    ``task``, ``input_caption``, ``caption_id``, ``llm_model``, ``prompt_id``, ``writer``
    (``"vllm"``/``"template"``), ``seed``, ``verb`` and ``attempts``. ``task`` filters by task name.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MultiEditError(
            f"Instruction folder {out_dir} does not exist; run `multiedit datagen instructions` first."
        )
    seen, out = set(), []
    for path in sorted(out_dir.glob("instructions*.jsonl")):
        for rec in read_jsonl(path):
            key = (rec.get("task"), rec.get("caption_id"))
            if key in seen or (task is not None and rec.get("task") != task):
                continue
            seen.add(key)
            out.append(rec)
    return out


def load_failures(out_dir: str | Path) -> list[dict]:
    """The latest failure per ``(task, caption_id)`` under ``out_dir`` that has no accepted record since."""
    out_dir = Path(out_dir)
    done = (
        {(r.get("task"), r.get("caption_id")) for r in load_instruction_records(out_dir)} if out_dir.is_dir() else set()
    )
    latest: dict = {}
    for path in sorted(out_dir.glob("failures*.jsonl")):
        for rec in read_jsonl(path):
            latest[(rec.get("task"), rec.get("caption_id"))] = rec
    return [r for k, r in latest.items() if k not in done]


def reason_kind(reason: str) -> str:
    """A failure reason without quoted values and details, for counting: ``"x 'y' is z (w)"`` → ``"x … is z"``."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "…", reason)
    return text.split(" (")[0].split(": ")[0].strip()[:80]


# --- the stage -------------------------------------------------------------------------------------


def generate_instructions(
    captions: Iterable[Caption | str], config: InstructionConfig, *, on_exchange: Callable | None = None
) -> InstructionSummary:
    """Run the stage on ``captions`` (this shard's part of them) and return a summary.

    Resumes: captions with an accepted record, or with a recorded failure whose answers were
    invalid, are skipped (``retry_failures=True`` retries failures too); failures caused by server
    errors are always retried. Raises :class:`MultiEditError` if the LLM server is unreachable at
    the start or stops answering; finished records are kept.
    """
    return asyncio.run(agenerate_instructions(captions, config, on_exchange=on_exchange))


async def agenerate_instructions(
    captions: Iterable[Caption | str], config: InstructionConfig, *, on_exchange: Callable | None = None
) -> InstructionSummary:
    """Async form of :func:`generate_instructions` (for callers already inside an event loop)."""
    task = get_task(config.task)
    caps = [c if isinstance(c, Caption) else Caption(caption_id(c), " ".join(c.split())) for c in captions]
    mine = [c for c in caps if in_shard(c.caption_id, config.num_shards, config.shard_index)]
    records_path, failures_path, run_path = shard_paths(config.out_dir, config.num_shards, config.shard_index)
    config.out_dir.mkdir(parents=True, exist_ok=True)

    client = None
    llm_model = WRITER_ID
    if config.llm == "vllm":
        client = ChatClient(
            config.llm_url,
            config.llm_model or "",
            timeout=config.timeout,
            api_key=config.api_key,
            max_connections=max(config.concurrency, 1),
            on_exchange=on_exchange,
        )
    try:
        if client is not None:
            if config.llm_model is None:
                served = await client.list_models()
                if len(served) != 1:
                    raise LLMUnavailableError(
                        f"The server at {config.llm_url} serves {served}; pick one with --llm-model."
                    )
                client.model = served[0]
            await client.ensure_ready()
            llm_model = client.model
        with JsonlAppender(records_path) as records, JsonlAppender(failures_path) as failures:
            done = _done_keys(records_path, failures_path, config.retry_failures)
            pending = [c for c in mine if (task.name, c.caption_id) not in done]
            summary = InstructionSummary(len(mine), len(mine) - len(pending), 0, 0, records_path, failures_path)
            logger.info(
                "task %s, shard %d/%d: %d captions (of %d), %d already done, %d to write",
                task.name,
                config.shard_index,
                config.num_shards,
                len(mine),
                len(caps),
                summary.already_done,
                len(pending),
            )
            _write_run_info(run_path, config, llm_model)
            run = _Run(task, config, llm_model, records, failures, summary, len(pending))
            try:
                if client is None:
                    for cap in pending:
                        run.write_template(cap)
                else:
                    await run.write_llm(client, pending)
            finally:
                run.close()
    finally:
        if client is not None:
            await client.aclose()
    return summary


def _done_keys(records_path: Path, failures_path: Path, retry_failures: bool) -> set:
    done = {(r.get("task"), r.get("caption_id")) for r in read_jsonl(records_path)}
    if not retry_failures:  # the latest failure of a caption decides: server errors are retried
        latest = {(r.get("task"), r.get("caption_id")): r.get("status") for r in read_jsonl(failures_path)}
        done |= {key for key, status in latest.items() if status in ("invalid", "rejected")}
    return done


def _write_run_info(path: Path, config: InstructionConfig, llm_model: str) -> None:
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "api_key"}
    info.update(llm_model=llm_model, schema=answer_schema(config.max_chars), python=sys.version.split()[0])
    write_text_atomic(path, json.dumps(info, indent=2) + "\n")


class _Run:
    """Bookkeeping of one run: writes records and failures, counts, progress bar, failure breaker."""

    def __init__(self, task: Task, config: InstructionConfig, llm_model: str, records, failures, summary, total: int):
        from tqdm.auto import tqdm

        self.task, self.config, self.llm_model = task, config, llm_model
        self.records, self.failures, self.summary = records, failures, summary
        self.schema = answer_schema(config.max_chars)
        self.server_streak = 0
        self.max_server_failures = config.max_server_failures or max(5, config.concurrency)
        self.bar = tqdm(
            total=total,
            unit="caption",
            desc=f"instructions[{task.name}]",
            disable=not config.progress,
            dynamic_ncols=True,
        )

    def close(self) -> None:
        self.bar.close()

    def _base(self, cap: Caption, prompt_id: str, writer: str) -> dict:
        return {
            "caption_id": cap.caption_id,
            "task": self.task.name,
            "input_caption": cap.text,
            "writer": writer,
            "llm_model": self.llm_model,
            "prompt_id": prompt_id,
            "seed": self.config.seed,
        }

    def accept(self, base: dict, answer: dict, **extra) -> None:
        self.records.write({**answer, **base, **extra})
        self.summary.accepted += 1
        self._tick()

    def fail(self, base: dict, status: str, reasons: list[str], attempts: int) -> None:
        self.failures.write({**base, "status": status, "reason": reasons[-1], "reasons": reasons, "attempts": attempts})
        self.summary.failed += 1
        key = reason_kind(reasons[-1])
        self.summary.failure_reasons[key] = self.summary.failure_reasons.get(key, 0) + 1
        self._tick()

    def _tick(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(accept=f"{self.summary.accept_rate:.0%}", refresh=False)

    def write_template(self, cap: Caption) -> None:
        answer, reason, template_id = write_template_answer(self.task, cap.text, cap.caption_id, self.config.seed)
        base = self._base(cap, template_id, "template")
        reason = reason or check_answer(answer, self.task.name, cap.text, self.config.max_chars)
        if reason:
            self.fail(base, "invalid", [reason], 1)
        else:
            self.accept(base, answer, verb=None, attempts=1)

    async def write_llm(self, client: ChatClient, pending: list[Caption]) -> None:
        queue: asyncio.Queue[Caption] = asyncio.Queue()
        for cap in pending:
            queue.put_nowait(cap)
        policy = RetryPolicy(self.config.max_retries, self.config.backoff)

        async def worker() -> None:
            while not queue.empty():
                await self._one(client, queue.get_nowait(), policy)

        workers = [asyncio.create_task(worker()) for _ in range(min(self.config.concurrency, len(pending)))]
        try:
            await asyncio.gather(*workers)  # the first error (a dead server) stops the run...
        finally:
            for w in workers:  # ...and the other workers with it
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _one(self, client: ChatClient, cap: Caption, policy: RetryPolicy) -> None:
        cfg = self.config
        prompt = build_prompt(self.task, cap.text, cap.caption_id, seed=cfg.seed, example_fraction=cfg.example_fraction)
        outcome = await client.chat_json(
            prompt.messages,
            schema=self.schema,
            parse=partial(parse_answer, task_name=self.task.name, input_caption=cap.text, max_chars=cfg.max_chars),
            retry=policy,
            seed=prompt.sampling_seed,
            name=f"{self.task.name}_edit",
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
        )
        base = self._base(cap, prompt.prompt_id, "vllm")
        if outcome.ok:
            self.server_streak = 0
            self.accept(base, outcome.answer, verb=prompt.verb, attempts=outcome.attempts)
            return
        self.fail(base, outcome.status, outcome.reasons, outcome.attempts)
        self.server_streak = self.server_streak + 1 if outcome.status == "server" else 0
        if self.server_streak >= self.max_server_failures:
            raise LLMUnavailableError(
                f"The LLM server at {client.base_url} stopped answering ({self.server_streak} captions in a row "
                f"failed; last error: {outcome.reasons[-1]}); finished work is kept in {cfg.out_dir}: "
                "restart the server and rerun to resume."
            )
