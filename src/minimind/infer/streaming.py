"""Turning a stream of token ids into a stream of text pieces.

Contract:
- `IncrementalDecoder(decode)` : `push(token_id) -> str` returns the text that token completed
  (possibly ""), `flush() -> str` the rest. Concatenating every piece equals decoding all ids
  at once, and no piece ever ends inside a UTF-8 character: a byte-level BPE can split one
  Chinese character (3 bytes) over two tokens, and the first token alone decodes to U+FFFD.
- `StopMatcher(stops)` : `push(text) -> (safe_text, stopped)` holds back any tail that could
  be the start of a stop string and cuts the text where one appears.
- `ReasoningSplitter(open)` : `push(text) -> [(kind, text)]` with kind "reasoning" or
  "content", splitting "<think>...</think>" from the answer while streaming.
"""

from __future__ import annotations

from typing import Callable

from ..tokenizer import THINK_END, THINK_START

REPLACEMENT = "\ufffd"  # what a byte-level decoder prints for an incomplete UTF-8 sequence


class IncrementalDecoder:
    """Emit text only once it is complete.

    We keep two offsets into the ids: text up to `read` has been emitted; decoding restarts
    from `prefix` (a few tokens back) so that a decoder whose output depends on the previous
    token (merging spaces, say) still sees it. While the decoded tail ends in U+FFFD, the last
    character is incomplete and we wait for more tokens.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        if len(text) > len(done) and not text.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        """Whatever complete text is left when the generation ends.

        A generation cut by its token budget can stop halfway through a character's bytes; those
        would decode to U+FFFD, so the incomplete tail is dropped rather than shown broken."""
        done = self.decode(self.ids[self.prefix:self.read])
        text = self.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):].rstrip(REPLACEMENT)


def _partial_suffix(text: str, needles: list[str]) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some needle."""
    best = 0
    for needle in needles:
        for n in range(min(len(needle) - 1, len(text)), best, -1):
            if text.endswith(needle[:n]):
                best = n
                break
    return best


class StopMatcher:
    """Cut generated text at the first stop string, never emitting a stop string's beginning."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self.held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return buf[:min(hits)], True
        keep = _partial_suffix(buf, self.stops)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


class ReasoningSplitter:
    """Split "<think>\\nR\\n</think>\\n\\nA" into reasoning R and answer A, piece by piece.

    `open=True` when the prompt already ended with "<think>\\n" (thinking on), so the model's
    first words are reasoning. Newlines around the tags are layout, not content: leading ones
    are dropped and trailing ones held back until something else follows them.
    """

    OPEN, CLOSE = THINK_START, THINK_END

    def __init__(self, open: bool) -> None:
        self.kind = "reasoning" if open else "content"
        self.at_start = True  # at the start of a section: drop leading newlines
        self.maybe_open = not open  # a model may still open a think block itself, first thing
        self.held = ""

    def push(self, text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        buf = self.held + text
        while True:
            if self.maybe_open:
                stripped = buf.lstrip("\n")
                if stripped.startswith(self.OPEN):
                    buf, self.kind, self.maybe_open = stripped[len(self.OPEN):], "reasoning", False
                    continue
                if self.OPEN.startswith(stripped):  # could still become "<think>"
                    self.held = buf
                    return out
                self.maybe_open = False
            if self.kind == "reasoning" and self.CLOSE in buf:
                before, buf = buf.split(self.CLOSE, 1)
                self._emit(out, before.rstrip("\n"))
                self.kind, self.at_start = "content", True
                continue
            break
        tags = [self.CLOSE] if self.kind == "reasoning" else []
        keep = _partial_suffix(buf, tags)
        body, tail = buf[:len(buf) - keep], buf[len(buf) - keep:]
        trimmed = body.rstrip("\n")  # hold trailing newlines: they may precede </think>
        self.held = body[len(trimmed):] + tail
        self._emit(out, trimmed)
        return out

    def _emit(self, out: list[tuple[str, str]], text: str) -> None:
        if self.at_start:
            text = text.lstrip("\n")
        if text:
            self.at_start = False
            out.append((self.kind, text))

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        held, self.held = self.held, ""
        # An unterminated think block (the answer never came) still loses its trailing newlines.
        self._emit(out, held.rstrip("\n") if self.kind == "reasoning" else held)
        return out
