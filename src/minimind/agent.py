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
- Token level (for RL, which must train on the exact sampled tokens): a `TokenModel` maps
  prompt ids to generated ids (`engine_token_model`, or `scripted_token_model` for tests). With
  one, `run_agents` keeps each conversation as token ids and continues every turn from those ids
  (never from a re-render), and `AgentRun.segments` holds them as (ids, trainable) pieces: the
  rendered prompt (0), each turn's generated ids with their stop token (1), and the renderer's ids
  for what the loop appends (0): a missing <|im_end|> of a capped reply, the tool results as
  one user turn, and the next generation prompt. Their concatenation equals
  `chat.render_conversation` of the transcript (less its final "\n") whenever the generated ids
  are the renderer's tokenization of the reply text (tests/test_agent.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .chat import Piece, encode_pieces, generation_prompt, parse_reply, render_pieces, render_prompt, render_text
from .infer import SamplingParams
from .tokenizer import EOS_TOKEN
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
    segments: list[tuple[list[int], int]] = field(default_factory=list)  # token runs only: (ids, trainable)

    @property
    def ids(self) -> list[int]:
        """All token ids of a token-level run, in order (the last prompt the model would continue)."""
        return [t for seg, _ in self.segments for t in seg]

    def generated_texts(self, tokenizer) -> list[str]:
        """Decoded text of each generated segment (token runs only)."""
        return [tokenizer.decode(seg) for seg, trainable in self.segments if trainable]


# (conversation index, turn) of each prompt: lets a sampler seed every generation reproducibly.
Where = list[tuple[int, int]]


@dataclass
class TokenModel:
    """Generates from token ids: `generate(prompts, where)` -> generated ids (stop token
    included when it stopped) per prompt, or None when the prompt leaves no room."""

    tokenizer: Any
    generate: Callable[[list[list[int]], Where], list["list[int] | None"]]
    thinking: bool = False
    tools: list[dict] | None = None


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


def _advance(run: AgentRun, i: int, reply: str | None, registry: ToolRegistry, max_turns: int,
             on_message: Callable[[int, dict], None] | None) -> str | None:
    """Apply one reply to conversation i (run its tool calls); return its finish, or None to go on."""
    run.turns += 1
    before = len(run.messages)
    finish = agent_step(run.messages, reply, registry, (lambda m: on_message(i, m)) if on_message else None)
    run.tool_calls += sum(m["role"] == "tool" for m in run.messages[before:])
    if finish is None and run.turns >= max_turns:
        finish = "turn_limit"
    run.finish = finish
    return finish


def run_agents(model: "Model | TokenModel", conversations: list[list[dict]], registry: ToolRegistry,
               max_turns: int = 4, on_message: Callable[[int, dict], None] | None = None,
               prompt_ids: list[list[int]] | None = None) -> list[AgentRun]:
    """Run the loop on every conversation, batched: one model call per turn for all unfinished ones.

    `prompt_ids` (TokenModel only) are the conversations' first prompts when the caller already
    rendered them (e.g. the RL loader, with record-level tools); otherwise they are rendered here."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    if isinstance(model, TokenModel):
        return _run_tokens(model, conversations, registry, max_turns, on_message, prompt_ids)
    if prompt_ids is not None:
        raise ValueError("prompt_ids need a TokenModel")
    runs = [AgentRun([dict(m) for m in conv]) for conv in conversations]
    active = list(range(len(runs)))
    while active:
        replies = model([runs[i].messages for i in active])
        still = []
        for i, reply in zip(active, replies, strict=True):
            if _advance(runs[i], i, reply, registry, max_turns, on_message) is None:
                still.append(i)
        active = still
    return runs


def _observation(tok, appended: list[dict], thinking: bool, closed: bool) -> list[int]:
    """Ids the loop appends after a reply that called tools: its missing <|im_end|> (if it was
    capped), the "\n" ending the turn, the tool results as one user turn, the generation prompt.
    Every piece starts after a control token, so encoding it alone equals the full render."""
    tools = [m for m in appended if m["role"] == "tool"]
    pieces = [Piece(("" if closed else EOS_TOKEN) + "\n", 0, False), *render_pieces(tools),
              Piece(generation_prompt(thinking), 0, False)]
    return encode_pieces(tok, pieces)[0]


def _run_tokens(model: TokenModel, conversations: list[list[dict]], registry: ToolRegistry, max_turns: int,
                on_message: Callable[[int, dict], None] | None,
                prompt_ids: list[list[int]] | None = None) -> list[AgentRun]:
    """`run_agents` at the token level: see the module docstring."""
    tok = model.tokenizer
    stops = {tok.eos_id, tok.pad_id}
    runs = [AgentRun([dict(m) for m in conv]) for conv in conversations]
    if prompt_ids is not None and len(prompt_ids) != len(runs):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(runs)} conversations")
    for k, run in enumerate(runs):
        first = list(prompt_ids[k]) if prompt_ids is not None else render_prompt(
            tok, run.messages, tools=model.tools, thinking=model.thinking)
        run.segments.append((first, 0))
    active = list(range(len(runs)))
    while active:
        outs = model.generate([runs[i].ids for i in active], [(i, runs[i].turns) for i in active])
        still = []
        for i, out in zip(active, outs, strict=True):
            run = runs[i]
            before = len(run.messages)
            closed = bool(out) and out[-1] in stops
            if out is not None:
                run.segments.append((list(out), 1))
            reply = None if out is None else tok.decode(out[:-1] if closed else out)
            if _advance(run, i, reply, registry, max_turns, on_message) is None:
                run.segments.append((_observation(tok, run.messages[before:], model.thinking, closed), 0))
                still.append(i)
        active = still
    return runs


def engine_token_model(engine, params: Callable[[int, int], SamplingParams] | SamplingParams,
                       thinking: bool = False, tools: list[dict] | None = None) -> TokenModel:
    """A TokenModel on `engine`: each turn's prompts in one batch, each reply capped to its room.
    `params(conversation, turn)` may give each generation its own sampling (e.g. its seed)."""
    def generate(prompts: list[list[int]], where: Where) -> list[list[int] | None]:
        fits = [k for k, p in enumerate(prompts) if len(p) < engine.max_seq_len]
        plist = []
        for k in fits:
            p = params(*where[k]) if callable(params) else params
            plist.append(replace(p, max_new_tokens=min(p.max_new_tokens, engine.max_seq_len - len(prompts[k]))))
        seqs = engine.generate([prompts[k] for k in fits], plist) if fits else []
        out: list[list[int] | None] = [None] * len(prompts)
        for k, seq in zip(fits, seqs):
            out[k] = list(seq.output_ids)
        return out

    return TokenModel(engine.tokenizer, generate, thinking, tools)


def scripted_token_model(tok, fn: Callable[[str], str], thinking: bool = False,
                         max_seq_len: int | None = None) -> TokenModel:
    """A TokenModel from a function of the decoded prompt: its reply text, tokenised with control
    tokens and closed with <|im_end|> (tests)."""
    def generate(prompts: list[list[int]], where: Where) -> list[list[int] | None]:
        return [None if max_seq_len is not None and len(p) >= max_seq_len
                else tok.encode(fn(tok.decode(p)), allow_special=True) + [tok.eos_id] for p in prompts]

    return TokenModel(tok, generate, thinking)


def engine_model(engine, params: SamplingParams, tools: list[dict] | None = None, thinking: bool = False) -> Model:
    """A Model generating with `engine`: each turn's prompts in one batch, each reply capped to its room."""
    tok = engine.tokenizer

    def generate(batch: list[list[dict]]) -> list[str | None]:
        prompts = [render_prompt(tok, msgs, tools=tools, thinking=thinking) for msgs in batch]
        fits = [i for i, p in enumerate(prompts) if len(p) < engine.max_seq_len]
        plist = [replace(params, max_new_tokens=min(params.max_new_tokens, engine.max_seq_len - len(prompts[i])))
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
