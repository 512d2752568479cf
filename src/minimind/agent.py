"""The agent loop: model -> tool calls -> tool results -> model, until an answer or a turn limit.

Contract:
- A `Model` is a callable mapping a batch of conversations (lists of messages) to one generated
  reply text each (the text after the generation prompt), or None for a conversation that no
  longer fits the context. `engine_model(engine, ...)` makes one from the inference engine
  (all conversations of a turn generated together, `Engine.generate`); `text_model(fn)` from a
  function of the rendered prompt string (scripted fakes in tests).
- `run_agents(model, conversations, registry, max_turns)` advances every conversation together:
  each turn the model replies to all unfinished ones, each reply is parsed by `chat.parse_reply`
  and appended as an assistant message; its tool calls run through the `ToolRegistry` (only
  its tools: an unknown name or bad arguments come back as an error result the model can read)
  and each result is appended as a `{"role": "tool", "name", "content"}` message. Returns one
  `AgentRun` per conversation: the transcript (the input messages, then everything appended)
  and why it ended:
    "answer"      a reply without tool calls (the last message is that answer);
    "malformed"   a reply with tool-call markup that does not parse (kept as text content);
    "turn_limit"  still calling tools after `max_turns` model replies;
    "context"     the conversation outgrew the model's context before an answer.
- The input conversations are not modified. `on_message(i, message)` (optional) sees every
  appended message of conversation i as it happens (the CLI prints calls and results with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from .chat import parse_reply, render_prompt, render_text
from .infer import SamplingParams
from .tools import ToolRegistry

Model = Callable[[list[list[dict]]], list["str | None"]]
FINISH_REASONS = ("answer", "malformed", "turn_limit", "context")


@dataclass
class AgentRun:
    messages: list[dict]
    finish: str | None = None  # one of FINISH_REASONS once done
    turns: int = 0  # model replies so far
    tool_calls: int = 0
    extra: dict = field(default_factory=dict)  # room for callers (e.g. rewards) to annotate a run


def agent_step(messages: list[dict], reply: str | None, registry: ToolRegistry,
               on_message: Callable[[dict], None] | None = None) -> str | None:
    """Append one reply (and its tool results) to `messages`; the finish reason, or None to go on."""
    if reply is None:
        return "context"
    msg, ok = parse_reply(reply)
    messages.append(msg)
    if on_message:
        on_message(msg)
    if not ok:
        return "malformed"
    if not msg.get("tool_calls"):
        return "answer"
    for call in msg["tool_calls"]:
        fn = call["function"]
        result = {"role": "tool", "name": fn["name"], "content": registry.call(fn["name"], fn["arguments"])}
        messages.append(result)
        if on_message:
            on_message(result)
    return None


def run_agents(model: Model, conversations: list[list[dict]], registry: ToolRegistry, max_turns: int = 4,
               on_message: Callable[[int, dict], None] | None = None) -> list[AgentRun]:
    """Run the loop on every conversation, batched: one model call per turn for all unfinished ones."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    runs = [AgentRun([dict(m) for m in conv]) for conv in conversations]
    active = list(range(len(runs)))
    while active:
        replies = model([runs[i].messages for i in active])
        still = []
        for i, reply in zip(active, replies, strict=True):
            run = runs[i]
            run.turns += 1
            before = len(run.messages)
            finish = agent_step(run.messages, reply, registry,
                                (lambda m, i=i: on_message(i, m)) if on_message else None)
            run.tool_calls += sum(m["role"] == "tool" for m in run.messages[before:])
            if finish is None and run.turns >= max_turns:
                finish = "turn_limit"
            if finish is None:
                still.append(i)
            else:
                run.finish = finish
        active = still
    return runs


def engine_model(engine, params: SamplingParams, tools: list[dict] | None = None, thinking: bool = False) -> Model:
    """A Model generating with `engine`: each turn's prompts in one batch, each reply capped to its room."""
    tok = engine.tokenizer

    def generate(batch: list[list[dict]]) -> list[str | None]:
        prompts = [render_prompt(tok, msgs, tools=tools, thinking=thinking) for msgs in batch]
        fits = [i for i, p in enumerate(prompts) if len(p) < engine.context_len]
        plist = [replace(params, max_new_tokens=min(params.max_new_tokens, engine.context_len - len(prompts[i])))
                 for i in fits]
        seqs = engine.generate([prompts[i] for i in fits], plist) if fits else []
        out: list[str | None] = [None] * len(batch)
        for i, seq in zip(fits, seqs):
            out[i] = seq.text
        return out

    return generate


def text_model(fn: Callable[[str], str], tools: list[dict] | None = None, thinking: bool = False) -> Model:
    """A Model from a function of the rendered prompt text (the string the engine would continue)."""
    def generate(batch: list[list[dict]]) -> list[str | None]:
        return [fn(render_text(msgs, tools, add_generation_prompt=True, thinking=thinking)) for msgs in batch]

    return generate
