"""The two generation routes, POST /v1/chat/completions and POST /v1/completions.

Contract: `chat_completions(request)` and `completions(request)` are FastAPI endpoints; they
read the app's `Context` (app.py) from `request.app.state.ctx`. Each one: validates the body
(schemas.py), builds the prompt, submits one `Sequence` to the scheduler and answers with a
single JSON object or, with `stream: true`, server-sent events ending in `data: [DONE]`.
A client that disconnects, streaming or not, has its sequence cancelled (its row is freed at
the next decode step). A generation that fails in the worker is a logged 500, or an error
event when the stream has already started.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..chat import render_prompt
from ..errors import UserError
from ..infer import Event, InvalidParams, ReasoningSplitter, SamplingParams, Sequence
from . import responses as R
from .errors import APIError, error_body
from .logprobs import chat_entries, chat_logprobs, completion_logprobs
from .schemas import ChatRequest, CompletionRequest

if TYPE_CHECKING:  # app.py imports this module for its routes
    from .app import Context

# Below this temperature the logits divided by it can overflow float32 (inf -> NaN
# probabilities); the limit of sampling as temperature -> 0 is greedy decoding, so use that.
MIN_TEMPERATURE = 1e-4
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
GENERATION_FAILED = "generation failed; see the server's log"


def sampling_params(req: ChatRequest | CompletionRequest, prompt_len: int, context_len: int) -> SamplingParams:
    """A validated request -> SamplingParams (400 if the prompt leaves no room to generate)."""
    if prompt_len >= context_len:
        raise APIError(400, f"the prompt is {prompt_len} tokens but the model's context length is {context_len}",
                       param="messages" if isinstance(req, ChatRequest) else "prompt",
                       code="context_length_exceeded")
    room = context_len - prompt_len
    budget = req.token_budget
    temperature = 1.0 if req.temperature is None else req.temperature
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            max_new_tokens=min(budget, room) if budget is not None else room,
            temperature=temperature if temperature >= MIN_TEMPERATURE else 0.0,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            stop=stop, seed=req.seed, logprobs=req.logprob_count,
        ).validate()
    except InvalidParams as err:
        raise APIError(400, str(err)) from None


async def drain(seq: Sequence, events: asyncio.Queue) -> AsyncIterator[Event]:
    """Yield events until the finished one; cancel the sequence if the consumer goes away."""
    try:
        while True:
            ev: Event = await events.get()
            yield ev
            if ev.finished:
                return
    finally:
        if not seq.finished:
            seq.cancelled = True


async def cancel_on_disconnect(request: Request, seq: Sequence) -> None:
    """Wait for the client to go away (the body is already read), then cancel its sequence."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            seq.cancelled = True
            return


async def collect(request: Request, seq: Sequence, events: asyncio.Queue) -> list[Event]:
    """All events of a non-streaming request; a client that hangs up cancels the generation."""
    watcher = asyncio.create_task(cancel_on_disconnect(request, seq))
    try:
        out = [ev async for ev in drain(seq, events)]
    finally:
        watcher.cancel()
    if seq.finish_reason == "error":
        raise APIError(500, GENERATION_FAILED, type="server_error")
    return out


def stream_error() -> str:
    return R.sse(error_body(GENERATION_FAILED, type="server_error"))


def event_stream(chunks: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


# -- chat -----------------------------------------------------------------------------------------


async def chat_completions(request: Request):
    ctx: Context = request.app.state.ctx
    req: ChatRequest = await ctx.read_body(request, ChatRequest)
    try:
        prompt = render_prompt(ctx.tokenizer, req.messages_for_renderer(), tools=req.tools_for_renderer(),
                               thinking=req.thinking)
    except UserError as err:
        raise APIError(400, str(err), param="messages") from None
    seq, events = ctx.start(prompt, sampling_params(req, len(prompt), ctx.engine.context_len), req.model)
    meta = (f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), seq.adapter or ctx.model_name)
    splitter = ReasoningSplitter(open=req.thinking)
    if req.stream:
        return event_stream(chat_stream(ctx, req, seq, events, splitter, meta))
    done = await collect(request, seq, events)
    parts: dict[str, list[str]] = {"reasoning": [], "content": []}
    for ev in done:
        for kind, text in splitter.push(ev.text) + (splitter.flush() if ev.finished else []):
            parts[kind].append(text)
    logprobs = chat_logprobs(ctx.token_bytes, done) if req.logprobs else None
    return R.chat_completion(*meta, R.chat_message(parts), seq, logprobs)


async def chat_stream(ctx: Context, req: ChatRequest, seq: Sequence, events: asyncio.Queue, splitter: ReasoningSplitter,
                      meta: tuple[str, int, str]) -> AsyncIterator[str]:
    yield R.sse(R.chat_chunk(*meta, {"role": "assistant", "content": ""}))
    pending: list[Event] = []  # tokens not yet reported (their text may still be held back)

    def logprobs() -> dict | None:
        if not req.logprobs:
            return None
        out = {"content": chat_entries(ctx.token_bytes, pending), "refusal": None}
        pending.clear()
        return out

    async for ev in drain(seq, events):
        pending.append(ev)
        for kind, text in splitter.push(ev.text) + (splitter.flush() if ev.finished else []):
            key = "reasoning_content" if kind == "reasoning" else "content"
            yield R.sse(R.chat_chunk(*meta, {key: text}, logprobs=logprobs()))
    if seq.finish_reason == "error":
        yield stream_error()
        return
    yield R.sse(R.chat_chunk(*meta, {}, seq.finish_reason, logprobs=logprobs()))
    if req.stream_options and req.stream_options.include_usage:
        yield R.sse(R.chat_chunk(*meta, None, usage_of=seq))
    yield R.SSE_DONE


# -- legacy completions ---------------------------------------------------------------------------


async def completions(request: Request):
    ctx: Context = request.app.state.ctx
    req: CompletionRequest = await ctx.read_body(request, CompletionRequest)
    prompt = req.prompt_text_or_ids()
    ids = ctx.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    if not ids:
        raise APIError(400, "the prompt encodes to no tokens", param="prompt")
    seq, events = ctx.start(ids, sampling_params(req, len(ids), ctx.engine.context_len), req.model)
    meta = (f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), seq.adapter or ctx.model_name)
    if req.stream:
        return event_stream(completion_stream(ctx, req, seq, events, meta))
    done = await collect(request, seq, events)
    logprobs = completion_logprobs(ctx.token_bytes, done) if req.logprob_count is not None else None
    return R.completion(*meta, seq.text, seq.finish_reason, seq, logprobs)


async def completion_stream(ctx: Context, req: CompletionRequest, seq: Sequence, events: asyncio.Queue,
                            meta: tuple[str, int, str]) -> AsyncIterator[str]:
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
            yield R.sse(R.completion(*meta, ev.text, seq.finish_reason if ev.finished else None, logprobs=logprobs))
    if req.stream_options and req.stream_options.include_usage:
        yield R.sse({**R.completion(*meta, "", None, seq), "choices": []})
    yield R.SSE_DONE
