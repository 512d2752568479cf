"""The server's own agent loop: chat requests flagged `"execute_tools": true` (the web page).

Contract:
- Only a server started with built-in tools (`create_app(..., tools=builtin_tools())`, i.e.
  `minimind serve --tools`) executes anything, and only for requests that ask with the extension
  field `execute_tools`; otherwise such a request is a 400. Requests without the flag get tool
  calls returned to the client, as OpenAI does (completions.py). The request's `tools` must all
  be the server's own (400 otherwise); with no `tools`, every built-in tool is offered.
  `tool_choice` must be "auto" or absent.
- Loop, at most MAX_AGENT_TURNS model replies: generate (thinking as the request says), read the
  reply with `ReplyReader`, append it to the conversation; if it made calls (finish "tool_calls"),
  run each through the `ToolRegistry` and append `tool` messages, then generate again.
- Streaming: the usual chat chunks for every turn (reasoning, content, tool-call deltas with
  indexes counting across turns), a chunk with the delta {"tool_result": {"role": "tool",
  "tool_call_id", "name", "content"}} after each executed call (its own key, so that a client
  joining `content` deltas never mixes tool output into the answer), then one final chunk with the last turn's finish reason,
  the usage chunk if asked (summed over turns) and [DONE]. Without streaming: a chat.completion
  whose message is the last reply, with the extension "tool_messages" listing the intermediate
  assistant and tool messages in order.
"""

from __future__ import annotations

from typing import AsyncIterator

from fastapi import Request

from ..chat import render_prompt
from ..errors import UserError
from ..infer import Sequence
from . import responses as R
from .context import Context
from .errors import APIError
from .generation import collect, drain, event_stream, sampling_params, start, stream_error
from .schemas import ChatRequest
from .tool_calls import ReplyReader, chat_deltas

MAX_AGENT_TURNS = 5


def _offered(ctx: Context, req: ChatRequest) -> list[dict]:
    if ctx.tools is None:
        raise APIError(400, "this server executes no tools (start it with `minimind serve --tools`)",
                       param="execute_tools")
    if req.tool_choice not in (None, "auto"):
        raise APIError(400, "execute_tools supports tool_choice 'auto' only", param="tool_choice")
    names = {t.function.name for t in req.tools} if req.tools else set(ctx.tools.names)
    unknown = sorted(names - set(ctx.tools.names))
    if unknown:
        raise APIError(400, f"execute_tools runs only the server's tools ({', '.join(ctx.tools.names)}); "
                            f"not {', '.join(unknown)}", param="tools")
    return [s for s in ctx.tools.specs() if s["function"]["name"] in names]


def _start_turn(ctx: Context, req: ChatRequest, messages: list[dict], tools: list[dict]):
    try:
        prompt = render_prompt(ctx.tokenizer, messages, tools=tools, thinking=req.thinking)
    except UserError as err:
        raise APIError(400, str(err), param="messages") from None
    return start(ctx, prompt, sampling_params(req, len(prompt), ctx.engine.max_seq_len), req.model)


def _record(ctx: Context, messages: list[dict], items: list, reader: ReplyReader, seq: Sequence) -> list[dict]:
    """Append a finished reply to the conversation; run its calls if it made any, return the tool messages."""
    msg = R.chat_message(items, null_empty=True)
    calls = msg.get("tool_calls", [])
    messages.append({**msg, "content": msg["content"] or ""})
    if reader.finish(seq.finish_reason) != "tool_calls":
        return []
    results = [R.tool_message(call["id"], call["function"]["name"],
                              ctx.tools.call(call["function"]["name"], call["function"]["arguments"]))
               for call in calls]
    messages.extend({"role": "tool", "content": r["content"]} for r in results)  # what the renderer reads
    return results


async def agent_chat(request: Request, ctx: Context, req: ChatRequest):
    tools = _offered(ctx, req)
    messages = req.messages_for_renderer()
    seq, events = _start_turn(ctx, req, messages, tools)  # a first prompt that does not fit: a plain 400
    meta = R.reply_meta("chatcmpl", seq.adapter or ctx.model_name)
    if req.stream:
        return event_stream(_agent_stream(ctx, req, messages, tools, seq, events, meta))
    seqs, transcript = [], []
    for turn in range(MAX_AGENT_TURNS):
        if turn:
            seq, events = _start_turn(ctx, req, messages, tools)
        seqs.append(seq)
        reader = ReplyReader(req.thinking, {t["function"]["name"] for t in tools})
        items = [it for ev in await collect(request, seq, events) for it in reader.push(ev.text, ev.finished)]
        message = R.chat_message(items, null_empty=True)
        results = _record(ctx, messages, items, reader, seq)
        if not results or turn == MAX_AGENT_TURNS - 1:  # the reply itself is the message, not history
            break
        transcript += [message, *results]
    return R.chat_completion(meta, R.agent_message(message, transcript), reader.finish(seq.finish_reason),
                             R.usage(*seqs))


async def _agent_stream(ctx: Context, req: ChatRequest, messages: list[dict], tools: list[dict], seq: Sequence,
                        events, meta: R.Meta) -> AsyncIterator[str]:
    yield R.sse(R.chat_chunk(meta, R.ROLE_DELTA))
    seqs, calls, finish = [], 0, None
    for turn in range(MAX_AGENT_TURNS):
        if turn:
            try:
                seq, events = _start_turn(ctx, req, messages, tools)
            except APIError as err:  # the conversation outgrew the context: say so and stop
                yield R.sse(err.body())
                return
        seqs.append(seq)
        reader, items = ReplyReader(req.thinking, {t["function"]["name"] for t in tools}), []
        async for ev in drain(seq, events):
            new = reader.push(ev.text, ev.finished)
            items += new
            for delta in chat_deltas(new, calls):
                yield R.sse(R.chat_chunk(meta, delta))
            calls += sum(kind == "tool_call" for kind, _ in new)
        if seq.finish_reason == "error":
            yield stream_error()
            return
        finish = reader.finish(seq.finish_reason)
        results = _record(ctx, messages, items, reader, seq)
        for result in results:
            yield R.sse(R.chat_chunk(meta, R.tool_result_delta(result)))
        if not results:
            break
    yield R.sse(R.chat_chunk(meta, {}, finish))
    if req.stream_options and req.stream_options.include_usage:
        yield R.sse(R.chat_usage_chunk(meta, R.usage(*seqs)))
    yield R.SSE_DONE
