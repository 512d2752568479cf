"""OpenAI response objects and server-sent events: every JSON shape the routes send.

Contract: plain functions returning JSON-ready dicts (or SSE strings); no HTTP, no engine calls.
Routes build no response shape themselves; they call these.
- `Meta` = (id, created, model), shared by every chunk of one reply: `reply_meta(kind, model)`
  with kind "chatcmpl" or "cmpl". `usage(*seqs)` sums token counts over one or more sequences
  (the agent loop's turns). `sse(obj)`, `SSE_DONE`.
- Server info: `health(...)` (GET /health) and `model_list(...)` (GET /v1/models, adapters
  listed with their `parent`).
- Chat: `chat_message(items)` (an assistant message from reply items), `chat_completion(...)`
  (object "chat.completion"), `chat_chunk(...)` (object "chat.completion.chunk", one delta),
  `chat_usage_chunk(...)`, `ROLE_DELTA` (a stream's first delta), `tool_result_delta(...)` and
  `tool_message(...)` (the agent loop's executed calls), `agent_message(...)`. Tool calls go in
  `message.tool_calls` (shaped by tool_calls.py). Reasoning text is sent as
  `reasoning_content` beside `content`, as DeepSeek/vLLM do.
- Completions: `completion(...)` (object "text_completion"), also each streamed piece, and
  `completion_usage_chunk(...)`.
"""

from __future__ import annotations

import json
import time
import uuid

from ..infer import Sequence

SSE_DONE = "data: [DONE]\n\n"
ROLE_DELTA = {"role": "assistant", "content": ""}  # the first delta of every chat stream, as OpenAI

Meta = tuple[str, int, str]  # (id, created, model) of one reply


def reply_meta(kind: str, model: str) -> Meta:
    return f"{kind}-{uuid.uuid4().hex[:24]}", int(time.time()), model


def usage(*seqs: Sequence) -> dict:
    n, m = sum(len(s.prompt_ids) for s in seqs), sum(len(s.output_ids) for s in seqs)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


# -- server info -----------------------------------------------------------------------------------


def health(model: str, running: int, queued: int, context_length: int, tools: list[dict]) -> dict:
    return {"status": "ok", "model": model, "running": running, "queued": queued,
            "context_length": context_length, "tools": tools}


def model_list(names: list[str], base: str, created: int, context_length: int) -> dict:
    """Every served name; adapters (names other than `base`) name it as their parent."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "minimind",
         "context_length": context_length, **({"parent": base} if name != base else {})}
        for name in names]}


# -- chat ------------------------------------------------------------------------------------------


def chat_message(items: list[tuple[str, object]], null_empty: bool = False) -> dict:
    """("reasoning" | "content", text) and ("tool_call", call) items -> an assistant message.

    `null_empty`: content is null when empty (replies to requests with tools, as OpenAI)."""
    content = "".join(t for kind, t in items if kind == "content")
    message: dict = {"role": "assistant", "content": content if content or not null_empty else None}
    reasoning = "".join(t for kind, t in items if kind == "reasoning")
    if reasoning:
        message["reasoning_content"] = reasoning
    calls = [c for kind, c in items if kind == "tool_call"]
    if calls:
        message["tool_calls"] = calls
    return message


def chat_completion(meta: Meta, message: dict, finish: str | None, usage: dict,
                    logprobs: dict | None = None) -> dict:
    rid, created, model = meta
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
            "usage": usage}


def chat_chunk(meta: Meta, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
    rid, created, model = meta
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def chat_usage_chunk(meta: Meta, usage: dict) -> dict:
    """The last chunk of a stream that asked for `stream_options.include_usage`: no choices."""
    return {**chat_chunk(meta, {}), "choices": [], "usage": usage}


def tool_message(call_id: str, name: str, content: str) -> dict:
    """The result of one executed call, as the agent loop reports it (and appends it to the conversation)."""
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}


def agent_message(message: dict, transcript: list[dict]) -> dict:
    """The agent loop's last reply with the extension "tool_messages": the earlier assistant and tool messages."""
    return {**message, "tool_messages": transcript}


def tool_result_delta(result: dict) -> dict:
    # Its own key, not `content`: a client joining content deltas never mixes tool output into the answer.
    return {"tool_result": result}


# -- legacy completions ----------------------------------------------------------------------------


def completion(meta: Meta, text: str, finish: str | None, usage: dict | None = None,
               logprobs: dict | None = None) -> dict:
    """A text completion (or one streamed piece of it); with `usage` when the reply is whole."""
    rid, created, model = meta
    out = {"id": rid, "object": "text_completion", "created": created, "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    return {**out, "usage": usage} if usage is not None else out


def completion_usage_chunk(meta: Meta, usage: dict) -> dict:
    return {**completion(meta, "", None, usage), "choices": []}
