"""ChatML rendering: a conversation -> token ids and a 0/1 loss mask, and generation prompts.

Contract (see docs/architecture.md). The format is Qwen3-style ChatML; each turn is
`<|im_start|>{role}\\n{content}<|im_end|>\\n`, with these conventions (one of each, chosen here and
mirrored exactly by CHAT_TEMPLATE, the Jinja template saved in tokenizer_config.json):

- System: `messages[0]` with role "system" opens the conversation. Tool definitions (the `tools`
  argument, else `messages[0]["tools"]`: a list or a JSON string) are appended to it as a "# Tools"
  section with one JSON object per line inside `<tools></tools>`; with tools but no system
  message, the section forms a system turn of its own.
- Assistant: *every* assistant turn carries a think block, `<think>\\n{reasoning}\\n</think>\\n\\n{answer}`,
  empty (`<think>\\n\\n</think>\\n\\n`) when there is no `reasoning_content`. So the generation prompt
  with thinking off (an empty think block) is exactly what training showed, and with thinking on
  (an open `<think>\\n`) it is a prefix of it. Reasoning written inline in `content` as
  `<think>...</think>` is split out. Reasoning and answer are stripped of surrounding whitespace.
  Tool calls follow the answer, one per `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`,
  separated from the answer and from each other by a newline.
- Tool results: role "tool" messages become `<tool_response>\\n{content}\\n</tool_response>`
  blocks; consecutive ones share a single *user* turn (the Qwen convention).
- Loss mask: 1 exactly on the assistant content (think block, answer, tool calls) and its closing
  `<|im_end|>`; 0 on `<|im_start|>assistant\\n`, on the "\\n" after `<|im_end|>`, and everywhere else.

Text is never a source of control tokens (docs/reliability.md). Each piece is either *template*
text, written here (role headers, `<think>` framing, the tools section), or *content* (any string
that came from a message: content, reasoning, tool names and arguments, tool definitions). Only
template text is cut at added tokens (`Tokenizer.split_special`), so only the renderer places
control ids; content goes through the plain path (`Tokenizer.encode`), where `<|im_end|>`,
`<think>`, `<tool_call>` written in a message are ordinary characters. Text runs between control
ids are encoded whole, exactly as the added-token matcher would cut the rendered string: for
messages without markers the ids equal `tok.encode(render_text(...), allow_special=True)` and
transformers' `apply_chat_template` (tests compare both). For content with markers the *string*
is still identical but the ids differ on purpose: transformers parses markers anywhere in the
rendered string, so its ids carry the forged turns; ours spell them as text.

Why the mask is exact: every boundary between a masked and an unmasked piece sits at a control
id (after `assistant\\n`, before `<think>`; right after `<|im_end|>`), and text runs are also cut
at mask changes, so no token straddles a boundary.

Parsing generated text is the inverse of `_assistant_body` and lives here too:
`parse_tool_calls(text)` reads the `<tool_call>` blocks after the last `</think>` (returns the
calls as (name, arguments) and whether the output was well formed: at least one block, every
block closed, valid JSON, a string name and an object of arguments); `parse_reply(text)` turns a
whole generated reply back into an assistant message {"role", "content", "reasoning_content",
"tool_calls"} (calls in OpenAI's shape, arguments as objects), or reports it malformed.

Jinja parity needs parsed lists: the template cannot parse JSON, so `tools` / `tool_calls`
stored as JSON strings (the upstream data format) or as a single object are accepted here but
must be turned into lists (`json.loads`, `[obj]`) before calling `apply_chat_template`.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from .errors import UserError
from .tokenizer import (BOS_TOKEN, EOS_TOKEN, THINK_END, THINK_START, TOOL_CALL_END, TOOL_CALL_START,
                        TOOL_RESPONSE_END, TOOL_RESPONSE_START, Tokenizer)

ROLES = ("system", "user", "assistant", "tool")  # also what data/formats.py accepts in records
EMPTY_THINK = f"{THINK_START}\n\n{THINK_END}\n\n"

TOOLS_INTRO = (
    "# Tools\n\nYou may call the functions below. Their signatures, one JSON object per line, "
    "are inside <tools></tools>:\n<tools>"
)
TOOLS_OUTRO = (
    "\n</tools>\n\nTo call a function, answer with a JSON object "
    '{"name": <function name>, "arguments": <arguments object>} inside <tool_call></tool_call> tags. '
    "Results come back inside <tool_response></tool_response> tags."
)

# The same rendering in Jinja for transformers' apply_chat_template. Keep the two in lock-step:
# tests/test_chat.py compares their ids on many conversations. `{% generation %}` marks the
# trained span, so `return_assistant_tokens_mask=True` reproduces our loss mask too.
CHAT_TEMPLATE = (
    "{%- macro text(c) -%}{%- if c is string -%}{{- c -}}{%- elif c is none -%}{%- else -%}{{- c | tojson -}}"
    "{%- endif -%}{%- endmacro -%}"
    "{%- if not tools and messages and messages[0].role == 'system' and messages[0].tools -%}"
    "{%- set tools = messages[0].tools -%}{%- endif -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0].role == 'system' and text(messages[0].content) -%}"
    "{{- text(messages[0].content) + '\\n\\n' -}}{%- endif -%}"
    "{{- " + json.dumps(TOOLS_INTRO) + " -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- " + json.dumps(TOOLS_OUTRO) + " + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set content = text(message.content) -%}"
    "{%- if message.role == 'system' and loop.first and tools -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- if message.reasoning_content is string -%}{%- set reasoning = message.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>', 1)[0].split('<think>')[-1] -%}"
    "{%- set content = content.split('</think>', 1)[1] -%}"
    "{%- else -%}{%- set reasoning = '' -%}{%- endif -%}"
    "{%- set content = content.strip() -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- '<think>\\n' + reasoning.strip() + '\\n</think>\\n\\n' + content -}}"
    "{%- for call in (message.tool_calls or []) -%}"
    "{%- if call.function -%}{%- set call = call.function -%}{%- endif -%}"
    "{%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' -}}"
    "{%- if call.arguments is string -%}{{- call.arguments -}}{%- else -%}{{- (call.arguments or {}) | tojson -}}"
    "{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- elif message.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- else -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """The one reasoning splitter: "<think>r</think>a" -> ("r", "a"), both stripped.

    The opening <think> may be missing (the prompt holds it). Without a closing </think>, even
    after an open tag (a reply cut off while thinking), there is no reasoning: (None, text).
    It splits at the FIRST </think>: the template writes one think block, at the start of the
    reply, so everything after its close is answer, even an answer that writes "</think>" itself
    (the last one would hide part of it as reasoning). The streaming splitter must decide at the
    first tag (it cannot see the rest), and CHAT_TEMPLATE splits there too: all three agree.
    """
    if THINK_END not in text:
        return None, text.strip()
    before, _, after = text.partition(THINK_END)
    return before.split(THINK_START)[-1].strip(), after.strip()


# One call block as generated: the JSON between the tags, whatever whitespace surrounds it.
CALL_BLOCK = re.compile(re.escape(TOOL_CALL_START) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_END), re.S)

Call = tuple[str, Any]  # (function name, arguments object)


def normalize_call(call: Any) -> Call | None:
    """(name, arguments object) of an OpenAI-style or flat call; None if it is not one."""
    if not isinstance(call, dict):
        return None
    call = call.get("function") if isinstance(call.get("function"), dict) else call
    name, args = call.get("name"), call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return None
    return name, args


def parse_call(body: str) -> Call | None:
    """The call in the JSON text of one `<tool_call>` block; None if malformed."""
    try:
        return normalize_call(json.loads(body))
    except json.JSONDecodeError:
        return None


def parse_tool_calls(text: str) -> tuple[list[Call], bool]:
    """The calls written in generated text (after the last </think>), and whether all were well formed."""
    answer = text.rpartition(THINK_END)[2]
    blocks = CALL_BLOCK.findall(answer)
    ok = bool(blocks) and answer.count(TOOL_CALL_START) == len(blocks) == answer.count(TOOL_CALL_END)
    calls = [c for c in map(parse_call, blocks) if c is not None]
    return calls, ok and len(calls) == len(blocks)


def parse_reply(text: str) -> tuple[dict, bool]:
    """A generated reply -> (assistant message, well formed), the inverse of `_assistant_body`.

    Without any tool-call markup the reply is well formed and has no "tool_calls". With markup
    that parses (every block closed, valid JSON, a name, object arguments) the blocks become
    "tool_calls" and "content" is the text around them (pieces joined by a newline). Otherwise it is malformed and "content"
    keeps the whole answer as text.
    """
    reasoning, answer = split_reasoning(text)
    msg: dict = {"role": "assistant", "content": answer}
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    if TOOL_CALL_START not in answer and TOOL_CALL_END not in answer:
        return msg, True
    calls, ok = parse_tool_calls(answer)
    if not ok:
        return msg, False
    around = CALL_BLOCK.sub(TOOL_CALL_START, answer).split(TOOL_CALL_START)  # the text between blocks
    msg["content"] = "\n".join(t.strip() for t in around if t.strip())
    msg["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    return msg, True


def _text(value) -> str:
    # Message content: a string as it is, nothing as "", anything else (a tool's JSON result) as JSON.
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _parse_json_field(value, what: str):
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else []
        except json.JSONDecodeError as err:
            raise UserError(f"{what} is not valid JSON ({err.msg})") from None
    return value


class Piece(NamedTuple):
    """A stretch of the rendered conversation: `content` text is message text (never parsed for
    control tokens), otherwise it is template text whose markers become control ids."""

    text: str
    trainable: int  # 1: in the loss (assistant replies)
    content: bool


def _t(text: str, trainable: int = 0) -> Piece:
    return Piece(text, trainable, False)


def _c(text: str, trainable: int = 0) -> Piece:
    return Piece(text, trainable, True)


def _assistant_body(msg: dict) -> list[Piece]:
    """The trained part of an assistant turn: think block, answer, tool calls, and its <|im_end|>."""
    content = _text(msg.get("content"))
    reasoning = msg.get("reasoning_content")
    if not isinstance(reasoning, str):
        split, content = split_reasoning(content)  # inline <think>...</think> in content
        reasoning = split or ""
    content = content.strip()
    body = [_t(f"{THINK_START}\n", 1), _c(reasoning.strip(), 1), _t(f"\n{THINK_END}\n\n", 1), _c(content, 1)]
    calls = _parse_json_field(msg.get("tool_calls"), "assistant tool_calls") or []
    if isinstance(calls, dict):  # a single call written as an object
        calls = [calls]
    if not isinstance(calls, list):
        raise UserError(f"assistant tool_calls must be a list, got {type(calls).__name__}")
    for i, call in enumerate(calls):
        if not isinstance(call, dict):
            raise UserError(f"tool call {i} must be an object, got {type(call).__name__}")
        call = call.get("function") or call  # OpenAI style {"type": "function", "function": {...}}
        if not isinstance(call, dict):
            raise UserError(f"tool call {i}: function must be an object, got {type(call).__name__}")
        name = call.get("name")
        if not isinstance(name, str):
            raise UserError(f"tool call {i} has no function name")
        args = call.get("arguments")
        args = args if isinstance(args, str) else json.dumps(args or {}, ensure_ascii=False)
        sep = "\n" if content or i > 0 else ""
        body += [_t(f'{sep}{TOOL_CALL_START}\n{{"name": "', 1), _c(name, 1), _t('", "arguments": ', 1),
                 _c(args, 1), _t(f"}}\n{TOOL_CALL_END}", 1)]
    return body + [_t(EOS_TOKEN, 1)]


def _tools_turn(first: dict, tools: list) -> list[Piece]:
    system = _text(first.get("content")) if first["role"] == "system" else ""
    pieces = [_t(f"{BOS_TOKEN}system\n")]
    if system:
        pieces += [_c(system), _t("\n\n")]
    pieces.append(_t(TOOLS_INTRO))
    for t in tools:  # definitions come from the client: content, like any message text
        pieces += [_t("\n"), _c(json.dumps(t, ensure_ascii=False))]
    return pieces + [_t(f"{TOOLS_OUTRO}{EOS_TOKEN}\n")]


def render_pieces(messages: list[dict], tools=None) -> list[Piece]:
    """The conversation as pieces; their texts joined are the rendered string."""
    if not isinstance(messages, list) or not messages:
        raise UserError("a conversation must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise UserError(f"message {i}: role must be one of {', '.join(ROLES)}, got {role!r}")
    first = messages[0]
    if not tools and first["role"] == "system" and first.get("tools"):
        tools = first["tools"]
    tools = _parse_json_field(tools, "system tools") if tools else None
    if isinstance(tools, dict) and ("function" in tools or "name" in tools):  # a single definition
        tools = [tools]
    if tools is not None and not isinstance(tools, list):
        raise UserError(f"tools must be a list of function definitions, got {type(tools).__name__}")

    pieces: list[Piece] = _tools_turn(first, tools) if tools else []
    for i, msg in enumerate(messages):
        role = msg["role"]
        if role == "system" and i == 0 and tools:
            continue  # already rendered with the tool section
        if role == "assistant":
            pieces += [_t(f"{BOS_TOKEN}assistant\n"), *_assistant_body(msg), _t("\n")]
        elif role == "tool":
            opens = i == 0 or messages[i - 1]["role"] != "tool"
            closes = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
            pieces += [_t((f"{BOS_TOKEN}user" if opens else "") + f"\n{TOOL_RESPONSE_START}\n"),
                       _c(_text(msg.get("content"))),
                       _t(f"\n{TOOL_RESPONSE_END}" + (f"{EOS_TOKEN}\n" if closes else ""))]
        else:
            pieces += [_t(f"{BOS_TOKEN}{role}\n"), _c(_text(msg.get("content"))), _t(f"{EOS_TOKEN}\n")]
    return pieces


def generation_prompt(thinking: bool = True) -> str:
    return f"{BOS_TOKEN}assistant\n" + (f"{THINK_START}\n" if thinking else EMPTY_THINK)


def render_text(messages: list[dict], tools=None, add_generation_prompt: bool = False,
                thinking: bool = True) -> str:
    """The rendered conversation as a string (what the Jinja template produces).

    For display and comparison only: encoding it with `allow_special=True` would turn markers
    inside messages into control ids. Token ids come from `render_conversation` / `render_prompt`.
    """
    text = "".join(p.text for p in render_pieces(messages, tools))
    return text + generation_prompt(thinking) if add_generation_prompt else text


def encode_pieces(tok: Tokenizer, pieces: list[Piece]) -> tuple[list[int], list[int]]:
    """Ids and loss mask of pieces: control ids from template markers, all other text plain."""
    # Runs: a control id, or the text between two control ids that shares one mask value.
    runs: list[list] = []  # [text or id, mask]
    for p in pieces:
        for part in ([p.text] if p.content else tok.split_special(p.text)):
            if isinstance(part, str) and runs and isinstance(runs[-1][0], str) and runs[-1][1] == p.trainable:
                runs[-1][0] += part
            else:
                runs.append([part, p.trainable])
    ids: list[int] = []
    mask: list[int] = []
    for run, m in runs:  # one encode per run: cheaper than encode_batch for a handful of short texts
        piece = [run] if isinstance(run, int) else tok.encode(run)
        ids.extend(piece)
        mask.extend([m] * len(piece))
    return ids, mask


def render_conversation(tok: Tokenizer, messages: list[dict], tools=None) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask of the same length (1 = assistant content + its <|im_end|>)."""
    return encode_pieces(tok, render_pieces(messages, tools))


def call_prefix(name: str | None = None) -> list[Piece]:
    """The opening of a tool call as `_assistant_body` lays it out, up to the function name (or,
    given `name`, up to its arguments): appended to a generation prompt with thinking off, it
    makes the model call a function (cuts fall where the pre-tokenizer cuts the trained text)."""
    head = [_t(f'{TOOL_CALL_START}\n{{"name": "')]
    return head if name is None else head + [_c(name), _t('", "arguments":')]


def render_prompt(tok: Tokenizer, messages: list[dict], tools=None, thinking: bool = True,
                  prefill: list[Piece] = ()) -> list[int]:
    """Ids of the conversation so far plus the assistant generation prompt (and `prefill`)."""
    return encode_pieces(tok, render_pieces(messages, tools) + [_t(generation_prompt(thinking)), *prefill])[0]


def fit_prompt(tok: Tokenizer, messages: list[dict], budget: int, thinking: bool = True,
               tools=None) -> tuple[list[int], int]:
    """`render_prompt` ids of at most `budget` tokens, made by dropping the oldest messages.

    A leading system message is kept; after it, messages go from the front until the rest fits,
    a user message together with the replies that follow it, so what is kept starts at a user
    turn. Returns (ids, number of messages dropped after the system message). Raises UserError
    when even the last user turn does not fit: the caller refuses that message and goes on.
    """
    head = messages[:1] if messages and messages[0].get("role") == "system" else []
    rest = messages[len(head):]
    dropped = 0
    while True:
        ids = render_prompt(tok, head + rest[dropped:], tools, thinking)
        if len(ids) <= budget:
            return ids, dropped
        later = [i for i in range(dropped + 1, len(rest)) if rest[i].get("role") == "user"]
        if not later:
            raise UserError(f"message too long: the prompt would be {len(ids)} tokens, the context "
                            f"leaves room for {budget}; not sent")
        dropped = later[0]


def check_chatml(tok: Tokenizer) -> None:
    """Raise UserError unless `tok` has the ChatML turn tokens this renderer writes."""
    missing = [t for t in (BOS_TOKEN, EOS_TOKEN) if tok.token_to_id(t) is None]
    if missing:
        raise UserError(f"{tok.path}: tokenizer lacks {', '.join(missing)}; chat rendering needs ChatML tokens")
