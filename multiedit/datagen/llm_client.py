"""An async client for OpenAI-compatible chat servers (vLLM), with timeouts, retries and structured output.

Structured output is requested the OpenAI way, which vLLM's server honours (its older
``guided_json`` extra field is ignored by recent versions)::

    "response_format": {"type": "json_schema",
                        "json_schema": {"name": ..., "schema": {...}, "strict": true}}

:meth:`ChatClient.chat_json` runs one request with retries: server errors (HTTP 5xx/429), timeouts
and dropped connections are retried, and so is an answer that fails the caller's validation, with
exponential backoff; it never raises for those, it returns an :class:`Outcome` saying what happened.
Only :meth:`ChatClient.ensure_ready` raises (a :class:`LLMUnavailableError`, one sentence with the
command that starts a server), so a run fails fast and clearly when no server is there at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import MultiEditError

# httpx logs every request at INFO; a run makes thousands.
logging.getLogger("httpx").setLevel(logging.WARNING)

SERVE_HINT = (
    "start one with `multiedit serve-llm MODEL_DIR --port 8000` "
    "(or pass `--llm template` to write instructions offline)"
)


class LLMUnavailableError(MultiEditError):
    """No usable server at the URL (nothing listening, not OpenAI-compatible, or model not served)."""


class TransientLLMError(Exception):
    """A failure worth retrying: HTTP 5xx/429, a timeout, a dropped connection, a garbled response body."""


class RejectedRequestError(Exception):
    """The server refused the request (HTTP 4xx other than 429): retrying the same request cannot help."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: the wait before retry ``k`` (0-based) is ``base_delay * 2**k``, capped at
    ``max_delay``, times a random jitter in [0.5, 1]. ``max_retries`` retries follow the first attempt."""

    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, retry: int) -> float:
        return min(self.max_delay, self.base_delay * 2**retry) * (0.5 + 0.5 * random.random())


@dataclass
class Completion:
    """One chat answer: the message ``content`` and the server's ``finish_reason`` (``stop``/``length``)."""

    content: str
    finish_reason: str | None
    model: str


@dataclass
class Outcome:
    """Result of :meth:`ChatClient.chat_json`.

    ``status`` is ``"ok"`` (``answer`` holds the validated dict), ``"invalid"`` (answers came but
    none passed), ``"server"`` (the last attempt hit a server error or timeout) or ``"rejected"``
    (HTTP 4xx). ``reasons`` has one entry per failed attempt.
    """

    status: str
    answer: dict | None = None
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def schema_name(text: str) -> str:
    """A ``json_schema.name`` the OpenAI API accepts (``[a-zA-Z0-9_-]``, at most 64 characters)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)[:64] or "answer"


class ChatClient:
    """Talks to ``{base_url}/chat/completions`` (``base_url`` like ``http://127.0.0.1:8000/v1``).

    Args:
        base_url: the server's OpenAI API root, ending in ``/v1``.
        model: the served model name (vLLM: the ``--model`` path or ``--served-model-name``).
        timeout: seconds allowed for one request's answer (read/write/pool).
        connect_timeout: seconds allowed to open a connection.
        api_key: sent as a bearer token when given (vLLM's ``--api-key``).
        max_connections: HTTP connection pool size; keep it ≥ the caller's concurrency.
        on_exchange: called as ``on_exchange(payload, status_code, body)`` after every request
            (``status_code``/``body`` are ``None`` on a transport error); for tracing and tests.

    Use as ``async with ChatClient(...) as client:``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        api_key: str | None = None,
        max_connections: int = 64,
        on_exchange: Callable[[dict, int | None, Any], None] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.on_exchange = on_exchange
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            headers=headers,
            trust_env=False,  # a local server must not be routed through an HTTP proxy
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_models(self) -> list[str]:
        """Names the server serves (``GET /models``); raises :class:`LLMUnavailableError`."""
        url = f"{self.base_url}/models"
        try:
            response = await self._http.get(url)
        except httpx.HTTPError as exc:
            raise LLMUnavailableError(
                f"No LLM server answers at {self.base_url} ({type(exc).__name__}); {SERVE_HINT}."
            ) from None
        try:
            response.raise_for_status()
            return [m["id"] for m in response.json()["data"]]
        except Exception:
            raise LLMUnavailableError(
                f"The server at {self.base_url} is not an OpenAI-compatible API (GET {url} gave HTTP "
                f"{response.status_code}); check --llm-url (it ends in /v1) or {SERVE_HINT}."
            ) from None

    async def ensure_ready(self) -> None:
        """Check that the server answers and serves :attr:`model`; raise :class:`LLMUnavailableError` if not."""
        served = await self.list_models()
        if self.model not in served:
            raise LLMUnavailableError(
                f"The server at {self.base_url} does not serve model {self.model!r}; it serves {served}: "
                f"pass one of them as --llm-model."
            )

    async def chat(
        self,
        messages: list[dict],
        *,
        schema: dict | None = None,
        name: str = "answer",
        temperature: float = 0.9,
        top_p: float = 0.9,
        max_tokens: int = 512,
        seed: int | None = None,
    ) -> Completion:
        """One chat request. Raises :class:`TransientLLMError` or :class:`RejectedRequestError`."""
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            payload["seed"] = int(seed)
        if schema is not None:
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name(name), "schema": schema, "strict": True},
            }
        try:
            response = await self._http.post(f"{self.base_url}/chat/completions", json=payload)
        except httpx.TimeoutException as exc:
            self._trace(payload, None, None)
            raise TransientLLMError(f"timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            self._trace(payload, None, None)
            raise TransientLLMError(f"connection failed ({type(exc).__name__}: {exc})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        self._trace(payload, response.status_code, body)
        status = response.status_code
        if status >= 500 or status == 429:
            raise TransientLLMError(f"HTTP {status} from server: {_error_text(body, response)}")
        if status >= 400:
            raise RejectedRequestError(f"HTTP {status} from server: {_error_text(body, response)}")
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (TypeError, KeyError, IndexError):
            raise TransientLLMError(f"malformed response body: {response.text[:120]!r}") from None
        return Completion(content=content or "", finish_reason=choice.get("finish_reason"), model=body.get("model", ""))

    async def chat_json(
        self,
        messages: list[dict],
        *,
        schema: dict,
        parse: Callable[[str], tuple[dict | None, str | None]],
        retry: RetryPolicy = RetryPolicy(),
        seed: int | None = None,
        **sampling,
    ) -> Outcome:
        """Ask for a JSON answer until ``parse(content)`` accepts one or the retries run out.

        ``parse`` returns ``(answer, None)`` to accept or ``(None, reason)`` to reject. Attempt ``k``
        samples with seed ``seed + k`` so a retry draws a different answer. ``sampling`` is passed
        to :meth:`chat` (``name``, ``temperature``, ``top_p``, ``max_tokens``). Never raises for
        server errors, timeouts or bad answers.
        """
        outcome = Outcome(status="invalid")
        for attempt in range(retry.max_retries + 1):
            if attempt:
                await asyncio.sleep(retry.delay(attempt - 1))
            outcome.attempts = attempt + 1
            try:
                completion = await self.chat(
                    messages, schema=schema, seed=None if seed is None else seed + attempt, **sampling
                )
            except TransientLLMError as exc:
                outcome.status, reason = "server", str(exc)
            except RejectedRequestError as exc:
                outcome.status = "rejected"
                outcome.reasons.append(str(exc))
                return outcome  # the same request would be refused again
            else:
                answer, reason = parse(completion.content)
                if answer is not None:
                    outcome.status, outcome.answer = "ok", answer
                    return outcome
                if completion.finish_reason == "length":
                    reason = f"answer cut off at max_tokens ({reason})"
                outcome.status = "invalid"
            outcome.reasons.append(reason)
        return outcome

    def _trace(self, payload: dict, status: int | None, body: Any) -> None:
        if self.on_exchange is not None:
            self.on_exchange(payload, status, body)


def _error_text(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict):
        err = body.get("error", body.get("message", body))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:200]
    return response.text[:200]
