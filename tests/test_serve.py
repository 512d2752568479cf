"""The OpenAI-compatible server end to end: real HTTP on loopback, the official openai client."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest
from infer_support import LiveServer, shared_trained_checkpoint

from minimind.chat import render_prompt
from minimind.infer import ReasoningSplitter, SamplingParams
from minimind.infer.loading import load_engine
from minimind.serve import create_app

openai = pytest.importorskip("openai")

REASONING, ANSWER = "用户在打招呼。", "你好，世界！我是小模型。"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    ckpt, _ = shared_trained_checkpoint(tmp_path_factory)
    return load_engine(ckpt, max_batch_size=4, max_seq_len=128)


@pytest.fixture(scope="module")
def server(engine):
    with LiveServer(create_app(engine, "tiny", max_body_bytes=4096)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_health_and_models(server, client):
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_with_reasoning(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "你好"}],
                                       temperature=0, max_tokens=60)
    msg = r.choices[0].message
    assert msg.content == ANSWER
    assert msg.model_extra["reasoning_content"] == REASONING
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_non_streaming(client, engine):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "hello"}], temperature=0.8, top_p=0.9,
              seed=11, max_tokens=40)
    full = client.chat.completions.create(**kw)
    reasoning, content, finish, usage = "", "", None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert content == full.choices[0].message.content
    assert reasoning == (full.choices[0].message.model_extra.get("reasoning_content") or "")
    assert finish == full.choices[0].finish_reason and usage.completion_tokens == full.usage.completion_tokens


def test_raw_sse_ends_with_done(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_completions_endpoint_matches_engine(client, engine):
    prompt = "Hello world"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
    ref = engine.generate([engine.tokenizer.encode(prompt)], SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert r.choices[0].text == ref.text and r.usage.completion_tokens == len(ref.output_ids)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert streamed == ref.text


def test_stop_strings(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "你好"}],
                                       temperature=0, max_tokens=60, stop=["世界"])
    assert r.choices[0].message.content == "你好，" and r.choices[0].finish_reason == "stop"


def test_concurrent_requests_equal_solo_runs(client, engine):
    """8 requests (4 rows, so some wait and join mid-batch) give exactly what each gives alone."""
    questions = ["你好", "hello", "hi", "Hello world", "你是谁", "hey", "MiniMind", "小模型"]
    jobs = [dict(model="tiny", messages=[{"role": "user", "content": q}], temperature=1.0, seed=i,
                 max_tokens=8 + 3 * i) for i, q in enumerate(questions)]

    def run(kw):
        r = client.chat.completions.create(**kw)
        return r.choices[0].message.content, r.choices[0].message.model_extra.get("reasoning_content")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, jobs))
    for kw, got in zip(jobs, together):
        ids = render_prompt(engine.tokenizer, kw["messages"])
        solo = engine.generate([ids], SamplingParams(max_new_tokens=kw["max_tokens"], temperature=1.0, seed=kw["seed"]))[0]
        splitter = ReasoningSplitter(open=True)
        parts = splitter.push(solo.text) + splitter.flush()
        expected = ("".join(t for k, t in parts if k == "content"), "".join(t for k, t in parts if k == "reasoning"))
        assert (got[0], got[1] or "") == expected
    assert len(set(together)) > 1  # different seeds and budgets really gave different replies


def test_disconnect_frees_the_row(server, engine):
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 100, "temperature": 1.0,
            "seed": 1}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        for _ in zip(range(3), r.iter_lines()):
            pass
    # the worker notices the cancellation at its next step; then nothing is running
    import time

    deadline = time.time() + 10
    while httpx.get(server.url + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(server.url + "/health").json()["running"] == 0


@pytest.mark.parametrize("body, status, param", [
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": "x"}, 400, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi " * 300}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, None),
])
def test_error_codes(server, body, status, param):
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"]


def test_context_length_error_code(server):
    r = httpx.post(server.url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "hi " * 300}]}, timeout=30)
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_errors_via_openai_client(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=3)
    r = httpx.get(str(client.base_url).rstrip("/") + "/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_api_key(engine):
    with LiveServer(create_app(engine, "tiny", api_key="sekrit")) as srv:
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        assert httpx.get(srv.url + "/health").status_code == 200  # health needs no key
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0)
        assert good.models.list().data[0].id == "tiny"
