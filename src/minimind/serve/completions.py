"""The two generation routes, POST /v1/chat/completions and POST /v1/completions.

Contract: `chat_completions(request)` and `completions(request)` are FastAPI endpoints; they
read the app's `Context` (context.py) from `request.app.state.ctx`. Each one: validates the body
(schemas.py), builds the prompt, submits one `Sequence` through the engine bridge
(generation.py) and answers with a single JSON object or, with `stream: true`, server-sent
events ending in `data: [DONE]` (shapes from responses.py).
Chat replies to requests with tools carry OpenAI `tool_calls` (tool_calls.py); a request with
`execute_tools` goes to the server's own agent loop (agent_route.py).
A client that disconnects, streaming or not, has its sequence cancelled (its row is freed at
the next decode step). A generation that fails in the worker is a logged 500, or an error
event when the stream has already started.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fastapi import Request

from ..chat import render_prompt
from ..errors import UserError
from ..infer import Event, Sequence
from . import responses as R
from .agent_route import agent_chat
from .context import Context
from .errors import APIError
from .generation import collect, drain, event_stream, sampling_params, start, stream_error
from .logprobs import chat_logprobs, completion_logprobs
from .schemas import ChatRequest, CompletionRequest, read_request
from .tool_calls import ReplyReader, chat_deltas, forced_call

# -- chat -----------------------------------------------------------------------------------------


async def chat_completions(request: Request):
    ctx: Context = request.app.state.ctx
    req: ChatRequest = await read_request(request, ChatRequest, ctx.max_body_bytes, ctx.served)
    if req.execute_tools:
        return await agent_chat(request, ctx, req)
    forced = forced_call(req)
    thinking = req.thinking and forced is None  # a forced call follows an empty think block
    try:
        prompt = render_prompt(ctx.tokenizer, req.messages_for_renderer(), tools=req.tools_for_renderer(),
                               thinking=thinking, prefill=forced[0] if forced else ())
    except UserError as err:
        raise APIError(400, str(err), param="messages") from None
    seq, events = start(ctx, prompt, sampling_params(req, len(prompt), ctx.engine.max_seq_len), req.model)
    meta = R.reply_meta("chatcmpl", seq.adapter or ctx.model_name)
    reader = ReplyReader(thinking, req.tool_names(), forced[1] if forced else "")
    if req.stream:
        return event_stream(chat_stream(ctx, req, seq, events, reader, meta))
    done = await collect(request, seq, events)
    items = [item for ev in done for item in reader.push(ev.text, ev.finished)]
    logprobs = chat_logprobs(ctx.token_bytes, done) if req.logprobs else None
    message = R.chat_message(items, null_empty=bool(req.tool_names()))
    return R.chat_completion(meta, message, reader.finish(seq.finish_reason), R.usage(seq), logprobs)


async def chat_stream(ctx: Context, req: ChatRequest, seq: Sequence, events: asyncio.Queue, reader: ReplyReader,
                      meta: R.Meta) -> AsyncIterator[str]:
    yield R.sse(R.chat_chunk(meta, R.ROLE_DELTA))
    pending: list[Event] = []  # tokens not yet reported (their text may still be held back)
    calls = 0

    def logprobs() -> dict | None:
        if not req.logprobs:
            return None
        out = chat_logprobs(ctx.token_bytes, pending)
        pending.clear()
        return out

    async for ev in drain(seq, events):
        pending.append(ev)
        items = reader.push(ev.text, ev.finished)
        for delta in chat_deltas(items, calls):
            yield R.sse(R.chat_chunk(meta, delta, logprobs=logprobs()))
        calls += sum(kind == "tool_call" for kind, _ in items)
    if seq.finish_reason == "error":
        yield stream_error()
        return
    yield R.sse(R.chat_chunk(meta, {}, reader.finish(seq.finish_reason), logprobs=logprobs()))
    if req.stream_options and req.stream_options.include_usage:
        yield R.sse(R.chat_usage_chunk(meta, R.usage(seq)))
    yield R.SSE_DONE


# -- legacy completions ---------------------------------------------------------------------------


async def completions(request: Request):
    ctx: Context = request.app.state.ctx
    req: CompletionRequest = await read_request(request, CompletionRequest, ctx.max_body_bytes, ctx.served)
    prompt = req.prompt_text_or_ids()
    ids = ctx.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    if not ids:
        raise APIError(400, "the prompt encodes to no tokens", param="prompt")
    seq, events = start(ctx, ids, sampling_params(req, len(ids), ctx.engine.max_seq_len), req.model)
    meta = R.reply_meta("cmpl", seq.adapter or ctx.model_name)
    if req.stream:
        return event_stream(completion_stream(ctx, req, seq, events, meta))
    done = await collect(request, seq, events)
    logprobs = completion_logprobs(ctx.token_bytes, done) if req.logprob_count is not None else None
    return R.completion(meta, seq.text, seq.finish_reason, R.usage(seq), logprobs)


async def completion_stream(ctx: Context, req: CompletionRequest, seq: Sequence, events: asyncio.Queue,
                            meta: R.Meta) -> AsyncIterator[str]:
    pending: list[Event] = []
    offset = 0  # text_offset of the next reported token
    async for ev in drain(seq, events):
        if seq.finish_reason == "error":
            yield stream_error()
            return
        pending.append(ev)
        if ev.text or ev.finished:
            logprobs = None
            if req.logprob_count is not None:
                logprobs = completion_logprobs(ctx.token_bytes, pending, offset)
                offset += sum(len(t) for t in logprobs["tokens"])
            pending.clear()
            yield R.sse(R.completion(meta, ev.text, seq.finish_reason if ev.finished else None, logprobs=logprobs))
    if req.stream_options and req.stream_options.include_usage:
        yield R.sse(R.completion_usage_chunk(meta, R.usage(seq)))
    yield R.SSE_DONE
