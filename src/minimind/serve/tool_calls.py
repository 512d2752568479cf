"""OpenAI tool calls from generated text: streaming extraction, deltas, and tool_choice prefills.

Contract:
- `ToolCallStream(names, prefix)` reads the answer text of a reply piece by piece (`push`, then
  `flush` at the end) and yields ("content", text) and ("tool_call", call) items, where a call is
  {"id": "call_<random>", "type": "function", "function": {"name", "arguments": JSON string}}.
  A `<tool_call>...</tool_call>` block is held back until it closes, then parsed with
  `chat.parse_call`; it becomes a call when its JSON parses to a name and an object of
  arguments and the name is one of `names` (the request's tools). Otherwise the whole block,
  markup included, is content: a malformed call is text, never an error (as OpenAI-compatible
  servers report it). Text that could be the start of `<tool_call>` is held back, so markup
  never leaks into content; the whitespace that separates the answer from calls, and leading
  and trailing whitespace, is dropped (the renderer strips it too); text before and after a
  call is joined by one newline. An unclosed block at the end
  (the token budget ran out) is flushed as content.
- `call_deltas(index, call)` is OpenAI's streamed delta sequence for one call: a first delta with
  index, id, type and function.name (arguments ""), then argument fragments; `chat_deltas(items,
  calls_sent)` the deltas of a batch of reader items.
- `forced_call(req)` implements tool_choice "required" and {"type": "function", "function":
  {"name": N}}: the assistant turn is prefilled (thinking off, an empty think block, as trained)
  with the opening of a call, `<tool_call>\\n{"name": "` (the model picks the function) or up
  to `{"name": "N", "arguments":` (the model writes N's arguments). The model must then write
  a call; whether it is well formed is still checked as above. Returns (prefill pieces, their
  text) or None for "auto"/"none"/absent.
- `ReplyReader(thinking, names, prefill)` puts both together for a route: generated text ->
  ("reasoning" | "content", text) and ("tool_call", call) items; without `names` (no tools, or
  tool_choice "none") nothing is parsed and markup is content, as before tools existed.
- `finish_reason(seq_reason, calls)` is "tool_calls" when a reply that stopped by itself made
  calls, else the sequence's own reason.
"""

from __future__ import annotations

import json
import uuid

from ..chat import Piece, call_prefix, parse_call
from ..infer import ReasoningSplitter
from ..tokenizer import TOOL_CALL_END, TOOL_CALL_START
from .errors import APIError

ARGUMENT_FRAGMENT_CHARS = 16  # streamed arguments arrive in pieces, as from OpenAI


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _partial_start(text: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `<tool_call>`."""
    for n in range(min(len(TOOL_CALL_START) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_START[:n]):
            return n
    return 0


class ToolCallStream:
    def __init__(self, names: set[str], prefix: str = "") -> None:
        self.names = names
        self.buf = ""
        self.inside = False  # between <tool_call> and </tool_call>
        self.ws = ""  # whitespace held back: it may only separate the answer from a call
        self.trim_next = True  # at the start, and right after a call: drop leading whitespace
        self.emitted = False  # some content went out: text after a call is set off by a newline
        self.calls = 0
        self.push(prefix)  # a prefill opens a call: nothing comes out yet

    def push(self, text: str) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        self.buf += text
        while True:
            if not self.inside:
                i = self.buf.find(TOOL_CALL_START)
                if i < 0:
                    keep = _partial_start(self.buf)
                    self._text(out, self.buf[:len(self.buf) - keep])
                    self.buf = self.buf[len(self.buf) - keep:]
                    return out
                self._text(out, self.buf[:i])
                self.buf, self.inside = self.buf[i + len(TOOL_CALL_START):], True
            else:
                j = self.buf.find(TOOL_CALL_END)
                if j < 0:
                    return out
                body, self.buf, self.inside = self.buf[:j], self.buf[j + len(TOOL_CALL_END):], False
                self._block(out, body)

    def flush(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        self._text(out, (TOOL_CALL_START if self.inside else "") + self.buf)
        self.buf, self.inside, self.ws = "", False, ""
        return out

    def _block(self, out: list, body: str) -> None:
        call = parse_call(body)
        if call is None or call[0] not in self.names:
            self._text(out, f"{TOOL_CALL_START}{body}{TOOL_CALL_END}")
            return
        self.ws, self.trim_next = "", True
        self.calls += 1
        out.append(("tool_call", {"id": new_call_id(), "type": "function", "function": {
            "name": call[0], "arguments": json.dumps(call[1], ensure_ascii=False)}}))

    def _text(self, out: list, text: str) -> None:
        if self.trim_next:
            text = text.lstrip()
            if not text:
                return
            text = "\n" + text if self.emitted else text
            self.trim_next = False
        full = self.ws + text
        body = full.rstrip()
        self.ws = full[len(body):]
        if body:
            self.emitted = True
            out.append(("content", body))


def call_deltas(index: int, call: dict) -> list[dict]:
    fn = call["function"]
    first = {"index": index, "id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": ""}}
    args = fn["arguments"]
    rest = [{"index": index, "function": {"arguments": args[i:i + ARGUMENT_FRAGMENT_CHARS]}}
            for i in range(0, len(args), ARGUMENT_FRAGMENT_CHARS)]
    return [{"tool_calls": [d]} for d in [first, *rest]]


def chat_deltas(items: list[tuple[str, object]], calls_sent: int) -> list[dict]:
    """Stream deltas of `ReplyReader` items; tool calls are numbered on from `calls_sent`."""
    out: list[dict] = []
    for kind, value in items:
        if kind == "tool_call":
            out += call_deltas(calls_sent, value)
            calls_sent += 1
        else:
            out.append({"reasoning_content" if kind == "reasoning" else "content": value})
    return out


def forced_call(req) -> tuple[list[Piece], str] | None:
    """The prefill for tool_choice "required" or a named function (400 if it names no offered tool)."""
    choice = req.tool_choice
    if choice is None or isinstance(choice, str) and choice in ("auto", "none"):
        return None
    names = req.tool_names()
    if not names:
        raise APIError(400, "tool_choice requires tools", param="tool_choice")
    name = None if choice == "required" else choice.function.name
    if name is not None and name not in names:
        raise APIError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
    pieces = call_prefix(name)
    return pieces, "".join(p.text for p in pieces)


def finish_reason(seq_reason: str | None, calls: int) -> str | None:
    return "tool_calls" if calls and seq_reason == "stop" else seq_reason


class ReplyReader:
    """Generated text -> reasoning, content and tool-call items, piece by piece."""

    def __init__(self, thinking: bool, names: set[str] | None, prefill: str = "") -> None:
        # A prefilled call follows an empty think block: no reasoning can come, nothing to split.
        self.splitter = None if prefill else ReasoningSplitter(open=thinking)
        self.calls = ToolCallStream(names, prefill) if names else None

    def push(self, text: str, finished: bool = False) -> list[tuple[str, object]]:
        if self.splitter is None:
            pieces = [("content", text)]
        else:
            pieces = self.splitter.push(text) + (self.splitter.flush() if finished else [])
        out: list[tuple[str, object]] = []
        for kind, piece in pieces:
            out += self.calls.push(piece) if kind == "content" and self.calls else [(kind, piece)]
        if finished and self.calls:
            out += self.calls.flush()
        return out

    def finish(self, seq_reason: str | None) -> str | None:
        return finish_reason(seq_reason, self.calls.calls if self.calls else 0)
