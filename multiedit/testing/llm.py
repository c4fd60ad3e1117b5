"""Zoo part ``llm``: a tiny random Llama chat model that vLLM can serve.

It stands in for the instruction-tuned LLM of datagen stage 1 (Emu Edit §3.1 uses one LLM "agent"
per task). The folder holds exactly what a real Hugging Face chat checkpoint holds:
``config.json`` + ``model.safetensors`` (``LlamaForCausalLM``, float32), ``generation_config.json``
and a fast tokenizer (``tokenizer.json``, byte-level BPE trained locally on
:func:`multiedit.testing.corpus.corpus_lines`) with a chat template. So both
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` and
``python -m vllm.entrypoints.openai.api_server --model DIR`` load it. Its outputs are noise; with
structured outputs they are still schema-valid JSON, which is what the tests need.
"""

from __future__ import annotations

import threading
from pathlib import Path

#: Chat template in the Zephyr style: ``<|role|>\\ncontent</s>\\n`` per message.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]

# JSON punctuation and quoting, so the tokenizer has compact tokens for structured answers.
_JSON_LINES = [
    '{"instruction": "add a hat", "output_caption": "a man with a hat", "original_object": "", "edited_object": "hat"}',
    '{}[]:,"\\ 0123456789 \\n \\u00e9',
]


def build_llm_tokenizer(vocab_size: int = 1024):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE, every byte in the vocabulary) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from .corpus import corpus_lines

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines() + _JSON_LINES, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=8192,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_llm(out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny chat Llama to ``out_dir`` and return it.

    Sizes: hidden 64, 2 layers, 2 heads of 32 (vLLM's CPU attention needs a head size it
    supports; 32 is one), 1 KV head, 8192 positions, vocabulary ~1k. About 0.2 M parameters.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_llm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# --- a scripted OpenAI-compatible server, for error-path tests and benchmarks ----------------------

#: Behaviours of :class:`ScriptedLLMServer`, one per request.
BEHAVIOURS = (
    "ok",  # a valid answer (the template writer's, for the caption in the last user message)
    "malformed",  # HTTP 200, message content is not valid JSON
    "missing",  # HTTP 200, the JSON answer lacks output_caption
    "same",  # HTTP 200, output_caption equals the input caption (fails validation)
    "500",  # HTTP 500 with an OpenAI-style error body
    "400",  # HTTP 400 (a request the server refuses)
    "slow",  # sleeps ``slow_seconds`` before answering "ok" (past a client's timeout)
    "garbage",  # HTTP 200 with a body that is not JSON at all
)


class ScriptedLLMServer:
    """A tiny OpenAI-compatible chat server on loopback that answers from a script.

    ``script`` maps a caption (the text after ``Input caption:`` in the last user message) to a
    list of behaviours from :data:`BEHAVIOURS`, one per attempt (the last one repeats); captions not
    in it get ``default``. ``latency`` seconds are slept before every answer (a stand-in for
    generation time; requests are served by concurrent threads, like a batching server).
    ``requests`` records every chat payload received. Use as a context manager; ``url`` is the
    API root (``http://127.0.0.1:PORT/v1``).
    """

    def __init__(
        self,
        script: dict[str, list[str]] | None = None,
        *,
        default: str = "ok",
        task: str = "add",
        latency: float = 0.0,
        slow_seconds: float = 3.0,
        model: str = "scripted",
    ):
        self.script = {" ".join(k.split()): list(v) for k, v in (script or {}).items()}
        self.default, self.task, self.latency, self.slow_seconds, self.model = (
            default,
            task,
            latency,
            slow_seconds,
            model,
        )
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def behaviour(self, caption: str) -> str:
        with self._lock:
            n = self.attempts.get(caption, 0)
            self.attempts[caption] = n + 1
        plan = self.script.get(caption, [self.default])
        return plan[min(n, len(plan) - 1)]

    def answer(self, caption: str) -> dict:
        from ..datagen.captions import caption_id
        from ..datagen.template_writer import write_template_answer
        from ..tasks import get_task

        answer, _, _ = write_template_answer(get_task(self.task), caption, caption_id(caption))
        return answer

    def respond(self, payload: dict) -> tuple[int, object]:
        """``(status, body)`` for one chat payload; ``body`` is a dict (sent as JSON) or raw text."""
        import json
        import time

        with self._lock:
            self.requests.append(payload)
        last = payload["messages"][-1]["content"]
        caption = last.split("Input caption:", 1)[-1].split("\n", 1)[0].strip()
        kind = self.behaviour(caption)
        time.sleep(self.latency + (self.slow_seconds if kind == "slow" else 0.0))
        if kind == "500":
            return 500, {"error": {"message": "scripted internal error", "code": 500}}
        if kind == "400":
            return 400, {"error": {"message": "scripted bad request", "code": 400}}
        if kind == "garbage":
            return 200, "<html>not json</html>"
        answer = self.answer(caption)
        if kind == "missing":
            answer.pop("output_caption")
        elif kind == "same":
            answer["output_caption"] = caption
        content = '{"instruction": "add a hat", "output_' if kind == "malformed" else json.dumps(answer)
        return 200, {
            "id": "scripted",
            "object": "chat.completion",
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }

    def start(self) -> ScriptedLLMServer:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, body) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                elif self.path == "/health":
                    self._send(200, "")
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the client died mid-request (a killed run): nothing to record
                    return
                try:
                    payload = json.loads(body)
                except ValueError:
                    self._send(400, {"error": {"message": "the request body is not JSON", "code": 400}})
                    return
                self._send(*server.respond(payload))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
