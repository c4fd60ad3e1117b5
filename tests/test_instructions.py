"""Datagen stage 1 (instructions): validation, prompts, captions, the template writer, resume,
sharding, and the error paths against a scripted OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jsonschema
import pytest

from multiedit.cli import build_parser, main
from multiedit.datagen.captions import caption_id, read_captions
from multiedit.datagen.instructions import (
    InstructionConfig,
    generate_instructions,
    load_failures,
    load_instruction_records,
    read_jsonl,
    shard_paths,
)
from multiedit.datagen.llm_client import LLMUnavailableError
from multiedit.datagen.prompts import build_prompt, choose_examples
from multiedit.datagen.template_writer import write_template_answer
from multiedit.datagen.validation import (
    ANSWER_FIELDS,
    TASK_RULES,
    answer_schema,
    check_answer,
    default_rule,
    parse_answer,
    rule_for,
)
from multiedit.errors import MultiEditError
from multiedit.tasks import Task, TaskExample, get_task, list_tasks
from multiedit.testing.llm import ScriptedLLMServer

CAPTIONS = [
    "a dog sitting on a sofa",
    "a man with a hat on a bench",
    "a red car parked in the street",
    "a photo of a lighthouse on a cliff",
    "a cat sleeping next to a lamp",
    "a wooden boat on a lake",
    "a woman holding an umbrella",
    "a bird on a tree branch",
]


def answer(**kw) -> dict:
    base = {
        "instruction": "add a hat",
        "output_caption": "a man with a hat",
        "original_object": "",
        "edited_object": "hat",
    }
    return {**base, **kw}


def config(tmp_path, **kw) -> InstructionConfig:
    kw.setdefault("task", "add")
    kw.setdefault("progress", False)
    kw.setdefault("backoff", 0.01)
    return InstructionConfig(out_dir=tmp_path / "out", **kw)


# --- validation -----------------------------------------------------------------------------------


def test_every_builtin_task_has_a_rule_and_unknown_tasks_get_the_default():
    assert set(list_tasks()) <= set(TASK_RULES)
    assert rule_for("my-new-task") is default_rule


@pytest.mark.parametrize(
    "task, ans, input_caption, expect",
    [
        ("add", answer(), "a man", None),
        ("add", answer(edited_object="umbrella"), "a man", "does not appear"),
        ("add", answer(edited_object=""), "a man", "edited_object is empty"),
        ("add", answer(output_caption="A man."), "a man", "equals the input"),  # normalized comparison
        ("remove", answer(original_object="dog", output_caption="a sofa"), "a dog on a sofa", None),
        (
            "remove",
            answer(original_object="dog", output_caption="a dog on a sofa, empty"),
            "a dog on a sofa",
            "still appears",
        ),
        ("remove", answer(original_object="cat", output_caption="a sofa"), "a dog on a sofa", "not in the input"),
        (
            "local",
            answer(original_object="dog", edited_object="cat", output_caption="a cat on a sofa"),
            "a dog on a sofa",
            None,
        ),
        (
            "local",
            answer(original_object="dog", edited_object="dog", output_caption="a big dog on a sofa"),
            "a dog on a sofa",
            "same",
        ),
        (
            "detect",
            answer(original_object="dogs", output_caption="a dog, boxed"),
            "a dog on a sofa",
            None,
        ),  # plural tolerated
        (
            "detect",
            answer(original_object="horse", output_caption="a dog, boxed"),
            "a dog on a sofa",
            "not in the input",
        ),
        ("global", answer(output_caption="a dog on a sofa at night"), "a dog on a sofa", None),
        ("global", answer(instruction="  . "), "a man", "instruction is empty"),
        ("add", answer(instruction="add a\x07 hat"), "a man", "control characters"),
        ("add", answer(instruction="x" * 201), "a man", "longer than"),
        ("add", {**answer(), "extra": "x"}, "a man", "unexpected field"),
        ("add", {k: v for k, v in answer().items() if k != "output_caption"}, "a man", "missing field"),
        ("add", answer(edited_object=3), "a man", "not a string"),
        ("add", ["not", "an", "object"], "a man", "not an object"),
    ],
)
def test_check_answer_rules(task, ans, input_caption, expect):
    reason = check_answer(ans, task, input_caption)
    if expect is None:
        assert reason is None
    else:
        assert reason is not None and expect in reason


def test_schema_agrees_with_the_structural_checks():
    schema = answer_schema()
    jsonschema.validate(answer(), schema)
    for bad in (
        {**answer(), "extra": "x"},
        {k: v for k, v in answer().items() if k != "instruction"},
        answer(edited_object=3),
        answer(instruction="x" * 201),
        answer(output_caption=""),
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        assert check_answer(bad, "add", "a man") is not None
    assert answer_schema({"instruction": 10})["properties"]["instruction"]["maxLength"] == 10


def test_parse_answer_rejects_malformed_json_and_strips_strings():
    ans, reason = parse_answer('{"instruction": "add a', "add", "a man")
    assert ans is None and "not valid JSON" in reason
    ans, reason = parse_answer(json.dumps(answer(instruction="  add a hat ")), "add", "a man")
    assert reason is None and ans["instruction"] == "add a hat"


# --- prompts --------------------------------------------------------------------------------------


def test_prompt_is_reproducible_per_seed_and_caption_and_varies_otherwise():
    task = get_task("add")
    cap = CAPTIONS[0]
    a = build_prompt(task, cap, caption_id(cap), seed=3)
    b = build_prompt(task, cap, caption_id(cap), seed=3)
    assert a == b
    others = {build_prompt(task, c, caption_id(c), seed=3).example_indices for c in CAPTIONS}
    seeds = {build_prompt(task, cap, caption_id(cap), seed=s).example_indices for s in range(8)}
    assert len(others) > 1 and len(seeds) > 1  # Emu Edit's per-request variation
    assert len({build_prompt(task, c, caption_id(c), seed=s).verb for c in CAPTIONS for s in range(4)}) > 1


def test_prompt_shape_fraction_and_examples_match_the_schema():
    task = get_task("remove")
    n = len(task.examples)
    cap = CAPTIONS[1]
    p = build_prompt(task, cap, caption_id(cap), seed=0)
    assert len(p.example_indices) == len(set(p.example_indices)) == -(-6 * n // 10)  # ceil(0.6 n)
    roles = [m["role"] for m in p.messages]
    assert roles == ["system"] + ["user", "assistant"] * len(p.example_indices) + ["user"]
    assert cap in p.messages[-1]["content"] and f'"{p.verb}"' in p.messages[-1]["content"]
    assert p.verb in task.verbs
    for i, msg in zip(p.example_indices, p.messages[2:-1:2], strict=True):
        ex = json.loads(msg["content"])
        jsonschema.validate(ex, answer_schema())
        assert ex["instruction"] == task.examples[i].instruction
    # prompt_id covers system prompt + chosen examples, not the caption
    other = build_prompt(task, CAPTIONS[2], caption_id(CAPTIONS[2]), seed=0)
    assert (other.prompt_id == p.prompt_id) == (other.example_indices == p.example_indices)


def test_choose_examples_keeps_at_least_one():
    import random

    task = Task(name="tiny", group="region", description="d", examples=(TaskExample("do it", "a", "b"),))
    assert choose_examples(task, random.Random(0), 0.1) == [0]


# --- captions -------------------------------------------------------------------------------------


def test_read_captions_from_text_jsonl_parquet_and_saved_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    txt = tmp_path / "c.txt"
    txt.write_text("a dog\n\n  a  dog \na cat\na bird\n")
    got = read_captions(txt)
    assert [c.text for c in got] == ["a dog", "a cat", "a bird"]  # empty and duplicate skipped
    assert got[0].caption_id == caption_id("a  dog ")
    assert [c.text for c in read_captions(txt, limit=2)] == ["a dog", "a cat"]

    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(["x one", "x two"])) + "\n")
    assert [c.text for c in read_captions(jl, column="text")] == ["x one", "x two"]
    with pytest.raises(MultiEditError, match="caption-column"):
        read_captions(jl)

    folder = tmp_path / "pq"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"caption": [f"p{i} a", f"p{i} b"], "id": [0, 1]}), folder / f"part-{i}.parquet")
    assert [c.text for c in read_captions(folder)] == ["p0 a", "p0 b", "p1 a", "p1 b"]
    assert len(read_captions(folder / "part-1.parquet")) == 2
    with pytest.raises(MultiEditError, match="no column `text`"):
        read_captions(folder, column="text")

    datasets.Dataset.from_dict({"caption": ["d one", "d two"]}).save_to_disk(str(tmp_path / "saved"))
    assert [c.text for c in read_captions(tmp_path / "saved")] == ["d one", "d two"]
    with pytest.raises(MultiEditError, match="does not exist"):
        read_captions(tmp_path / "nope.txt")


def test_bad_caption_input_is_one_sentence_exit_2_and_writes_nothing(tmp_path, capsys):
    import PIL.Image

    caps = tmp_path / "caps.txt"
    caps.write_text("a dog\na cat\n")
    png = tmp_path / "in.png"
    PIL.Image.new("RGB", (8, 8), (200, 0, 3)).save(png)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    out = tmp_path / "out"
    base = ["datagen", "instructions", "--task", "add", "--llm", "template", "--out", str(out), "--no-progress"]
    cases = [
        (["--captions", str(png)], f"{png} is not UTF-8 text"),
        (["--captions", str(empty)], f"{empty} holds no captions"),
        (["--captions", str(caps), "--limit", "0"], "--limit is 0; it must be at least 1"),
        (["--captions", str(caps), "--limit", "-1"], "--limit is -1; it must be at least 1"),
        (["--captions", str(caps), "--num-shards", "0", "--shard-index", "0"],
         "--num-shards is 0; it must be at least 1"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and "0..-1" not in err, err
        assert not out.exists(), extra
    jl = tmp_path / "c.jsonl"
    jl.write_bytes(b'{"caption": "a \xff dog"}\n')
    with pytest.raises(MultiEditError, match="not UTF-8 text"):
        read_captions(jl)
    assert main(base + ["--captions", str(caps), "--limit", "1"]) == 0  # a valid rerun into the same folder works
    assert "1 accepted" in capsys.readouterr().out


# --- template writer ------------------------------------------------------------------------------


@pytest.mark.parametrize("task_name", list_tasks())
def test_template_writer_is_deterministic_and_passes_its_own_validation(task_name):
    task = get_task(task_name)
    outputs = []
    for cap in CAPTIONS:
        a, reason, tid = write_template_answer(task, cap, caption_id(cap), seed=1)
        b = write_template_answer(task, cap, caption_id(cap), seed=1)
        assert (a, reason, tid) == b
        assert reason is None, (cap, reason)
        assert check_answer(a, task_name, cap) is None, (cap, a, check_answer(a, task_name, cap))
        assert tid.startswith("template-")
        outputs.append(a["output_caption"])
    assert len(set(outputs)) == len(CAPTIONS)


def test_template_writer_handles_a_user_task_and_a_caption_without_objects():
    task = Task(name="super-res", group="vision", description="sharpen", pair_strategy="learned", verbs=("upscale",))
    a, reason, tid = write_template_answer(task, "a dog", caption_id("a dog"))
    assert reason is None and check_answer(a, task.name, "a dog") is None and tid.endswith("generic")
    _, reason, _ = write_template_answer(get_task("remove"), "sunny", caption_id("sunny"))
    assert reason and "no object" in reason


def test_template_stage_resumes_shards_and_labels_records(tmp_path, capsys):
    caps = tmp_path / "caps.txt"
    caps.write_text("\n".join(CAPTIONS) + "\n")
    out = tmp_path / "out"
    argv = [
        "datagen",
        "instructions",
        "--task",
        "local",
        "--captions",
        str(caps),
        "--out",
        str(out),
        "--llm",
        "template",
        "--no-progress",
    ]
    assert main(argv) == 0
    recs = load_instruction_records(out)
    assert sorted(r["caption_id"] for r in recs) == sorted(caption_id(c) for c in CAPTIONS)
    assert all(
        r["writer"] == "template" and r["llm_model"].startswith("template") and r["task"] == "local" for r in recs
    )
    assert set(ANSWER_FIELDS) | {"input_caption", "caption_id", "prompt_id", "seed"} <= set(recs[0])
    capsys.readouterr()
    assert main(argv) == 0  # rerun: nothing new
    printed = capsys.readouterr().out
    assert "0 accepted, 0 failed" in printed and f"{len(CAPTIONS)} already done" in printed
    assert len(read_jsonl(out / "instructions.jsonl")) == len(CAPTIONS)

    sharded = tmp_path / "sharded"
    for i in range(3):
        assert (
            main(
                argv[:-5]
                + [
                    "--out",
                    str(sharded),
                    "--llm",
                    "template",
                    "--no-progress",
                    "--num-shards",
                    "3",
                    "--shard-index",
                    str(i),
                ]
            )
            == 0
        )
    files = sorted(p.name for p in sharded.glob("instructions*.jsonl"))
    assert files == [f"instructions-{i:05d}-of-00003.jsonl" for i in range(3)]
    per_shard = [{r["caption_id"] for r in read_jsonl(sharded / f)} for f in files]
    assert sum(map(len, per_shard)) == len(CAPTIONS) and set().union(*per_shard) == {caption_id(c) for c in CAPTIONS}
    # shards written alone equal the single run, record for record (deterministic writer)
    key = lambda r: r["caption_id"]  # noqa: E731
    assert sorted(load_instruction_records(sharded), key=key) == sorted(recs, key=key)


def test_shard_defaults_come_from_accelerate_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    cfg = config(tmp_path, llm="template")
    assert (cfg.num_shards, cfg.shard_index) == (4, 2)
    assert shard_paths(cfg.out_dir, 4, 2)[0].name == "instructions-00002-of-00004.jsonl"
    with pytest.raises(MultiEditError, match="out of range"):
        config(tmp_path, llm="template", num_shards=2, shard_index=2)
    with pytest.raises(MultiEditError, match="both"):
        config(tmp_path, llm="template", num_shards=2)


def test_a_torn_last_line_is_trimmed_on_resume(tmp_path):
    cfg = config(tmp_path, llm="template")
    generate_instructions(CAPTIONS[:4], cfg)
    path = cfg.out_dir / "instructions.jsonl"
    with open(path, "a") as f:
        f.write('{"caption_id": "' + caption_id(CAPTIONS[5]) + '", "instru')  # killed mid-write
    assert len(load_instruction_records(cfg.out_dir)) == 4  # readers skip it too
    summary = generate_instructions(CAPTIONS, cfg)
    assert (summary.already_done, summary.accepted) == (4, len(CAPTIONS) - 4)
    lines = path.read_text().splitlines()
    assert len(lines) == len(CAPTIONS) and all(json.loads(line) for line in lines)


# --- against a scripted server ---------------------------------------------------------------------


def test_error_paths_are_retried_or_recorded_and_nothing_is_lost(tmp_path):
    c = CAPTIONS
    script = {
        c[0]: ["malformed", "ok"],
        c[1]: ["missing"],  # always missing a field -> failure after the retries
        c[2]: ["500", "ok"],
        c[3]: ["slow", "ok"],  # past the client's timeout, then fine
        c[4]: ["same"],  # output caption == input -> failure
        c[5]: ["garbage", "ok"],  # a non-JSON response body
        c[6]: ["400"],  # refused: not retried
    }
    with ScriptedLLMServer(script, slow_seconds=2.0) as server:
        cfg = config(tmp_path, llm_url=server.url, max_retries=2, timeout=0.5, concurrency=3)
        summary = generate_instructions(c, cfg)
        assert (summary.accepted, summary.failed) == (5, 3)

        recs = {r["input_caption"]: r for r in load_instruction_records(cfg.out_dir)}
        fails = {r["input_caption"]: r for r in load_failures(cfg.out_dir)}
        assert set(recs) == {c[0], c[2], c[3], c[5], c[7]} and set(fails) == {c[1], c[4], c[6]}
        assert {r["attempts"] for r in (recs[c[0]], recs[c[2]], recs[c[3]], recs[c[5]])} == {2}
        assert recs[c[7]]["attempts"] == 1 and recs[c[7]]["writer"] == "vllm" and recs[c[7]]["llm_model"] == "scripted"
        assert fails[c[1]]["attempts"] == 3 and "missing field" in fails[c[1]]["reason"]
        assert fails[c[4]]["status"] == "invalid" and "equals the input" in fails[c[4]]["reason"]
        assert fails[c[6]]["status"] == "rejected" and fails[c[6]]["attempts"] == 1
        for rec in recs.values():
            assert check_answer({k: rec[k] for k in ANSWER_FIELDS}, "add", rec["input_caption"]) is None

        # every request carried the strict schema, and retries sampled with a new seed
        assert len(server.requests) == 2 + 3 + 2 + 2 + 3 + 2 + 1 + 1
        for payload in server.requests:
            fmt = payload["response_format"]
            assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
            assert fmt["json_schema"]["schema"] == answer_schema()
        seeds = [p["seed"] for p in server.requests if c[1] in p["messages"][-1]["content"]]
        assert len(set(seeds)) == 3

        # rerun: accepted and invalid captions are skipped; --retry-failures asks again
        n = len(server.requests)
        assert generate_instructions(c, cfg).accepted == 0 and len(server.requests) == n
        server.script = {}
        again = generate_instructions(c, config(tmp_path, llm_url=server.url, retry_failures=True))
        assert again.accepted == 3 and len(load_instruction_records(cfg.out_dir)) == len(c)
        assert load_failures(cfg.out_dir) == []


def test_unreachable_server_gives_one_sentence_and_exit_2(tmp_path, capsys):
    from multiedit.datagen.vllm_server import free_port

    caps = tmp_path / "caps.txt"
    caps.write_text("a dog\n")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    code = main(
        [
            "datagen",
            "instructions",
            "--task",
            "add",
            "--captions",
            str(caps),
            "--out",
            str(tmp_path / "o"),
            "--llm-url",
            url,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "No LLM server answers at" in err and "multiedit serve-llm" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wrong_model_name_lists_the_served_ones(tmp_path):
    with ScriptedLLMServer() as server:
        with pytest.raises(LLMUnavailableError, match=r"does not serve model 'gpt'.*\['scripted'\]"):
            generate_instructions(["a dog"], config(tmp_path, llm_url=server.url, llm_model="gpt"))


def test_scripted_server_records_no_request_whose_body_never_arrived():
    """A client killed mid-request (Content-Length promised, body cut short) leaves no request behind, and a
    body that is not JSON, an empty one included, gets a 400 rather than a dropped connection."""
    import http.client
    import socket
    from urllib.parse import urlparse

    with ScriptedLLMServer() as server:
        addr = urlparse(server.url)
        with socket.create_connection((addr.hostname, addr.port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mess")
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""  # no answer: the request was dropped
        for body in (b"", b"not json"):
            conn = http.client.HTTPConnection(addr.hostname, addr.port, timeout=10)
            conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Length": str(len(body))})
            resp = conn.getresponse()
            assert resp.status == 400 and b"not JSON" in resp.read()
            conn.close()
        assert server.requests == []


def test_a_server_that_keeps_failing_stops_the_run_and_a_rerun_recovers(tmp_path):
    with ScriptedLLMServer(default="500") as server:
        cfg = config(tmp_path, llm_url=server.url, max_retries=1, concurrency=2, max_server_failures=3)
        with pytest.raises(MultiEditError, match="stopped answering.*rerun to resume"):
            generate_instructions(CAPTIONS, cfg)
        failed = load_failures(cfg.out_dir)
        assert 3 <= len(failed) < len(CAPTIONS) and {f["status"] for f in failed} == {"server"}
        server.default = "ok"
        summary = generate_instructions(CAPTIONS, cfg)  # server failures are retried without a flag
        assert summary.accepted == len(CAPTIONS) and summary.already_done == 0
        assert len(load_instruction_records(cfg.out_dir)) == len(CAPTIONS) and load_failures(cfg.out_dir) == []


def test_kill_mid_run_then_rerun_loses_and_duplicates_nothing(tmp_path):
    caps = [f"a dog number {i} on a sofa" for i in range(24)]
    cap_file = tmp_path / "caps.txt"
    cap_file.write_text("\n".join(caps) + "\n")
    out = tmp_path / "out"
    with ScriptedLLMServer(latency=0.15) as server:
        argv = [
            "datagen",
            "instructions",
            "--task",
            "add",
            "--captions",
            str(cap_file),
            "--out",
            str(out),
            "--llm-url",
            server.url,
            "--concurrency",
            "2",
            "--no-progress",
        ]
        code = f"import sys; from multiedit.cli import main; sys.exit(main({argv!r}))"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = out / "instructions.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not records.exists() or len(records.read_text().splitlines()) < 4):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = len(read_jsonl(records))
        assert 4 <= done_before < len(caps)
        assert main(argv) == 0
    ids = [r["caption_id"] for r in read_jsonl(records)]
    assert len(ids) == len(set(ids)) == len(caps)
    assert set(ids) == {caption_id(c) for c in caps}
    asked = [p["messages"][-1]["content"] for p in server.requests]
    assert len(asked) - len(set(asked)) <= 2  # at most the requests in flight at the kill are repeated


# --- CLI and the tiny LLM ---------------------------------------------------------------------------


def test_datagen_parser_leaves_room_for_more_stages(monkeypatch, capsys):
    import multiedit.cli.datagen as dg

    def fake_stage(stages):
        stages.add_parser("masks", help="fake").set_defaults(func=lambda a: 7)

    monkeypatch.setattr(dg, "STAGE_REGISTRARS", [*dg.STAGE_REGISTRARS, fake_stage])
    args = build_parser().parse_args(["datagen", "masks"])
    assert args.func(args) == 7
    args = build_parser().parse_args(["datagen", "instructions", "--task", "add", "--captions", "c", "--out", "o"])
    assert args.func is dg.run_instructions and args.concurrency == 16 and args.llm == "vllm"
    assert main(["datagen"]) == 2 and "instructions" in capsys.readouterr().out


def test_serve_llm_command_and_missing_venv(tmp_path, capsys):
    from multiedit.datagen.vllm_server import vllm_command

    cmd = vllm_command("/m", python="/py", port=1234)
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert (
        cmd[cmd.index("--structured-outputs-config") + 1]
        and "guidance" in cmd[cmd.index("--structured-outputs-config") + 1]
    )
    assert {"--enforce-eager", "--no-enable-chunked-prefill"} <= set(cmd) and cmd[cmd.index("--dtype") + 1] == "float32"
    assert main(["serve-llm", str(tmp_path), "--venv", str(tmp_path / "no-venv")]) == 2
    err = capsys.readouterr().err
    assert "No vLLM Python" in err and "setup_vllm_env.sh" in err


def test_zoo_llm_loads_with_transformers_and_has_a_chat_template(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multiedit.testing.llm import build_llm

    path = build_llm(tmp_path / "llm")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama" and (path / "model.safetensors").exists()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Input caption: a dog"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|assistant|>\n") and "a dog" in text
    sample = json.dumps(answer(instruction="put a café sign ✓ on it"), ensure_ascii=False)
    assert tok.decode(tok(sample, add_special_tokens=False)["input_ids"]) == sample  # byte-level: no unknowns
    out = model.generate(**tok(text, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 0
