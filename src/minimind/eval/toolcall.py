"""Tool-call accuracy: does the model call the right function with the right arguments?

Contract:
- A case is one JSONL record in the upstream SFT shape: {"conversations": [system message with
  "tools" (JSON string or list of OpenAI function specs), user (, assistant, tool, ...) ..., assistant
  with "tool_calls"]}. The LAST assistant message's tool_calls are the reference; everything before
  it is the prompt (rendered by `chat.render_prompt`, thinking off unless asked). A case whose last
  message has no tool_calls, or that offers no tools, is a bad record (`file:line: ...`).
- `parse_tool_calls(text)` reads `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
  blocks (the layout `chat.py` trains on) from the text after `</think>`; it returns the calls and
  whether the output was well formed (at least one block, every block closed, valid JSON, a string
  name and an object of arguments).
- `evaluate_toolcall(engine, cases, ...)` generates greedily and reports, each over all cases:
  format_accuracy (well-formed), name_accuracy (the same function names in the same order),
  arguments_accuracy = accuracy (names and arguments JSON-equal: parsed objects compared, so key
  order and spacing do not matter, 2 == 2.0).
- Task success through the agent loop: `read_agent_cases(path)` reads the cases that carry
  upstream's `"gt": [expected, ...]` (the same files; a final assistant turn, the reference call,
  is dropped as for RL prompts), and `evaluate_agent(engine, cases, registry)` runs each prompt
  through `agent.run_agents` (greedy, the tools executed by `registry`, at most `max_turns`
  replies) and reports success = the rollout ended with an answer whose final answer matches a
  `gt` entry (`answers.answers_match`, the rule agent RL rewards), plus how often the model
  called a tool at all, the share of calls the registry accepted (known name, valid
  arguments), and the finish reasons.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..agent import FINISH_REASONS, TokenModel, engine_token_model, run_agents
from ..chat import normalize_call, parse_tool_calls, render_prompt
from ..data.formats import RecordError
from ..infer import SamplingParams
from ..tools import ToolError, ToolRegistry, validate_arguments
from .answers import answers_match, extract_final_answer
from .gen import Prompts, generate_texts, read_records

def _reference(rec: dict) -> dict:
    """Split a normalised sft record into prompt messages, tools and the reference calls."""
    msgs = rec["messages"]
    last = msgs[-1]
    if last["role"] != "assistant" or not last.get("tool_calls"):
        raise RecordError("the last message must be an assistant message with 'tool_calls' (the reference)")
    raw = last["tool_calls"]
    raw = json.loads(raw) if isinstance(raw, str) else raw
    raw = [raw] if isinstance(raw, dict) else raw
    calls = [normalize_call(c) for c in raw]
    if not calls or any(c is None for c in calls):
        raise RecordError("the reference 'tool_calls' must be calls with a 'name' and object 'arguments'")
    tools = rec.get("tools") or msgs[0].get("tools")
    if not tools:
        raise RecordError("no 'tools' on the system message (the model must be shown the functions)")
    if len(msgs) < 2 or msgs[-2]["role"] not in ("user", "tool"):
        raise RecordError("the reference call must follow a user (or tool) message")
    return {"messages": msgs[:-1], "tools": tools, "calls": calls}


def read_cases(path: str | Path, skip_bad: bool = False, limit: int | None = None) -> Prompts:
    return read_records(path, "sft", skip_bad, limit, _reference)


def evaluate_toolcall(engine, cases: Prompts, max_new_tokens: int = 256, thinking: bool = False,
                      progress: Callable[[int], None] | None = None) -> dict:
    recs = cases.records
    ids = [render_prompt(engine.tokenizer, r["messages"], tools=r["tools"], thinking=thinking) for r in recs]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    texts = generate_texts(engine, ids, [params] * len(ids), progress)
    fmt = names = args = 0
    predictions = []
    for i, (rec, text) in enumerate(zip(recs, texts)):
        calls, ok = parse_tool_calls(text)
        name_ok = ok and [c[0] for c in calls] == [c[0] for c in rec["calls"]]
        args_ok = name_ok and [c[1] for c in calls] == [c[1] for c in rec["calls"]]
        fmt, names, args = fmt + ok, names + name_ok, args + args_ok
        predictions.append({"index": i, "reference": [{"name": n, "arguments": a} for n, a in rec["calls"]],
                            "output": text, "well_formed": ok, "name_ok": name_ok, "arguments_ok": args_ok})
    n = len(recs)
    return {"task": "toolcall", "n": n, "accuracy": args / n, "format_accuracy": fmt / n,
            "name_accuracy": names / n, "arguments_accuracy": args / n, "thinking": thinking,
            "predictions": predictions}


def _needs_gt(rec: dict) -> None:
    if not rec.get("gt"):
        raise RecordError("no 'gt' list of expected answers (task success needs one)")


def read_agent_cases(path: str | Path, skip_bad: bool = True, limit: int | None = None) -> Prompts:
    """The cases of a tool-call file that carry `gt` (others are skipped, and counted, by default)."""
    return read_records(path, "rl", skip_bad, limit, _needs_gt)


def _valid_calls(messages: list[dict], registry: ToolRegistry) -> tuple[int, int]:
    """(calls made, calls naming a registered tool with arguments its schema accepts)."""
    calls = [c["function"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    ok = 0
    for call in calls:
        tool = registry.tools.get(call["name"])
        try:
            ok += tool is not None and validate_arguments(tool, call["arguments"]) is not None
        except ToolError:
            pass
    return len(calls), ok


def evaluate_agent(engine, cases: Prompts, registry: ToolRegistry, max_turns: int = 4, max_new_tokens: int = 128,
                   thinking: bool = False, model: TokenModel | None = None) -> dict:
    """Task success through the agent loop, greedy (see the module docstring). `model` replaces
    the engine (a scripted `agent.scripted_token_model` in tests)."""
    recs = cases.records
    n_input = [len(r["messages"]) for r in recs]
    if model is None:
        model = engine_token_model(engine, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0),
                                   thinking=thinking)
    prompts = [render_prompt(model.tokenizer, r["messages"], tools=r["tools"], thinking=model.thinking) for r in recs]
    runs = run_agents(model, [r["messages"] for r in recs], registry, max_turns, prompt_ids=prompts)
    success = called = calls = valid = 0
    predictions = []
    for i, (rec, run, k) in enumerate(zip(recs, runs, n_input)):
        final = run.messages[-1].get("content") or "" if run.finish == "answer" else ""
        ok = run.finish == "answer" and any(answers_match(extract_final_answer(final), str(g)) for g in rec["gt"])
        made, accepted = _valid_calls(run.messages[k:], registry)
        success, called, calls, valid = success + ok, called + (made > 0), calls + made, valid + accepted
        predictions.append({"index": i, "gt": rec["gt"], "success": ok, "finish": run.finish,
                            "transcript": run.messages[k:]})
    n = len(recs)
    return {"task": "agent", "n": n, "success": success / n, "called_tool": called / n,
            "valid_calls": valid / calls if calls else 0.0, "max_turns": max_turns, "thinking": model.thinking,
            **{f"finish_{f}": sum(r.finish == f for r in runs) / n for f in FINISH_REASONS},
            "predictions": predictions}
