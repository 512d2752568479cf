"""Tool calls through the OpenAI-compatible server, with the official openai client.

Two models: the tiny tool model overfit on one calculator conversation (test_agent.py; a real
engine, renderer and parser) for the round trips, and a scripted scheduler that "generates" a
chosen reply token by token through the real tokenizer for the edge cases (text around calls,
several calls, malformed calls, markup split across tokens, tool_choice prefills).
"""

from __future__ import annotations

import json

import httpx
import pytest
from infer_support import LiveServer
from test_agent import CALC, QUESTION, tool_checkpoint

from minimind.infer import Event
from minimind.infer.loading import load_engine
from minimind.serve import create_app
from minimind.tools import builtin_tools

openai = pytest.importorskip("openai")
ASK = [{"role": "user", "content": QUESTION}]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load_engine(tool_checkpoint(tmp_path_factory), max_batch_size=4, max_seq_len=512)


@pytest.fixture(scope="module")
def server(engine):
    with LiveServer(create_app(engine, "tiny", tools=builtin_tools())) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def create(client, messages, extra=None, **kw):
    return client.chat.completions.create(model="tiny", messages=messages, tools=CALC, temperature=0, max_tokens=60,
                                          extra_body={"enable_thinking": False, **(extra or {})}, **kw)


def streamed(client, messages, **kw):
    """(content, {index: {id, name, arguments}}, finish_reason, raw tool-call deltas) of a streamed reply."""
    content, calls, finish, raw = "", {}, None, []
    for chunk in create(client, messages, stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                raw.append(d)
                call = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
                call["arguments"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, calls, finish, raw


def test_round_trip_non_streaming(client):
    r = create(client, ASK)
    msg, choice = r.choices[0].message, r.choices[0]
    assert choice.finish_reason == "tool_calls" and msg.content is None
    (call,) = msg.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "(2+3)*4"}
    # the client runs the tool and sends the result back
    history = ASK + [msg.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"result": 20}'}]
    final = create(client, history)
    assert final.choices[0].message.content == "It is 20." and final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls


def test_round_trip_streaming(client):
    content, calls, finish, raw = streamed(client, ASK)
    assert content == "" and finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["name"] == "calculator" and json.loads(calls[0]["arguments"]) == {"expression": "(2+3)*4"}
    # OpenAI's sequence: a first delta with id, type, name and empty arguments, then fragments
    assert raw[0].id == calls[0]["id"] and raw[0].type == "function" and raw[0].function.arguments == ""
    assert len(raw) > 2 and all(d.id is None and d.function.name is None for d in raw[1:])
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0]["id"], "type": "function",
         "function": {"name": "calculator", "arguments": calls[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"result": 20}'}]
    content, calls, finish, _ = streamed(client, history)
    assert (content, calls, finish) == ("It is 20.", {}, "stop")


def test_execute_tools_runs_the_servers_calculator(client, server):
    r = create(client, ASK, extra={"execute_tools": True})
    msg = r.choices[0].message
    assert msg.content == "It is 20." and r.choices[0].finish_reason == "stop"
    steps = msg.model_extra["tool_messages"]
    assert steps[0]["tool_calls"][0]["function"]["name"] == "calculator"
    assert steps[1] == {"role": "tool", "tool_call_id": steps[0]["tool_calls"][0]["id"], "name": "calculator",
                        "content": '{"result": 20}'}
    body = {"messages": ASK, "tools": CALC, "stream": True, "execute_tools": True, "enable_thinking": False, "temperature": 0,
            "max_tokens": 60}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as resp:
        chunks = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert {"tool_result": {"role": "tool", "tool_call_id": deltas[1]["tool_calls"][0]["id"], "name": "calculator",
                            "content": '{"result": 20}'}} in deltas
    assert "".join(d.get("content") or "" for d in deltas) == "It is 20."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_execute_tools_is_refused_without_server_tools(engine):
    with LiveServer(create_app(engine, "tiny")) as srv:
        body = {"messages": ASK, "execute_tools": True}
        r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and "--tools" in r.json()["error"]["message"]
        assert httpx.get(srv.url + "/health").json()["tools"] == []


def test_execute_tools_refuses_foreign_tools(server):
    tools = [{"type": "function", "function": {"name": "rm_rf", "parameters": {}}}]
    r = httpx.post(server.url + "/v1/chat/completions", json={"messages": ASK, "execute_tools": True,
                                                            "tools": tools}, timeout=30)
    assert r.status_code == 400 and "rm_rf" in r.json()["error"]["message"]
    assert [t["function"]["name"] for t in httpx.get(server.url + "/health").json()["tools"]] == \
        builtin_tools().names


# -- scripted replies ------------------------------------------------------------------------------


class ScriptedScheduler:
    """Stands in for the scheduler: the reply is `script(prompt text)`, emitted token by token
    (ids from the real tokenizer, markers as control ids, as a model emits them)."""

    def __init__(self, engine, script) -> None:
        self.engine, self.script, self.prompts = engine, script, []

    def submit(self, seq, on_event) -> None:
        tok = self.engine.tokenizer
        prompt = tok.decode(seq.prompt_ids)
        self.prompts.append(prompt)
        reply = self.script(prompt)
        if prompt.endswith("<think>\n"):  # thinking on: an empty think block first, as trained
            reply = "\n</think>\n\n" + reply
        ids = tok.encode(reply, allow_special=True) + [tok.eos_id]
        for tid in ids[:seq.params.max_new_tokens]:
            seq.output_ids.append(tid)
            done = tid == tok.eos_id or len(seq.output_ids) == seq.params.max_new_tokens
            text = "" if tid == tok.eos_id else seq.decoder.push(tid)
            if done:
                text += seq.decoder.flush() if tid != tok.eos_id else ""
                seq.finish_reason = "stop" if tid == tok.eos_id else "length"
            seq.pieces.append(text)
            on_event(Event(seq, tid, text, done))
            if done:
                return


TOOLS2 = CALC + [{"type": "function", "function": {"name": "weekday", "parameters": {"type": "object"}}}]


def call(name, args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args}, ensure_ascii=False)}\n</tool_call>'


@pytest.fixture(scope="module")
def scripted(engine):
    app = create_app(engine, "tiny")
    sched = ScriptedScheduler(engine, None)
    app.state.ctx.scheduler = sched
    with LiveServer(app) as srv:
        sched.client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        yield sched


NESTED = {"expression": "1+1", "options": {"precision": [2, {"deep": "值"}]}}
CASES = {  # reply -> (content, [(name, arguments)], finish)
    "text then two calls": ("I will compute both.\n" + call("calculator", NESTED) + "\n" + call("weekday", {"date": "x"}),
                            "I will compute both.", [("calculator", NESTED), ("weekday", {"date": "x"})], "tool_calls"),
    "bad json": ('<tool_call>\n{"name": "calculator", "arguments": {"expression": }\n</tool_call>',
                 '<tool_call>\n{"name": "calculator", "arguments": {"expression": }\n</tool_call>', [], "stop"),
    "unknown function": (call("rm", {"path": "/"}), call("rm", {"path": "/"}), [], "stop"),
    "plain answer": ("Just text, no <tool_c... markup here < tool_call", "Just text, no <tool_c... markup here < tool_call",
                     [], "stop"),
    "text around a call": ("Before.\n" + call("weekday", {"date": "d"}) + "\nAfter.", "Before.\nAfter.",
                           [("weekday", {"date": "d"})], "tool_calls"),
    "unclosed": ("Hmm " + call("calculator", {"expression": "1"})[:-5], "Hmm " + call("calculator", {"expression": "1"})[:-5],
                 [], "stop"),
}


@pytest.mark.parametrize("case", CASES)
def test_scripted_replies_streaming_equals_non_streaming(scripted, case):
    reply, content, want_calls, finish = CASES[case]
    scripted.script = lambda prompt: reply
    msgs = [{"role": "user", "content": case}]
    r = scripted.client.chat.completions.create(model="tiny", messages=msgs, tools=TOOLS2, max_tokens=200)
    msg = r.choices[0].message
    assert msg.content == (content or None) and r.choices[0].finish_reason == finish
    got = [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls or []]
    assert got == want_calls
    kw = dict(model="tiny", messages=msgs, tools=TOOLS2, max_tokens=200, extra_body={"enable_thinking": False})
    s_content, s_calls, s_finish, _ = streamed_raw(scripted.client, kw)
    assert (s_content, s_finish) == (content, finish)
    assert [(c["name"], json.loads(c["arguments"])) for c in s_calls.values()] == want_calls


def streamed_raw(client, kw):
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"name": d.function.name, "arguments": ""})
                c["arguments"] += d.function.arguments or ""
            finish = choice.finish_reason or finish
    return content, calls, finish, None


@pytest.mark.parametrize("tools", [None, "none"])
def test_without_tools_or_with_tool_choice_none_markup_is_content(scripted, tools):
    reply = call("calculator", {"expression": "1"})
    scripted.script = lambda prompt: reply
    kw = {"tools": TOOLS2, "tool_choice": "none"} if tools else {}
    r = scripted.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], **kw)
    assert r.choices[0].message.content == reply and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    assert "# Tools" not in scripted.prompts[-1]  # "none": the model is not shown the tools


def test_markup_never_leaks_into_content_deltas(scripted):
    scripted.script = lambda prompt: "Answer first. " + call("calculator", {"expression": "2"})
    kw = dict(model="tiny", messages=[{"role": "user", "content": "x"}], tools=TOOLS2, max_tokens=200)
    pieces = [c.choices[0].delta.content for c in scripted.client.chat.completions.create(stream=True, **kw)
              if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "Answer first." and not any("<" in p for p in pieces)


def test_a_call_cut_by_the_token_budget_is_text_with_finish_length(scripted):
    scripted.script = lambda prompt: call("calculator", {"expression": "1+2+3+4+5+6+7+8+9"})
    r = scripted.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                tools=TOOLS2, max_tokens=6)
    assert r.choices[0].finish_reason == "length" and not r.choices[0].message.tool_calls
    assert r.choices[0].message.content.startswith("<tool_call>")


def test_tool_choice_required_and_named_prefill_the_call(scripted):
    tail = {"required": 'calculator", "arguments": {"expression": "6*7"}}\n</tool_call>',
            "named": ' {"date": "2026-11-27"}}\n</tool_call>'}
    for kind, choice in (("required", "required"), ("named", {"type": "function", "function": {"name": "weekday"}})):
        scripted.script = lambda prompt: tail[kind]
        r = scripted.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                    tools=TOOLS2, tool_choice=choice, max_tokens=100)
        assert r.choices[0].finish_reason == "tool_calls", kind
        prompt = scripted.prompts[-1]
        assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"" +
                               ("" if kind == "required" else 'weekday", "arguments":'))
    (c1,) = r.choices[0].message.tool_calls
    assert c1.function.name == "weekday" and json.loads(c1.function.arguments) == {"date": "2026-11-27"}


@pytest.mark.parametrize("choice,why", [
    ({"type": "function", "function": {"name": "nope"}}, "not among the tools"), ("required", "requires tools")])
def test_bad_tool_choice_is_a_400(scripted, choice, why):
    body = {"messages": [{"role": "user", "content": "x"}], "tool_choice": choice}
    if why != "requires tools":
        body["tools"] = TOOLS2
    r = httpx.post(str(scripted.client.base_url) + "chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and why in r.json()["error"]["message"]
