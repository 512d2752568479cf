"""The engine bridge: running one generation for a route (parameters, submission, events, SSE).

Routes never touch the engine or the scheduler directly; they go through here.
Contract: `sampling_params(req, prompt_len, max_seq_len)` turns a validated request into
`SamplingParams` (400 when the prompt leaves no room); `start(ctx, prompt_ids, params, model)`
submits one `Sequence` to the scheduler (generated with the LoRA adapter of that name, when
`model` names one) and returns it with the queue its events arrive on, in the caller's event
loop (400 for parameters the engine refuses); `drain` yields a sequence's events until
the last one; `collect` gathers them for a non-streaming reply, cancelling the sequence if the
client hangs up, and turns a failed generation into a logged 500; `event_stream` wraps SSE
strings in a response; `stream_error()` is the error event of a stream that already started.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..infer import Event, InvalidParams, SamplingParams, Sequence
from . import responses as R
from .context import Context
from .errors import APIError, error_body
from .schemas import ChatRequest, CompletionRequest

# Below this temperature the logits divided by it can overflow float32 (inf -> NaN
# probabilities); the limit of sampling as temperature -> 0 is greedy decoding, so use that.
MIN_TEMPERATURE = 1e-4
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
GENERATION_FAILED = "generation failed; see the server's log"


def sampling_params(req: ChatRequest | CompletionRequest, prompt_len: int, max_seq_len: int) -> SamplingParams:
    """A validated request -> SamplingParams (400 if the prompt leaves no room to generate)."""
    if prompt_len >= max_seq_len:
        raise APIError(400, f"the prompt is {prompt_len} tokens but the model's context length is {max_seq_len}",
                       param="messages" if isinstance(req, ChatRequest) else "prompt",
                       code="context_length_exceeded")
    room = max_seq_len - prompt_len
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


def start(ctx: Context, prompt_ids: list[int], params: SamplingParams,
          model: str | None) -> tuple[Sequence, asyncio.Queue]:
    """Submit one generation; its events arrive on the returned queue (in this event loop)."""
    adapter = model if model in ctx.engine.adapter_names else None
    try:
        seq = ctx.engine.new_sequence(prompt_ids, params, adapter)
    except InvalidParams as err:
        raise APIError(400, str(err)) from None
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # The scheduler calls back from its worker thread: hand each event to this loop's thread.
    ctx.scheduler.submit(seq, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
    return seq, events


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
