"""Benchmark datagen stage 1: captions per second at concurrency 1 against 8, same server, one run.

With a vLLM Python available ($MULTIEDIT_VLLM_PYTHON or <repo>/.venv-vllm/bin/python) it starts vLLM
on CPU with the zoo's tiny random Llama; otherwise (or with --scripted) it says so and uses the
scripted OpenAI-compatible server with a simulated per-request latency, clearly labelled. The ratio
is the point: async requests let a batching server work on many captions at once. The tiny model
writes noise, so its accept rate is low; the scripted server's answers are valid by construction.

    python benchmarks/bench_instructions.py [--captions 24] [--scripted] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from multiedit.datagen.instructions import InstructionConfig, generate_instructions
from multiedit.datagen.vllm_server import VLLMServer, default_vllm_python, free_port
from multiedit.testing.llm import ScriptedLLMServer, build_llm

SUBJECTS = ["dog", "cat", "man", "woman", "car", "boat", "bird", "horse", "child", "bicycle", "lamp", "chair"]
PLACES = ["on a sofa", "in a park", "on a beach", "in the street", "by a lake", "in a kitchen", "under a tree"]
MAX_CHARS = {"instruction": 40, "output_caption": 60, "original_object": 20, "edited_object": 20}


def captions(n: int, offset: int) -> list[str]:
    return [
        f"a {SUBJECTS[i % len(SUBJECTS)]} {PLACES[(i // len(SUBJECTS)) % len(PLACES)]}, photo {i}"
        for i in range(offset, offset + n)
    ]


def run(url: str, caps: list[str], concurrency: int, out: Path, max_tokens: int) -> tuple[float, float]:
    cfg = InstructionConfig(
        task="add",
        out_dir=out,
        llm_url=url,
        concurrency=concurrency,
        max_tokens=max_tokens,
        max_retries=0,
        max_chars=MAX_CHARS,
        progress=False,
        timeout=300,
    )
    start = time.perf_counter()
    s = generate_instructions(caps, cfg)
    elapsed = time.perf_counter() - start
    return (s.accepted + s.failed) / elapsed, s.accept_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=24, help="Captions per measured run (default 24).")
    parser.add_argument("--max-tokens", type=int, default=160, help="max_tokens per answer (default 160).")
    parser.add_argument("--scripted", action="store_true", help="Use the scripted server even if vLLM is available.")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="Scripted server latency per request in s (default 0.2)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    python = default_vllm_python()
    use_vllm = not args.scripted and Path(python).exists()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if use_vllm:
            label = f"vLLM (CPU, tiny random Llama from the zoo, {python})"
            server = VLLMServer(build_llm(tmp / "llm"), python=python, port=free_port(), log_path=tmp / "vllm.log")
            print(f"starting {label} ...", flush=True)
            server.start()
        else:
            if not args.scripted:
                print(
                    f"no vLLM Python at {python} (run scripts/setup_vllm_env.sh); falling back to the scripted server."
                )
            label = f"SCRIPTED server (not vLLM), simulated latency {args.latency:.2f} s per request"
            server = ScriptedLLMServer(latency=args.latency).start()
        try:
            if use_vllm:
                server.wait_healthy(timeout=900)
            run(server.url, captions(4, 10_000), 4, tmp / "warmup", args.max_tokens)  # warm caches, compile kernels
            c1, acc1 = run(server.url, captions(args.captions, 0), 1, tmp / "c1", args.max_tokens)
            c8, acc8 = run(server.url, captions(args.captions, args.captions), 8, tmp / "c8", args.max_tokens)
        finally:
            server.stop()
    print(f"\nserver: {label}")
    print(f"captions per run: {args.captions}, task add, max_tokens {args.max_tokens}, no retries")
    print(f"{'concurrency':>12} {'captions/s':>11} {'accept rate':>12}")
    print(f"{1:>12} {c1:>11.2f} {acc1:>12.0%}")
    print(f"{8:>12} {c8:>11.2f} {acc8:>12.0%}")
    print(f"speed-up concurrency 8 / 1: {c8 / c1:.2f}x")


if __name__ == "__main__":
    main()
