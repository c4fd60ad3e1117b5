"""Datagen stage 1 against a real vLLM server serving the zoo's tiny Llama (CPU).

The vLLM virtualenv is separate (``scripts/setup_vllm_env.sh`` builds ``.venv-vllm``); its Python
is ``$MULTIEDIT_VLLM_PYTHON`` or ``<repo>/.venv-vllm/bin/python``. Without it these tests skip.
The tiny model's words are noise, so most answers fail validation; what must hold is that every
request carried the JSON schema, that the server's answers obey it (structured outputs), and that
every caption ends up exactly once, either accepted (and valid) or in the failures file with a reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from multiedit.datagen.vllm_server import default_vllm_python

VLLM_PYTHON = default_vllm_python()
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not Path(VLLM_PYTHON).exists(),
        reason=f"no vLLM Python at {VLLM_PYTHON}: run `make vllm-env` or set MULTIEDIT_VLLM_PYTHON",
    ),
]

CAPTIONS = [
    "a dog sitting on a sofa",
    "a man with a hat on a bench",
    "a red car parked in the street",
    "a cat sleeping next to a lamp",
    "a wooden boat on a lake",
    "a bird on a tree branch",
]
# Small limits keep the random model's constrained answers short (and the test fast).
MAX_CHARS = {"instruction": 40, "output_caption": 60, "original_object": 20, "edited_object": 20}


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    from multiedit.datagen.vllm_server import VLLMServer, free_port
    from multiedit.testing.llm import build_llm

    root = tmp_path_factory.mktemp("vllm")
    model = build_llm(root / "llm")
    server = VLLMServer(model, python=VLLM_PYTHON, port=free_port(), log_path=root / "vllm.log")
    server.start()
    try:
        server.wait_healthy(timeout=600)
        yield server
    finally:
        server.stop()


def test_instructions_stage_against_vllm(vllm_server, tmp_path):
    from multiedit.datagen.instructions import (
        InstructionConfig,
        generate_instructions,
        load_failures,
        load_instruction_records,
        read_jsonl,
    )
    from multiedit.datagen.validation import ANSWER_FIELDS, answer_schema, check_answer

    exchanges = []
    cfg = InstructionConfig(
        task="add",
        out_dir=tmp_path / "out",
        llm_url=vllm_server.url,
        concurrency=4,
        max_tokens=256,
        max_retries=1,
        backoff=0.05,
        timeout=120,
        max_chars=MAX_CHARS,
        progress=False,
    )
    summary = generate_instructions(CAPTIONS, cfg, on_exchange=lambda p, s, b: exchanges.append((p, s, b)))
    schema = answer_schema(MAX_CHARS)

    # Every request carried the strict schema; the server honoured it in every finished answer.
    assert exchanges and all(s == 200 for _, s, _ in exchanges)
    finished = 0
    for payload, _, body in exchanges:
        assert payload["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "add_edit", "schema": schema, "strict": True},
        }
        assert body["model"] == vllm_server.model
        choice = body["choices"][0]
        if choice["finish_reason"] == "stop":
            jsonschema.validate(json.loads(choice["message"]["content"]), schema)
            finished += 1
    assert finished >= len(CAPTIONS) // 2  # 256 tokens are enough for these limits

    # Every caption is accounted for exactly once: accepted (and valid) or failed with a reason.
    records = read_jsonl(cfg.out_dir / "instructions.jsonl")
    failures = load_failures(cfg.out_dir)
    assert len(records) == len({r["caption_id"] for r in records}) == summary.accepted
    assert len(failures) == summary.failed and summary.accepted + summary.failed == len(CAPTIONS)
    assert {r["input_caption"] for r in records} | {f["input_caption"] for f in failures} == set(CAPTIONS)
    assert not {r["caption_id"] for r in records} & {f["caption_id"] for f in failures}
    for rec in records:
        assert check_answer({k: rec[k] for k in ANSWER_FIELDS}, "add", rec["input_caption"], MAX_CHARS) is None
        assert rec["writer"] == "vllm" and rec["llm_model"] == vllm_server.model
    for fail in failures:
        assert fail["reason"] and 1 <= fail["attempts"] <= 2 and fail["status"] in ("invalid", "server", "rejected")

    # A rerun asks nothing again.
    n = len(exchanges)
    again = generate_instructions(CAPTIONS, cfg, on_exchange=lambda p, s, b: exchanges.append((p, s, b)))
    assert again.accepted == again.failed == 0 and len(exchanges) == n
    assert len(load_instruction_records(cfg.out_dir)) == summary.accepted
