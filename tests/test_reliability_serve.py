"""Server reliability and security (issue 16, items 6-10): who may talk to it, bad flags, disconnects,
malformed requests, unsupported fields. Real HTTP on loopback against a tiny trained model."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
from infer_support import LiveServer, shared_trained_checkpoint

from minimind.cli import main
from minimind.errors import UserError
from minimind.infer import SamplingParams
from minimind.infer.loading import load_engine
from minimind.serve import Scheduler, create_app

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_trained_checkpoint(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def engine(ckpt):
    return load_engine(ckpt, max_batch_size=2, max_seq_len=128)


@pytest.fixture(scope="module")
def server(engine):
    with LiveServer(create_app(engine, "tiny", allowed_hosts=["my.lan"])) as srv:
        yield srv


def post(server, path: str, body, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


# -- 6: Host header and content type ---------------------------------------------------------------

@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1", True), ("127.0.0.1:8000", True), ("localhost:8000", True), ("LOCALHOST", True),
    ("[::1]:8000", True), ("[::1]", True), ("192.168.1.20:8000", True), ("my.lan:8000", True),
    ("evil.example", False), ("evil.example:8000", False), ("localhost.evil.example", False),
    ("127.0.0.1.evil.example", False), ("::1", False), ("my.lan:x", False),
])
def test_host_header_is_checked(server, host, ok):
    r = httpx.get(server.url + "/health", headers={"Host": host})
    assert (r.status_code == 200) == ok, r.text
    if not ok:
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
        r = post(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 2}, headers={"Host": host})
        assert r.status_code == 403  # a rebinding page cannot generate either


def test_any_host_with_star(engine):
    with LiveServer(create_app(engine, "tiny", allowed_hosts=["*"])) as srv:
        assert httpx.get(srv.url + "/health", headers={"Host": "anything.example"}).status_code == 200


@pytest.mark.parametrize("content_type", [None, "text/plain", "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_posts_must_be_json(server, content_type):
    """What a cross-site page may send without a CORS preflight is refused before anything runs."""
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers, timeout=30)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


def test_json_with_charset_is_fine(server):
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=body,
                   headers={"Content-Type": "Application/JSON; charset=utf-8"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


# -- 7: flags validated at start -------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--max-batch-size", "0"], "--max-batch-size must be in 1..1024, got 0"),
    (["--max-batch-size", "-1"], "--max-batch-size must be in 1..1024, got -1"),
    (["--port", "0"], "--port must be in 1..65535, got 0"),
    (["--port", "70000"], "--port must be in 1..65535, got 70000"),
    (["--max-seq-len", "0"], "--max-seq-len must be at least 2"),
    (["--api-key", ""], "--api-key (or $MINIMIND_API_KEY) is empty"),
    (["--allowed-hosts", "http://x.example"], "--allowed-hosts: 'http://x.example' is not a host name"),
    (["--host", ""], "--host must be an interface name or address"),
    (["--device", "bogus"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
    (["--model-name", " "], "--model-name must not be empty"),
])
def test_bad_serve_flags_fail_at_start(ckpt, capsys, flags, message):
    t = time.perf_counter()
    assert main(["serve", "--ckpt", str(ckpt), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and err.count("\n") == 1 and "Traceback" not in err
    assert time.perf_counter() - t < 10  # it never started serving


def test_scheduler_refuses_zero_rows(engine):
    with pytest.raises(UserError, match="max_batch_size must be an integer >= 1, got 0"):
        Scheduler(engine, 0)


def test_close_finishes_every_request(engine):
    """Shutting down with requests running and queued answers all of them (nothing hangs)."""
    sched = Scheduler(engine, 1)
    ids = engine.tokenizer.encode("Hello")
    done: dict[int, str] = {}
    seqs = [engine.new_sequence(ids, SamplingParams(max_new_tokens=100, temperature=1.0, seed=i)) for i in range(3)]
    for s in seqs:
        sched.submit(s, lambda ev: ev.finished and done.setdefault(ev.seq.id, ev.seq.finish_reason))
    sched.close()
    assert not sched.thread.is_alive()
    assert sorted(done) == sorted(s.id for s in seqs)


# -- 8: a client that hangs up cancels its generation ------------------------------------------------

@pytest.fixture
def slow_server(ckpt):
    """Decoding slowed to ~50 tokens/s and no stop tokens: every request runs to its budget unless cancelled."""
    engine = load_engine(ckpt, max_batch_size=1, max_seq_len=256)
    engine.default_stop_ids = frozenset()
    app = create_app(engine, "tiny")
    sched = app.state.scheduler
    seqs = []
    real_step, real_submit = sched.runner.step, sched.submit

    def slow_step():
        time.sleep(0.02)
        return real_step()

    def spy_submit(seq, cb):
        seqs.append(seq)
        real_submit(seq, cb)

    sched.runner.step, sched.submit = slow_step, spy_submit
    with LiveServer(app) as srv:
        yield srv, seqs


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": HI}),
    ("/v1/completions", {"prompt": "Hello"}),
])
def test_non_streaming_disconnect_stops_generation(slow_server, path, body):
    srv, seqs = slow_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + path, json={**body, "max_tokens": 200, "temperature": 0}, timeout=0.5)
    deadline = time.time() + 5
    while not (seqs and seqs[0].finished) and time.time() < deadline:
        time.sleep(0.02)
    assert seqs[0].finish_reason == "cancelled"
    assert len(seqs[0].output_ids) < 100  # stopped soon after the hang-up, not at 200
    assert httpx.get(srv.url + "/health").json()["running"] == 0


def test_disconnect_while_queued_frees_the_queue(slow_server):
    """One row: the second request waits; its client leaves; it must not run after the first."""
    srv, seqs = slow_server
    first = threading.Thread(target=lambda: httpx.post(srv.url + "/v1/completions", timeout=30, json={
        "prompt": "Hello", "max_tokens": 100, "temperature": 0}))  # ~2 s: the second surely waits
    first.start()
    deadline = time.time() + 10
    while not seqs and time.time() < deadline:
        time.sleep(0.01)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 100}, timeout=0.3)
    first.join()
    deadline = time.time() + 5
    while not seqs[1].finished and time.time() < deadline:
        time.sleep(0.02)
    assert seqs[0].finish_reason == "length" and seqs[1].finish_reason == "cancelled"
    assert seqs[1].output_ids == []  # never admitted


# -- 9 and 10: every field validated; OpenAI-shaped errors; no 500 ----------------------------------

BAD_CHAT = [
    # the four shapes that gave HTTP 500
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages",
     "messages[0].content[0].text"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": "f"}]},
                   *HI]}, "messages", "messages[0].tool_calls[0].function"),
    ({"messages": HI, "stream": True, "stream_options": "yes"}, "stream_options", "stream_options"),
    # item 10: strict types; logprobs in range
    ({"messages": HI, "stream": "false"}, "stream", "stream: Input should be a valid boolean"),
    ({"messages": HI, "logprobs": "yes"}, "logprobs", "logprobs: Input should be a valid boolean"),
    ({"messages": HI, "top_logprobs": 3}, "top_logprobs", "top_logprobs needs logprobs: true"),
    ({"messages": HI, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
    # more of the same classes
    ({"messages": HI, "max_tokens": "5"}, "max_tokens", "max_tokens"),
    ({"messages": HI, "temperature": True}, "temperature", "temperature"),
    ({"messages": HI, "n": 2}, "n", "n"),
    ({"messages": HI, "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"messages": HI, "max_tokenz": 5}, "max_tokenz", "unrecognized request argument supplied: max_tokenz"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages", "messages[0].content[0].type"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages", "messages[0].role"),
    ({"messages": HI, "stop": ["ok", ""]}, "stop", "stop"),
    ({"messages": HI, "response_format": {"type": "json_object"}}, "response_format", "response_format"),
    ({"messages": HI, "chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs", "enable_thinking"),
    ({"messages": HI, "tool_choice": "required"}, "tool_choice", "tool_choice"),
    ([1, 2], None, "the body must be a JSON object"),
]


@pytest.mark.parametrize("body, param, message", BAD_CHAT)
def test_bad_chat_requests_are_400(server, body, param, message):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and message in err["message"]


@pytest.mark.parametrize("raw", [
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate (was a 500)
    b'{"messages": [{"role": "user", "content": "\xff"}]}',  # not UTF-8
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
    b'{"messages": ',
])
def test_undecodable_bodies_are_400(server, raw):
    r = httpx.post(server.url + "/v1/chat/completions", content=raw,
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({"prompt": []}, "prompt"), ({"prompt": [-1]}, "prompt"), ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": [10 ** 9]}, None), ({"prompt": ""}, "prompt"), ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"), ({"prompt": "x", "stream": 1}, "stream"),
])
def test_bad_completion_requests_are_400(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_good_odd_requests_work(server):
    """Well-typed edge cases: a one-item prompt batch, token ids, parts, tool_choice none, tiny temperature."""
    ok = [("/v1/completions", {"prompt": ["Hello"], "max_tokens": 3}),
          ("/v1/completions", {"prompt": [[5, 6, 7]], "max_tokens": 3, "stream": False}),
          ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "h"},
                                                                              {"type": "text", "text": "i"}]}],
                                    "max_tokens": 3, "temperature": 1e-30, "logprobs": False, "n": 1,
                                    "presence_penalty": 0, "user": "u", "tool_choice": "none",
                                    "tools": [{"type": "function", "function": {"name": "f"}}]})]
    for path, body in ok:
        r = post(server, path, body)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3


def test_unexpected_errors_are_logged_openai_500s(server, monkeypatch, caplog):
    import minimind.serve.completions as app_mod

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(app_mod, "render_prompt", boom)
    with caplog.at_level(logging.ERROR, logger="minimind.serve"):
        r = post(server, "/v1/chat/completions", {"messages": HI})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error" and "boom" not in r.text  # no internals leak
    assert any("unhandled error" in rec.getMessage() and rec.exc_info for rec in caplog.records)
    monkeypatch.undo()
    assert post(server, "/v1/chat/completions", {"messages": HI, "max_tokens": 2}).status_code == 200


# -- 10: logprobs, checked against a full forward pass of the model ----------------------------------

def reference_logprobs(engine, prompt: list[int], output: list[int], k: int):
    """Per generated token: (its logprob, top-k ids, top-k logprobs) from one uncached forward."""
    import torch

    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt + output])).logits[0, len(prompt) - 1:-1]
    logp = torch.log_softmax(logits.float(), -1)
    top_v, top_i = logp.topk(k, -1)
    return [(logp[t, tok].item(), top_i[t].tolist(), top_v[t].tolist()) for t, tok in enumerate(output)]


def greedy_output(engine, prompt: list[int], max_tokens: int) -> list[int]:
    out = engine.generate([prompt], SamplingParams(max_new_tokens=max_tokens, temperature=0))[0]
    ids = out.output_ids
    return ids[:-1] if out.finish_reason == "stop" and ids[-1] in out.stop_ids else ids  # never reported


def test_chat_logprobs_are_the_models(server, engine):
    from minimind.chat import render_prompt
    from minimind.serve.logprobs import TokenBytes

    body = {"messages": HI, "temperature": 0, "max_tokens": 60, "logprobs": True, "top_logprobs": 3}
    r = post(server, "/v1/chat/completions", body).json()
    entries = r["choices"][0]["logprobs"]["content"]
    prompt = render_prompt(engine.tokenizer, HI)
    output = greedy_output(engine, prompt, 60)
    assert len(entries) == len(output) == r["usage"]["completion_tokens"] - 1  # minus the <|im_end|>
    tb = TokenBytes(engine.tokenizer)
    # The bytes of the reported tokens spell exactly the generated text (think block included).
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == engine.tokenizer.decode(output)
    for e, tok, (lp, top_ids, top_lps) in zip(entries, output, reference_logprobs(engine, prompt, output, 3)):
        assert e["bytes"] == list(tb(tok)) and e["logprob"] == pytest.approx(lp, abs=1e-3)
        assert [t["bytes"] for t in e["top_logprobs"]] == [list(tb(i)) for i in top_ids]
        assert [t["logprob"] for t in e["top_logprobs"]] == pytest.approx(top_lps, abs=1e-3)
        assert e["top_logprobs"][0]["logprob"] == e["logprob"]  # greedy: the chosen token is the likeliest
    # Streaming reports the same tokens, spread over the chunks.
    streamed = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    streamed += (choice["logprobs"] or {}).get("content", [])
    assert streamed == entries
    plain = post(server, "/v1/chat/completions", {**body, "logprobs": False, "top_logprobs": 0}).json()
    assert plain["choices"][0]["logprobs"] is None


def test_completion_logprobs_are_the_models(server, engine):
    body = {"prompt": "Hello", "temperature": 0, "max_tokens": 8, "logprobs": 2}
    r = post(server, "/v1/completions", body).json()
    lp = r["choices"][0]["logprobs"]
    prompt = engine.tokenizer.encode("Hello")
    output = greedy_output(engine, prompt, 8)
    ref = reference_logprobs(engine, prompt, output, 2)
    assert lp["token_logprobs"] == pytest.approx([x[0] for x in ref], abs=1e-3)
    assert [len(t) for t in lp["top_logprobs"]] == [2] * len(output)
    assert [max(t.values()) for t in lp["top_logprobs"]] == pytest.approx([x[2][0] for x in ref], abs=1e-3)
    assert lp["text_offset"][0] == 0 and all(
        b - a == len(t) for a, b, t in zip(lp["text_offset"], lp["text_offset"][1:], lp["tokens"]))
    chunks = []
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:])["choices"][0]["logprobs"])
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [x for c in chunks for x in c[key]] == lp[key]
