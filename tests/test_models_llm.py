"""Text LLMs of levels 3/4 (grand.models.base.TextLLM) on the tiny Llama: prompt formatting and the
request loop (grand.models.chat), the transformers backend (hf_llm) and vLLM's offline engine
(vllm_llm). The HTTP backend is in test_llm_http.py.

Random weights write random text, so the checks are about plumbing: one reply per conversation,
seeds, errors per request, and the two offline backends agreeing on greedy replies. Engine tests
are slow (an engine start takes 10-40 s on 2 CPUs) and share one engine.
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from grand.config import EndpointSpec, GenerationSpec, LLMSpec
from grand.models.base import LLMError, TextLLM
from grand.models.chat import (
    VICUNA_TEMPLATE,
    ChatFormatter,
    chat_with_retries,
    check_conversations,
    prompt_token_ids,
    retry_seed,
)
from grand.models.registry import build_model
from grand.models.tiny import ensure_tiny
from grand.prompts import prompt_path

# importing vllm hits torch.jit.script_method (vllm.utils.deep_gemm): not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

SYSTEM = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
CONVERSATIONS = [
    [{"role": "user", "content": "Describe the image."}],
    [
        {"role": "system", "content": "You describe scenes."},
        {"role": "user", "content": "What is on the table?"},
        {"role": "assistant", "content": "A cup and a red book."},
        {"role": "user", "content": "Where is the man standing?"},
    ],
    [{"role": "user", "content": "Write a short caption."}],
    [{"role": "user", "content": "The dog is near the tree."}, {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "And the cat?"}],
]
# small engine for tests: short context, small KV cache
OPTIONS = {"max_model_len": 512, "kv_cache_gib": 0.25}


def _spec(backend="vllm", **kwargs) -> LLMSpec:
    generation = GenerationSpec(**{"max_new_tokens": 8, "temperature": 0.0, **kwargs.pop("generation", {})})
    kwargs.setdefault("options", OPTIONS if backend == "vllm" else {})
    return LLMSpec(name="tiny_llm", backend=backend, checkpoint=kwargs.pop("checkpoint", "tiny:llama"), generation=generation, **kwargs)


def _vicuna() -> str:
    return prompt_path(VICUNA_TEMPLATE).read_text()


# ---------------------------------------------------------------------------------------------
# formatting and the request loop, no model


def test_vicuna_template_writes_fastchat_v1_1_prompts():
    render = ChatFormatter(_vicuna(), {"bos_token": "<s>", "eos_token": "</s>"})
    assert render(CONVERSATIONS[0]) == f"<s>{SYSTEM} USER: Describe the image. ASSISTANT:"
    assert render(CONVERSATIONS[1]) == (
        "<s>You describe scenes. USER: What is on the table? ASSISTANT: A cup and a red book.</s>"
        "USER: Where is the man standing? ASSISTANT:"
    )
    # without a BOS (the HTTP completions API: the server adds it)
    assert ChatFormatter(_vicuna(), {"bos_token": "", "eos_token": "</s>"})(CONVERSATIONS[0]).startswith(SYSTEM)
    with pytest.raises(Exception, match="not 'system'"):  # a system turn anywhere but first
        render([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}])


def test_tiny_llama_has_the_vicuna_template_and_one_bos():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny("llama"))
    own = ChatFormatter.for_tokenizer(_spec(), tokenizer)
    from_file = ChatFormatter.for_tokenizer(_spec(chat_template="prompts/vicuna_chat_template.jinja"), tokenizer)
    assert own.template == tokenizer.chat_template
    for conversation in CONVERSATIONS:
        text = own(conversation)
        assert text == from_file(conversation) and text.startswith("<s>")
        ids = prompt_token_ids(tokenizer, text)
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        # a template without BOS (FastChat's way): the tokenizer adds it, the same ids result
        assert prompt_token_ids(tokenizer, text[len("<s>"):]) == ids


def test_conversations_that_no_backend_can_answer_are_refused_before_any_request():
    check_conversations("m", CONVERSATIONS, [1, 2, 3, 4])
    cases = [
        ([[]], None, "conversation 0 is empty"),
        ([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]], None, "ends with a 'assistant' turn"),
        ([[{"role": "bot", "content": "hi"}]], None, "not {'role': system|user|assistant"),
        ([[{"role": "user", "content": None}]], None, "not {'role'"),
        (CONVERSATIONS, [1], "4 conversations but 1 seeds"),
    ]
    for conversations, seeds, message in cases:
        with pytest.raises(ValueError, match=message.replace("|", r"\|").replace("{", r"\{")):
            check_conversations("m", conversations, seeds)


def test_request_loop_refuses_long_prompts_and_retries_empty_replies_with_new_seeds():
    calls = []

    def generate(prompts, seeds):
        calls.append(list(seeds))
        # request 0 answers at once; request 1 is empty until its third attempt; request 3 never answers
        return ["  first  " if p == [0] else ("second" if p == [1] and len(calls) == 3 else " ") for p in prompts]

    prompts = [[0], [1], [2] * 10, [3]]
    replies = chat_with_retries("m", prompts, [5, 6, 7, 8], generate, max_model_len=10, sampling=True, empty_retries=2)
    assert replies[0] == "first" and replies[1] == "second"
    assert isinstance(replies[2], LLMError) and replies[2].attempts == 0 and "10 tokens, max_model_len 10" in str(replies[2])
    assert isinstance(replies[3], LLMError) and replies[3].attempts == 3 and "empty reply after 3 attempts" in str(replies[3])
    # the long prompt never reached the engine; retries carry only the unanswered requests, with derived seeds
    assert calls == [[5, 6, 8], [retry_seed(6, 1), retry_seed(8, 1)], [retry_seed(6, 2), retry_seed(8, 2)]]
    assert len({5, retry_seed(5, 1), retry_seed(5, 2), 6}) == 4
    # derived, not drawn: a resumed run (another process, another hash seed) retries with the same seeds
    assert (retry_seed(5, 1), retry_seed(5, 2)) == (319614723, 414926308)

    calls.clear()  # greedy: a retry would write the same empty reply
    replies = chat_with_retries("m", [[1]], [6], generate, max_model_len=10, sampling=False, empty_retries=2)
    assert len(calls) == 1 and "greedy decoding" in str(replies[0])


def test_llm_error_keeps_its_attempts_through_pickling():
    err = pickle.loads(pickle.dumps(LLMError("llm 'x': boom", attempts=3)))
    assert isinstance(err, LLMError) and str(err) == "llm 'x': boom" and err.attempts == 3


def test_registry_picks_the_llm_backend_and_checks_options_before_loading(monkeypatch):
    from grand.models.http_llm import HttpTextLLM
    from grand.models.loading import preflight_checkpoint

    http = build_model(_spec("http", endpoint=EndpointSpec(url="http://127.0.0.1:9/v1/")))
    assert isinstance(http, HttpTextLLM) and isinstance(http, TextLLM) and http.request_url == "http://127.0.0.1:9/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown options max_len"):
        build_model(_spec(options={"max_len": 5}))
    with pytest.raises(ValueError, match="num_beams=2 is not supported by the vllm backend"):
        build_model(_spec(generation={"num_beams": 2}))
    monkeypatch.delenv("GRAND_TEST_NO_KEY", raising=False)
    with pytest.raises(ValueError, match="GRAND_TEST_NO_KEY, which is not set"):
        build_model(_spec("http", endpoint=EndpointSpec(url="http://x/v1", api_key_env="GRAND_TEST_NO_KEY")))
    with pytest.raises(Exception, match="model 'tiny_llm' could not load checkpoint"):
        build_model(_spec(checkpoint="/nonexistent/llm"))
    assert preflight_checkpoint(_spec()) == str(ensure_tiny("llama"))


# ---------------------------------------------------------------------------------------------
# transformers backend (fast: the tiny Llama loads in a second)


@pytest.fixture(scope="module")
def hf_greedy():
    return build_model(_spec("transformers", batch_size=3))


def test_transformers_backend_answers_every_conversation(hf_greedy):
    from grand.models.hf_llm import HFTextLLM

    assert isinstance(hf_greedy, HFTextLLM) and isinstance(hf_greedy, TextLLM)
    replies = hf_greedy.chat(CONVERSATIONS)
    assert len(replies) == len(CONVERSATIONS)
    assert all(isinstance(r, str) and r and r == r.strip() for r in replies), replies
    assert hf_greedy.chat(CONVERSATIONS[::-1]) == replies[::-1]  # greedy: no batch effects
    assert hf_greedy.chat([]) == []


def test_transformers_backend_seeds_and_context_limit():
    sampling = build_model(_spec("transformers", generation={"temperature": 1.0, "top_p": 0.9, "seed": 3}))
    first = sampling.chat(CONVERSATIONS)
    assert sampling.chat(CONVERSATIONS) == first
    assert sampling.chat(CONVERSATIONS, seeds=[4] * 4) != first
    short = build_model(_spec("transformers", options={"max_model_len": 120}))
    replies = short.chat([CONVERSATIONS[0], [{"role": "user", "content": "dog " * 100}]])
    assert isinstance(replies[0], str) and isinstance(replies[1], LLMError) and "max_model_len 120" in str(replies[1])


def test_checkpoint_without_chat_template_gets_the_vicuna_one(tmp_path, hf_greedy):
    """As lmsys/vicuna-13b-v1.5, which ships no chat template: the same prompts as the tiny Llama's
    own (Vicuna) template, so the same greedy replies."""
    bare = tmp_path / "llama-no-template"
    shutil.copytree(ensure_tiny("llama"), bare)
    (bare / "chat_template.jinja").unlink()
    model = build_model(_spec("transformers", checkpoint=str(bare), batch_size=3))
    assert model.tokenizer.chat_template is None
    assert model.format_prompt.template == _vicuna()
    assert model.chat(CONVERSATIONS) == hf_greedy.chat(CONVERSATIONS)


# ---------------------------------------------------------------------------------------------
# vLLM's offline engine, one per module


@pytest.fixture(scope="module")
def vllm_greedy(tmp_path_factory):
    pytest.importorskip("vllm")
    saved = dict(os.environ)
    # vLLM's engine sockets, which stay behind when an engine is killed: not in /tmp
    os.environ["VLLM_RPC_BASE_PATH"] = str(tmp_path_factory.mktemp("vllm-ipc"))
    model = build_model(_spec())
    # vLLM sets variables for its own processes (LD_PRELOAD, OMP settings, ...); they have started,
    # so later tests get the old ones back
    os.environ.clear()
    os.environ.update(saved)
    yield model
    model.close()


@pytest.mark.slow
def test_vllm_answers_every_conversation_and_refuses_only_the_long_one(vllm_greedy):
    from grand.models.vllm_llm import VllmTextLLM

    assert isinstance(vllm_greedy, VllmTextLLM) and isinstance(vllm_greedy, TextLLM)
    assert vllm_greedy.max_model_len == 512
    too_long = [{"role": "user", "content": "dog " * 600}]
    replies = vllm_greedy.chat([CONVERSATIONS[0], too_long, *CONVERSATIONS[1:]])
    assert len(replies) == len(CONVERSATIONS) + 1
    assert isinstance(replies[1], LLMError) and "max_model_len 512" in str(replies[1])
    others = [replies[0], *replies[2:]]
    assert all(isinstance(r, str) and r and r == r.strip() for r in others), others
    assert vllm_greedy.chat(CONVERSATIONS) == others  # the refused request changed nothing else
    assert vllm_greedy.chat([]) == []


@pytest.mark.slow
def test_vllm_greedy_replies_equal_the_transformers_backend(vllm_greedy, hf_greedy):
    """Same weights, same prompt ids: the same greedy replies (all of them in our runs; one may
    differ where other CPU kernels round a near-tie the other way)."""
    vllm_replies, hf_replies = vllm_greedy.chat(CONVERSATIONS), hf_greedy.chat(CONVERSATIONS)
    same = [a == b for a, b in zip(vllm_replies, hf_replies)]
    assert sum(same) >= len(CONVERSATIONS) - 1, (vllm_replies, hf_replies)


@pytest.mark.slow
def test_vllm_sampling_is_seeded_per_request(vllm_greedy):
    sampling = build_model(_spec(generation={"temperature": 1.0, "top_p": 0.9, "seed": 7}))
    assert sampling.llm is vllm_greedy.llm  # decoding differs, the engine is shared
    first = sampling.chat(CONVERSATIONS)
    assert sampling.chat(CONVERSATIONS) == first
    # each request carries its seed: the same conversation and seed give the same reply in any batch
    assert sampling.chat(CONVERSATIONS[::-1]) == first[::-1]
    assert sampling.chat(CONVERSATIONS[1:2]) == first[1:2]
    assert sampling.chat(CONVERSATIONS, seeds=[7] * 4) == first
    reseeded = sampling.chat(CONVERSATIONS, seeds=[8, 9, 10, 11])
    assert reseeded != first, "sampling must actually sample"
    assert sampling.chat(CONVERSATIONS, seeds=[8, 9, 10, 11]) == reseeded


@pytest.mark.slow
def test_vllm_full_batch_of_long_sampled_prompts(vllm_greedy):
    """Regression: vLLM 0.32 on CPU killed its engine ("CPU Generator does not use offset") when the
    prefill of a long prompt was split over steps while requests carried seeds, as ours always do.
    Sixteen prompts near the context limit exceed one step's token budget."""
    sampling = build_model(_spec(generation={"temperature": 0.7, "top_p": 0.95, "seed": 1}))
    long = [[{"role": "user", "content": f"{k} " + "the dog on a sofa " * 70}] for k in range(16)]
    replies = sampling.chat(long)
    assert all(isinstance(r, str) and r for r in replies), replies
    assert sampling.chat(long[3:4]) == replies[3:4]  # and still batch-independent
