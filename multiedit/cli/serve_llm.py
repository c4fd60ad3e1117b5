"""``multiedit serve-llm MODEL``: start vLLM's OpenAI-compatible server for ``datagen instructions``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-llm",
        help="Start a vLLM OpenAI-compatible server (strict JSON structured outputs) and wait until it is healthy.",
        description="Start `python -m vllm.entrypoints.openai.api_server` from the vLLM virtualenv with the "
        "guidance structured-output backend, wait for /health and print the URL to pass as --llm-url. "
        "Runs until Ctrl-C unless --detach.",
    )
    p.add_argument("model", help="Model folder (Hugging Face format) or hub name to serve.")
    p.add_argument("--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1, loopback only).")
    p.add_argument("--port", type=int, default=8000, help="Port to listen on (default 8000).")
    p.add_argument(
        "--venv", default=None, help="Virtualenv with vllm (default: $MULTIEDIT_VLLM_PYTHON, else <repo>/.venv-vllm)."
    )
    p.add_argument(
        "--dtype", default="float32", help="Weights dtype (default float32 for CPU; use auto/bfloat16 on GPUs)."
    )
    p.add_argument("--no-enforce-eager", action="store_true", help="Allow CUDA graphs (GPUs); default is eager mode.")
    p.add_argument(
        "--chunked-prefill",
        action="store_true",
        help="Keep vLLM's chunked prefill on (GPUs); off by default because vLLM 0.32 on CPU crashes "
        "on seeded requests with it.",
    )
    p.add_argument("--max-model-len", type=int, default=None, help="Context length limit (default: the model's).")
    p.add_argument("--served-model-name", default=None, help="Name clients use as --llm-model (default: MODEL).")
    p.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Extra argument for vLLM, repeatable, e.g. --vllm-arg=--tensor-parallel-size=2.",
    )
    p.add_argument(
        "--log",
        default=None,
        help="Write the server's output to this file (default: the terminal; with --detach: vllm-server-PORT.log).",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="Seconds to wait for /health (default 900).")
    p.add_argument("--detach", action="store_true", help="Leave the server running in the background and exit.")
    p.set_defaults(func=run)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does


def run(args: argparse.Namespace) -> int:
    import signal

    from ..datagen.vllm_server import VLLMServer, python_of_venv

    signal.signal(signal.SIGTERM, _interrupt)

    log = args.log or (f"vllm-server-{args.port}.log" if args.detach else None)
    server = VLLMServer(
        args.model,
        python=python_of_venv(args.venv) if args.venv else None,
        host=args.host,
        port=args.port,
        dtype=args.dtype,
        enforce_eager=not args.no_enforce_eager,
        chunked_prefill=args.chunked_prefill,
        max_model_len=args.max_model_len,
        served_model_name=args.served_model_name,
        extra_args=args.vllm_arg,
        log_path=log,
    )
    server.start()
    print(f"starting vLLM (pid {server.process.pid}): {' '.join(server.command)}", flush=True)
    try:
        url = server.wait_healthy(timeout=args.timeout)
        name = args.served_model_name or args.model
        print(f"vLLM serves {name} at {url}", flush=True)
        print(f"use it with: multiedit datagen instructions --llm-url {url} --llm-model {name} ...", flush=True)
        if args.detach:
            print(f"detached; log: {log}; stop it with: kill -TERM -{server.process.pid}", flush=True)
            server.process = None  # leave it running
            return 0
        code = server.process.wait()
        return 0 if code == 0 else 1
    except KeyboardInterrupt:
        print("stopping vLLM ...", flush=True)
        return 0
    finally:
        server.stop()
