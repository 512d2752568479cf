"""OpenAI response objects and server-sent events, built from finished or running `Sequence`s.

Contract: plain functions returning JSON-ready dicts (or SSE strings); no HTTP, no engine calls.
- `usage(seq)`, `sse(obj)`, `SSE_DONE`.
- Chat: `chat_completion(...)` (object "chat.completion") and `chat_chunk(...)` (object
  "chat.completion.chunk", one delta); tool calls in `message.tool_calls` (tool_calls.py). Reasoning text is sent as `reasoning_content` beside
  `content`, as DeepSeek/vLLM do.
- Completions: `completion(...)` (object "text_completion"), also used for each streamed piece.
"""

from __future__ import annotations

import json

from ..infer import Sequence

SSE_DONE = "data: [DONE]\n\n"


def usage(seq: Sequence) -> dict:
    n, m = len(seq.prompt_ids), len(seq.output_ids)
    return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


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


def chat_completion(rid: str, created: int, model: str, message: dict, seq: Sequence,
                    logprobs: dict | None = None, finish: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs,
                         "finish_reason": finish or seq.finish_reason}],
            "usage": usage(seq)}


def chat_chunk(rid: str, created: int, model: str, delta: dict | None, finish: str | None = None,
               usage_of: Sequence | None = None, logprobs: dict | None = None) -> dict:
    """One streamed chunk: a delta, or (delta None) the final usage-only chunk."""
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    if delta is None:
        return {**out, "choices": [], "usage": usage(usage_of)}
    return {**out, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def completion(rid: str, created: int, model: str, text: str, finish: str | None,
               seq: Sequence | None = None, logprobs: dict | None = None) -> dict:
    """A text completion; with `seq` (non-streaming, or the usage chunk) it carries usage."""
    out = {"id": rid, "object": "text_completion", "created": created, "model": model,
           "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
    return {**out, "usage": usage(seq)} if seq is not None else out
