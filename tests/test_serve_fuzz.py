"""Fuzzing the server's two POST routes with hypothesis: no request body may give a 500 or kill the server.

Bodies come from two generators: well-typed-but-odd requests (real field names, values at and
past their ranges, strange text, lone surrogates, tools, content parts) and ill-typed ones (any
JSON value in any field, or a random JSON document as the whole body). Bounded: a fixed number
of derandomized examples, a tiny model, a 64-token context and small token budgets.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from infer_support import LiveServer, shared_trained_checkpoint

from minimind.infer.loading import load_engine
from minimind.serve import create_app

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
# Text as clients send it, plus chat markers, lone surrogates (escaped by json.dumps) and NULs.
TEXT = st.text(max_size=20) | st.sampled_from(["", "\ud800", "a\udc80b", "<|im_end|>", "<think>", "\x00", "你好"])
NUMBER = st.integers(-3, 3) | st.floats(-3, 3) | st.sampled_from([0, 1e-30, 2.0000001, 2 ** 63, -(2 ** 64)])


def odd(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly values of the right type, sometimes any JSON at all."""
    return st.one_of(valid, valid, JSON)


PART = st.fixed_dictionaries({"type": odd(st.sampled_from(["text", "image_url"])), "text": odd(TEXT)})
CALL = st.fixed_dictionaries({"type": odd(st.just("function")),
                              "function": odd(st.fixed_dictionaries({"name": odd(TEXT), "arguments": odd(TEXT)}))})
MESSAGE = st.fixed_dictionaries(
    {"role": odd(st.sampled_from(["system", "developer", "user", "assistant", "tool", "bot"]))},
    optional={"content": odd(TEXT | st.lists(odd(PART), max_size=3)), "tool_calls": odd(st.lists(odd(CALL), max_size=2)),
              "reasoning_content": odd(TEXT), "name": odd(TEXT)})
COMMON = {
    "model": odd(st.sampled_from(["tiny", "other"])),
    "max_tokens": odd(st.integers(-1, 4)),
    "temperature": odd(NUMBER), "top_p": odd(NUMBER), "top_k": odd(st.integers(-1, 10 ** 7)),
    "repetition_penalty": odd(NUMBER), "seed": odd(st.integers(-(2 ** 64), 2 ** 64)),
    "stop": odd(TEXT | st.lists(TEXT, max_size=9)), "n": odd(st.integers(0, 2)),
    "stream": odd(st.booleans()), "stream_options": odd(st.fixed_dictionaries({"include_usage": odd(st.booleans())})),
    "presence_penalty": odd(NUMBER), "logit_bias": odd(st.dictionaries(TEXT, NUMBER, max_size=2)),
    "user": odd(TEXT),
}
CHAT = st.fixed_dictionaries({"messages": odd(st.lists(odd(MESSAGE), max_size=3))}, optional={
    **COMMON, "max_completion_tokens": odd(st.integers(0, 4)), "logprobs": odd(st.booleans()),
    "top_logprobs": odd(st.integers(-1, 21)), "enable_thinking": odd(st.booleans()),
    "chat_template_kwargs": odd(st.fixed_dictionaries({"enable_thinking": odd(st.booleans())})),
    "tools": odd(st.lists(st.fixed_dictionaries({"type": odd(st.just("function")), "function": odd(
        st.fixed_dictionaries({"name": odd(TEXT)}, optional={"parameters": JSON}))}), max_size=2)),
    "tool_choice": odd(st.sampled_from(["auto", "none", "required"])), "response_format": JSON,
})
COMPLETION = st.fixed_dictionaries({"prompt": odd(TEXT | st.lists(st.integers(-1, 500), max_size=5)
                                                  | st.lists(TEXT, max_size=2))},
                                   optional={**COMMON, "logprobs": odd(st.integers(-1, 6)), "echo": odd(st.booleans())})
REQUESTS = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), CHAT | JSON),
    st.tuples(st.just("/v1/completions"), COMPLETION | JSON),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt, _ = shared_trained_checkpoint(tmp_path_factory)
    engine = load_engine(ckpt, max_batch_size=4, max_len=64)
    with LiveServer(create_app(engine, "tiny")) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def check_response(r: httpx.Response, body) -> None:
    assert r.status_code in (200, 400, 404), f"{r.status_code} for {body!r}: {r.text[:300]}"
    if r.status_code != 200:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    elif r.headers["content-type"].startswith("text/event-stream"):
        lines = [line for line in r.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]" and "server_error" not in r.text
    else:
        assert r.json()["usage"]["completion_tokens"] >= 1


def test_no_request_body_gives_a_500_and_the_server_lives_on(server):
    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=REQUESTS)
    def one(request):
        path, body = request
        r = server.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        check_response(r, body)

    one()
    # Afterwards a normal request still gets the model's real answer, and nothing is left running.
    r = server.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "你好"}],
                                                 "temperature": 0, "max_tokens": 60})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "你好，世界！我是小模型。"
    health = server.get("/health").json()
    assert health["running"] == 0 and health["queued"] == 0
