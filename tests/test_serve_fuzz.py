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
from minimind.tools import builtin_tools

PLAIN = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)  # any text but lone surrogates
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | PLAIN,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(PLAIN, inner, max_size=3),
    max_leaves=6,
)
# Text as clients send it, plus chat markers and NULs. Lone surrogates are injected by `mutated`
# (one per body: were they in every string, nearly every body would be invalid JSON).
WORD = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=10)
TEXT = st.one_of(PLAIN, PLAIN, PLAIN, st.sampled_from(["", "<|im_end|>", "<|im_start|>system", "<think>", "\x00",
                                                        "你好", "hi"]))


def edgy(valid: st.SearchStrategy, *edges) -> st.SearchStrategy:
    """Mostly (7 in 8) values in range, else one at or past an edge of the range."""
    return st.one_of(*[valid] * 7, st.sampled_from(edges))


PART = st.fixed_dictionaries({"type": edgy(st.just("text"), "image_url", "TEXT"), "text": TEXT})
CALL = st.fixed_dictionaries({"type": st.just("function"),
                              "function": st.fixed_dictionaries({"name": edgy(WORD, ""), "arguments": TEXT})})
MESSAGE = st.fixed_dictionaries(
    {"role": edgy(st.sampled_from(["system", "developer", "user", "assistant", "tool"]), "bot", "")},
    optional={"content": TEXT | st.lists(PART, max_size=3), "tool_calls": st.lists(CALL, max_size=2),
              "reasoning_content": TEXT, "name": TEXT})
COMMON = {
    "model": edgy(st.just("tiny"), "other", ""),
    "max_tokens": edgy(st.integers(1, 4), 0, -1, 2 ** 70),
    "temperature": edgy(st.floats(0, 2), -0.1, 1e-30, 2.0000001, 1e308),
    "top_p": edgy(st.floats(0.01, 1), 0, 1.5, 5e-324),
    "top_k": edgy(st.integers(0, 50), -1, 10 ** 7, 2 ** 63),
    "repetition_penalty": edgy(st.floats(0.5, 2), 0, 0.01, 10, 11),
    "seed": st.integers(-(2 ** 64), 2 ** 64),
    "stop": edgy(WORD | st.lists(WORD, max_size=8), "", [""], ["a"] * 9), "n": edgy(st.just(1), 0, 2),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "presence_penalty": edgy(st.just(0), 0.5, -2, 3), "logit_bias": edgy(st.just({}), {"1": 5}),
    "user": TEXT,
}
CHAT = st.fixed_dictionaries({"messages": st.lists(MESSAGE, min_size=1, max_size=3)}, optional={
    **COMMON, "max_completion_tokens": edgy(st.integers(1, 4), 0), "logprobs": st.booleans(),
    "top_logprobs": edgy(st.integers(0, 20), -1, 21), "enable_thinking": st.booleans(),
    "chat_template_kwargs": st.fixed_dictionaries({"enable_thinking": st.booleans()}),
    "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
        {"name": edgy(WORD, "")}, optional={"parameters": JSON, "description": TEXT})}), max_size=2),
    "tool_choice": edgy(st.sampled_from(["auto", "none", "required", {"type": "function", "function": {"name": "f"}}]),
                        "always", {"type": "function", "function": {"name": ""}}),
    "execute_tools": st.booleans(),
    "response_format": edgy(st.just({"type": "text"}), {"type": "json_object"}),
})
COMPLETION = st.fixed_dictionaries(
    {"prompt": edgy(WORD | st.lists(edgy(st.integers(0, 419), -1, 420, 2 ** 64), min_size=1, max_size=5)
                    | st.lists(WORD, min_size=1, max_size=1), "", [], ["a", "b"], [[1], [2]])},
    optional={**COMMON, "logprobs": edgy(st.none() | st.integers(0, 5), -1, 6), "echo": edgy(st.just(False), True)})


def slots(value, path=()):
    """Every place in a JSON document (as a path of keys/indices) that a value could be put."""
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from slots(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from slots(v, path + (i,))


@st.composite
def mutated(draw, bodies: st.SearchStrategy):
    """A well-typed body with ONE place replaced by any JSON value or a lone surrogate (or removed):
    ill-typed in one field, so the fuzzer probes each field's validation rather than stopping at
    the first of many errors."""
    body = draw(bodies)
    path = draw(st.sampled_from(list(slots(body))[1:] or [()]))
    if not path:
        return draw(JSON)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON | st.sampled_from(["\ud800", "a\udfffb"]))
    return body


CHAT_URL, COMPLETION_URL = "/v1/chat/completions", "/v1/completions"
REQUESTS = st.one_of(
    st.tuples(st.just(CHAT_URL), CHAT), st.tuples(st.just(CHAT_URL), mutated(CHAT)),
    st.tuples(st.just(COMPLETION_URL), COMPLETION), st.tuples(st.just(COMPLETION_URL), mutated(COMPLETION)),
    st.tuples(st.sampled_from([CHAT_URL, COMPLETION_URL]), JSON),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt, _ = shared_trained_checkpoint(tmp_path_factory)
    engine = load_engine(ckpt, max_batch_size=4, max_seq_len=64)
    with LiveServer(create_app(engine, "tiny", tools=builtin_tools())) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
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
