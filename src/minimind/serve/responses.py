"""OpenAI response objects and server-sent events, built from finished or running `Sequence`s.

Contract: plain functions returning JSON-ready dicts (or SSE strings); no HTTP, no engine calls.
- `usage(seq)`, `sse(obj)`, `SSE_DONE`.
- Chat: `chat_completion(...)` (object "chat.completion") and `chat_chunk(...)` (object
  "chat.completion.chunk", one delta). Reasoning text is sent as `reasoning_content` beside
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


def chat_message(parts: dict[str, list[str]]) -> dict:
    """{"reasoning": [...], "content": [...]} pieces -> an assistant message."""
    message = {"role": "assistant", "content": "".join(parts["content"])}
    if parts["reasoning"]:
        message["reasoning_content"] = "".join(parts["reasoning"])
    return message


def chat_completion(rid: str, created: int, model: str, message: dict, seq: Sequence,
                    logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": seq.finish_reason}],
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
