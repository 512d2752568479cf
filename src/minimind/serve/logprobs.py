"""Token log-probabilities in OpenAI's two response shapes, from the engine's per-token events.

Contract:
- `TokenBytes(tokenizer)`: `tb(id)` is the exact bytes a token stands for (byte-level BPE
  tokens can hold part of a UTF-8 character, so their text alone is lossy); `tb.text(id)` is
  those bytes as text, or, when they are not whole UTF-8 characters, OpenAI's spelling
  "bytes:\\xe4\\xbd" (so distinct tokens never share a name).
- `reported(ev)`: whether an event's token is reported. Every generated token is, reasoning
  included, except the stop token that ended the reply (OpenAI never shows <|im_end|>).
- Chat (`logprobs: true`, `top_logprobs: k`): `chat_logprobs(tb, events)` ->
  {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
  "refusal": None}.
- Legacy completions (`logprobs: k`): `completion_logprobs(tb, events, offset)` ->
  {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}] (None when k is 0),
  "text_offset"}; offsets count characters of the token texts from `offset`.
The numbers are the model's own distribution (see `minimind.infer.sampling.token_logprobs`).
"""

from __future__ import annotations

from ..infer import Event


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: each of 256 printable characters -> its byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenBytes:
    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.decoder = _byte_decoder()

    def __call__(self, token_id: int) -> bytes:
        piece = self.tok.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self.tok.added_ids or any(c not in self.decoder for c in piece):
            return piece.encode()  # special tokens (and non-byte-level vocabularies) are plain text
        return bytes(self.decoder[c] for c in piece)

    def text(self, token_id: int) -> str:
        raw = self(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def reported(ev: Event) -> bool:
    if ev.token_id is None or ev.logprob is None:
        return False
    return not (ev.finished and ev.seq.finish_reason == "stop" and ev.token_id in ev.seq.stop_ids)


def chat_entries(tb: TokenBytes, events: list[Event]) -> list[dict]:
    def one(token_id: int, logprob: float) -> dict:
        return {"token": tb.text(token_id), "logprob": logprob, "bytes": list(tb(token_id))}

    return [{**one(ev.token_id, ev.logprob), "top_logprobs": [one(i, lp) for i, lp in ev.top_logprobs or []]}
            for ev in events if reported(ev)]


def chat_logprobs(tb: TokenBytes, events: list[Event]) -> dict:
    return {"content": chat_entries(tb, events), "refusal": None}


def completion_logprobs(tb: TokenBytes, events: list[Event], offset: int = 0) -> dict:
    kept = [ev for ev in events if reported(ev)]
    tokens = [tb.text(ev.token_id) for ev in kept]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    top = [{tb.text(i): lp for i, lp in ev.top_logprobs} for ev in kept]
    with_top = bool(kept) and bool(kept[0].seq.params.logprobs)
    return {"tokens": tokens, "token_logprobs": [ev.logprob for ev in kept],
            "top_logprobs": top if with_top else None, "text_offset": offsets}
