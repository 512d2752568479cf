"""Reading and validating data files in upstream MiniMind's record shapes.

Contract:
- Files are read by `data/reading.py` (JSONL, .jsonl.gz, Parquet; streaming, records bounded by
  `MAX_RECORD_BYTES`); a record over the limit is a bad record ("record is N MB, over the limit").
- Record shapes, one object per line (or per Parquet row):
    pretrain  {"text": str}
    sft       {"conversations": [message, ...], "tools"?: list | JSON str}
    dpo       {"chosen": [message, ...], "rejected": [message, ...]}
    rl        {"conversations": [...]}  (a final assistant turn is the reference answer, dropped
              from the prompt) or {"prompt": str, "answer"?: str}; either may add "gt": [expected, ...]
  A message is {"role": system|user|assistant|tool, "content": str, "reasoning_content"?: str,
  "tool_calls"?: list | JSON str}; a system message may carry "tools".
- `normalize_record(kind, record)` checks one record and returns its normalized form (below), or
  raises `RecordError` saying what is wrong. `iter_examples` attaches `file:line: ` to that message
  and raises it as a `UserError`, or with `skip_bad=True` skips and counts the record in
  `ReadStats`. Blank lines are not records and are passed over; nothing else is ever dropped.
  Beyond the shapes, a record is bad when it holds text no encoder can take (a lone UTF-16
  surrogate written as a `\\uD800` escape), a value JSON cannot hold where we store or render
  JSON (a Parquet timestamp in `gt`, `answer`, `tools`, `tool_calls`; other columns are not
  read), or a tool call whose `function` is not an object with a string `name`.
- Normalized forms: pretrain -> str; sft -> {"messages", "tools"}; dpo -> {"chosen", "rejected",
  "tools"}; rl -> {"messages", "answer", "gt", "tools"}. Messages keep only the known keys, and
  `None` optional fields (Parquet fills missing struct fields with null) are removed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..chat import ROLES
from ..errors import UserError
from . import reading
from .reading import Oversized, check_files, iter_raw

KINDS = ("pretrain", "sft", "dpo", "rl")
# A JSON \u escape of a UTF-16 surrogate; json.loads pairs valid ones, a lone one stays in the str.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class RecordError(ValueError):
    """One record is malformed; the reader prefixes the message with `file:line: `."""


@dataclass
class ReadStats:
    """What a pass over the input saw: good records, skipped bad ones, and the first reasons."""

    records: int = 0
    skipped: int = 0
    examples: list[str] = field(default_factory=list)  # first few "file:line: why" of skipped records

    def skip(self, where: str, why: str, keep: int = 5) -> None:
        self.skipped += 1
        if len(self.examples) < keep:
            self.examples.append(f"{where}: {why}")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UserError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


_JSONL_HINT = "; data files are JSON Lines: one complete JSON object per line"


def _too_big(size: int) -> RecordError:
    def mb(n: int) -> str:
        return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"

    return RecordError(f"record is {mb(size)}, over the limit of {mb(reading.MAX_RECORD_BYTES)} per record "
                       f"(minimind.data.reading.MAX_RECORD_BYTES); split it into smaller documents")


def parse_payload(payload: bytes | str | dict | Oversized) -> dict:
    """A JSON object from a raw line (or the row dict itself); RecordError when it is not one."""
    if isinstance(payload, Oversized):
        raise _too_big(payload.size)
    if isinstance(payload, dict):
        _check_row(payload)
        return payload
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordError(f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        rec = json.loads(payload)
    except json.JSONDecodeError as err:
        hint = _JSONL_HINT if payload.strip() in ("{", "[") else ""  # a pretty-printed JSON file
        raise RecordError(f"bad JSON: {err.msg} (column {err.colno}){hint}") from None
    except RecursionError:
        raise RecordError("bad JSON: nested too deeply") from None
    except ValueError as err:  # e.g. an integer literal over Python's 4300-digit limit
        raise RecordError(f"bad JSON: {err}") from None
    if not isinstance(rec, dict):
        hint = _JSONL_HINT if isinstance(rec, list) else ""
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}{hint}")
    if _SURROGATE_ESCAPE.search(raw):  # cheap test first: a surrogate can only come from an escape
        _check_strings(rec, "")
    return rec


def _check_strings(value: Any, at: str) -> None:
    """RecordError naming the first string (key or value) under `value` that UTF-8 cannot encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            bad = value[err.start]
            raise RecordError(f"{at or 'record'} holds a lone surrogate \\u{ord(bad):04x} (half of a UTF-16 "
                              f"pair, from a broken \\u escape): it is not text and cannot be encoded") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, at)
            _check_strings(v, f"{at}.{k}" if at else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, f"{at}[{i}]")


def _check_row(rec: dict) -> None:
    """A Parquet row is over the size limit when its strings (and bytes) add up to more."""
    size = 0
    stack: list[Any] = list(rec.values())
    while stack:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            size += len(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    if size > reading.MAX_RECORD_BYTES:  # read through the module: tests lower the limit
        raise _too_big(size)


# ----------------------------------------------------------------------------------------------
# Validation


def _json_value(value: Any, what: str) -> Any:
    """`value` if JSON can hold it (a Parquet row may carry timestamps, bytes, ...)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise RecordError(f"{what} holds a value JSON cannot hold ({err}); store it as a string") from None
    return value


def _json_field(value: Any, what: str) -> Any:
    """tool_calls / tools may be a list (or dict) or a JSON string of one; check the string parses."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as err:
            raise RecordError(f"{what} is a string but not valid JSON ({err.msg})") from None
    elif not isinstance(value, (list, dict)):
        raise RecordError(f"{what} must be a list or a JSON string, got {type(value).__name__}")
    return _json_value(value, what)


def normalize_messages(msgs: Any, where: str = "conversations") -> list[dict]:
    """Check a conversation and return clean message dicts (known keys only, no None fields)."""
    if not isinstance(msgs, list):
        raise RecordError(f"'{where}' must be a list of messages, got {type(msgs).__name__}")
    if not msgs:
        raise RecordError(f"'{where}' is an empty conversation")
    out = []
    for i, m in enumerate(msgs):
        at = f"{where}[{i}]"
        if not isinstance(m, dict):
            raise RecordError(f"{at} must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role is None:
            raise RecordError(f"{at} has no 'role'")
        if role not in ROLES:
            raise RecordError(f"{at} has role {role!r}; expected one of {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise RecordError(f"{at} is a system message but not the first message")
        msg: dict = {"role": role}
        content = m.get("content")
        has_calls = m.get("tool_calls") not in (None, "", [])
        if content is None and not (role == "assistant" and has_calls):
            raise RecordError(f"{at} ({role}) has no 'content'")
        if content is not None and not isinstance(content, str):
            raise RecordError(f"{at} ({role}) 'content' must be a string, got {type(content).__name__}")
        msg["content"] = content or ""
        rc = m.get("reasoning_content")
        if rc not in (None, ""):
            if role != "assistant":
                raise RecordError(f"{at} ({role}) has 'reasoning_content'; only assistant messages may")
            if not isinstance(rc, str):
                raise RecordError(f"{at} 'reasoning_content' must be a string")
            msg["reasoning_content"] = rc
        if has_calls:
            if role != "assistant":
                raise RecordError(f"{at} ({role}) has 'tool_calls'; only assistant messages may")
            msg["tool_calls"] = _json_field(m["tool_calls"], f"{at} 'tool_calls'")
            _check_tool_calls(msg["tool_calls"], f"{at} 'tool_calls'")
        if m.get("tools") not in (None, "", []):
            if role != "system":
                raise RecordError(f"{at} ({role}) has 'tools'; only the system message may")
            msg["tools"] = _json_field(m["tools"], f"{at} 'tools'")
        out.append(msg)
    return out


def _check_tool_calls(value: Any, what: str) -> None:
    """Each call is {"name", "arguments"} or OpenAI's {"type", "function": {"name", "arguments"}}."""
    calls = json.loads(value) if isinstance(value, str) else value
    calls = [calls] if isinstance(calls, dict) else calls  # a single call written as an object
    if not isinstance(calls, list):
        raise RecordError(f"{what} must be a list of calls, got {type(calls).__name__}")
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise RecordError(f"{what}[{i}] must be an object, got {type(call).__name__}")
        fn = call.get("function")
        if fn and not isinstance(fn, dict):
            raise RecordError(f"{what}[{i}] 'function' must be an object with 'name' and 'arguments', "
                              f"got {type(fn).__name__}")
        if not isinstance((fn or call).get("name"), str):
            raise RecordError(f"{what}[{i}] has no function 'name' string")


def _record_tools(rec: dict) -> Any:
    tools = rec.get("tools")
    return None if tools in (None, "", []) else _json_field(tools, "'tools'")


def _require(rec: dict, key: str) -> Any:
    if key not in rec or rec[key] is None:
        raise RecordError(f"missing key '{key}' (keys present: {', '.join(sorted(rec)) or 'none'})")
    return rec[key]


def _has_assistant(msgs: list[dict]) -> bool:
    return any(m["role"] == "assistant" for m in msgs)


def normalize_record(kind: str, rec: dict) -> Any:
    """Validate one parsed record of `kind`; return its normalized form (see module docstring)."""
    if kind == "pretrain":
        text = _require(rec, "text")
        if not isinstance(text, str):
            raise RecordError(f"'text' must be a string, got {type(text).__name__}")
        if not text.strip():
            raise RecordError("'text' is empty")
        return text
    if kind == "sft":
        msgs = normalize_messages(_require(rec, "conversations"))
        if not _has_assistant(msgs):
            raise RecordError("conversation has no assistant message (nothing to learn from)")
        return {"messages": msgs, "tools": _record_tools(rec)}
    if kind == "dpo":
        out = {"tools": _record_tools(rec)}
        for side in ("chosen", "rejected"):
            msgs = normalize_messages(_require(rec, side), side)
            if msgs[-1]["role"] != "assistant":
                raise RecordError(f"'{side}' must end with an assistant message, ends with {msgs[-1]['role']!r}")
            out[side] = msgs
        return out
    if kind == "rl":
        gt = rec.get("gt")
        if gt is not None and not isinstance(gt, list):
            raise RecordError(f"'gt' must be a list of expected answers, got {type(gt).__name__}")
        gt = _json_value(gt, "'gt'")
        answer = _json_value(rec.get("answer"), "'answer'")
        if "conversations" in rec and rec["conversations"] is not None:
            msgs = normalize_messages(rec["conversations"])
            if msgs[-1]["role"] == "assistant":
                # upstream RLAIF files carry a reference reply as the last turn: it is the
                # answer, and the policy must generate its own, so it leaves the prompt.
                last = msgs.pop()
                answer = answer if answer is not None else last["content"]
            if not msgs or msgs[-1]["role"] not in ("user", "tool"):
                raise RecordError("RL prompt must end with a user (or tool) message")
        elif "prompt" in rec and rec["prompt"] is not None:
            prompt = rec["prompt"]
            if not isinstance(prompt, str) or not prompt.strip():
                raise RecordError("'prompt' must be a non-empty string")
            msgs = [{"role": "user", "content": prompt}]
        else:
            raise RecordError("missing key 'conversations' or 'prompt'")
        if answer is not None and not isinstance(answer, str):
            answer = json.dumps(answer, ensure_ascii=False) if not isinstance(answer, (int, float)) else str(answer)
        if answer is None and gt:
            answer = str(gt[0])
        return {"messages": msgs, "answer": answer, "gt": gt, "tools": _record_tools(rec)}
    raise UserError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")


def check_payload(kind: str, payload: bytes | str | dict) -> Any:
    """parse_payload + normalize_record: one raw line or row to its normalized form."""
    return normalize_record(kind, parse_payload(payload))


def iter_examples(kind: str, paths: list[str | Path], skip_bad: bool = False,
                  stats: ReadStats | None = None) -> Iterator[Any]:
    """Stream normalized examples from several files in order (single process).

    A bad record raises `UserError("file:line: why")`, or is counted in `stats` with skip_bad.
    """
    check_kind(kind)
    stats = stats if stats is not None else ReadStats()
    for path in check_files(paths):
        for lineno, payload in iter_raw(path):
            try:
                ex = check_payload(kind, payload)
            except RecordError as err:
                if not skip_bad:
                    raise UserError(f"{path}:{lineno}: {err}") from None
                stats.skip(f"{path}:{lineno}", str(err))
                continue
            stats.records += 1
            yield ex
