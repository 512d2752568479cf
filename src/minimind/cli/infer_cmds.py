"""`minimind generate`, `minimind chat` and `minimind serve`: thin wrappers over infer/ and serve/.

- generate: one prompt (rendered as a user turn unless --raw), streamed; the answer goes to
  stdout, the reasoning (when thinking is on) to stderr, so `> out.txt` keeps only the answer.
- chat: a multi-turn REPL reading stdin line by line (so it can be piped); commands /reset,
  /system TEXT, /think on|off, /stats, /help, /quit. With --tools [NAMES] the model is offered
  the built-in tools (minimind.tools; all, or the comma-separated NAMES) and each reply runs
  through the agent loop (minimind.agent): every call is shown as `[tool] name(arguments) ->
  result` and the answer follows (not streamed: the loop generates whole replies).
- serve: the OpenAI-compatible server and web page (127.0.0.1 unless --host says otherwise);
  --tools [NAMES] lets it run those built-in tools for requests that ask (the web page does).
  Every serve flag is checked before the model loads: a bad value is one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..agent import engine_model, run_agents
from ..chat import fit_prompt, render_prompt
from ..devices import pick_device
from ..errors import UserError
from ..infer import Engine, ReasoningSplitter, SamplingParams, Sequence, load_engine
from ..serve import serve
from ..tools import ToolRegistry, builtin_tools

HELP = """commands:
  /reset          forget the conversation (keeps the system prompt)
  /system TEXT    set the system prompt (/system alone clears it)
  /think on|off   let the model reason before answering (shown apart from the answer)
  /stats          toggle tokens/s and time-to-first-token after each reply
  /help           this text
  /quit           leave (so does Ctrl-D)"""

MAX_BATCH = 1024  # rows of one preallocated KV cache; far beyond what a small model on one device serves
# serve's default context cap: its KV cache is preallocated for --max-batch-size rows of this many
# slots, and a 32k-context preset would otherwise reserve 16x the memory for rows that rarely use it.
SERVE_MAX_SEQ_LEN = 2048


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint folder, run directory or Hugging Face folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default auto: CUDA if present)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="compute dtype (default auto: bf16 on a GPU, as stored on the CPU)")
    p.add_argument("--max-seq-len", "--max-len", dest="max_seq_len", type=int, default=None,
                   help=f"context length in tokens (default: the model's, at most {SERVE_MAX_SEQ_LEN} for serve)")
    p.add_argument("--compile", action="store_true",
                   help="compile the decode step of a dense model (tens of seconds once; on a CPU at most "
                        "~10%% faster; meant for GPUs)")
    p.add_argument("--tools", nargs="?", const="all", default=None, metavar="NAMES",
                   help="offer the built-in tools (all, or comma-separated names: "
                        "calculator,convert_units,add_days,days_between,weekday,text_length,lookup_capital)")
    p.add_argument("--lora", action="append", default=[], metavar="[NAME=]DIR",
                   help="load a LoRA adapter folder (repeatable for serve: clients pick it by model=NAME; "
                        "generate/chat use the first)")


def _sampling_args(p: argparse.ArgumentParser, temperature: float, top_p: float) -> None:
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens to generate at most (default 512)")
    p.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    p.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling mass (default {top_p})")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--no-think", action="store_true", help="answer directly, without a reasoning block")


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate a reply to one prompt")
    _model_args(gen)
    gen.add_argument("--prompt", required=True, help="the user's message (or raw text with --raw)")
    gen.add_argument("--raw", action="store_true", help="continue the prompt as plain text, no chat template")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    _sampling_args(gen, 0.7, 0.9)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="chat in the terminal (multi-turn, streaming)")
    _model_args(chat)
    _sampling_args(chat, 0.7, 0.9)
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve", help="OpenAI-compatible API server + web chat page")
    _model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", default=os.environ.get("MINIMIND_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on /v1/* (default: $MINIMIND_API_KEY)")
    serve.add_argument("--model-name", default=None, help="model id clients ask for (default: checkpoint name)")
    serve.add_argument("--max-batch-size", type=int, default=16,
                       help=f"requests decoded together, 1..{MAX_BATCH} (default 16)")
    serve.add_argument("--allowed-hosts", action="append", default=[], metavar="HOST[,HOST...]",
                       help="extra host names clients may use in the Host header (repeatable; '*' allows any). "
                            "localhost, IP addresses and --host are always allowed; other names are refused "
                            "to stop DNS-rebinding web pages")
    serve.set_defaults(func=cmd_serve)


def _registry(args: argparse.Namespace) -> ToolRegistry | None:
    """The ToolRegistry --tools asks for (None without --tools); UserError for an unknown name."""
    if getattr(args, "tools", None) is None:
        return None
    tools = builtin_tools()
    if args.tools == "all":
        return tools
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    unknown = [n for n in names if n not in tools]
    if unknown or not names:
        raise UserError(f"--tools: unknown tool(s) {', '.join(unknown) or repr(args.tools)}; "
                        f"built-in: {', '.join(tools.names)}")
    return ToolRegistry(tools.tools[n] for n in names)


def _check_model_flags(args: argparse.Namespace) -> None:
    """Flags shared by generate/chat/serve, checked before anything loads."""
    _registry(args)
    if args.max_seq_len is not None and args.max_seq_len < 2:
        raise UserError(f"--max-seq-len must be at least 2 (one prompt token and one generated), got {args.max_seq_len}")
    pick_device(args.device)  # a bad or absent device fails now, before the model loads
    for spec in args.lora:
        name, sep, folder = spec.partition("=")
        if (sep and not name) or not (folder if sep else spec):
            raise UserError(f"--lora {spec!r}: expected DIR or NAME=DIR")


def _check_serve_flags(args: argparse.Namespace) -> None:
    """Every serve flag, so that a bad one fails at start with one line, not later or as a hang."""
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if not 1 <= args.max_batch_size <= MAX_BATCH:
        raise UserError(f"--max-batch-size must be in 1..{MAX_BATCH}, got {args.max_batch_size}")
    if not args.host or any(c.isspace() for c in args.host):
        raise UserError(f"--host must be an interface name or address, got {args.host!r}")
    if args.api_key is not None and (not args.api_key or args.api_key != args.api_key.strip()):
        # An empty key would silently mean "no key": refuse rather than serve unprotected.
        raise UserError("--api-key (or $MINIMIND_API_KEY) is empty or has surrounding whitespace; "
                        "give a key or unset it")
    if args.model_name is not None and not args.model_name.strip():
        raise UserError("--model-name must not be empty")
    for host in _allowed_hosts(args):
        if host != "*" and (not host or any(c.isspace() or c in "/:@" for c in host)):
            raise UserError(f"--allowed-hosts: {host!r} is not a host name (no scheme, port or path)")


def _allowed_hosts(args: argparse.Namespace) -> list[str]:
    return [h.strip() for spec in args.allowed_hosts for h in spec.split(",")]


def _engine(args: argparse.Namespace, default_max_seq_len: int | None = None) -> Engine:
    engine = load_engine(args.ckpt, max_batch_size=getattr(args, "max_batch_size", 1),
                         max_seq_len=args.max_seq_len or default_max_seq_len, device=args.device, dtype=args.dtype,
                         compile=args.compile)
    for spec in args.lora:
        name, sep, folder = spec.partition("=")
        if not sep:
            name, folder = Path(spec).resolve().name, spec
        engine.load_adapter(name, folder)
    if args.compile:  # say why the first reply is slow, or why --compile changes nothing
        note = ("the decode step compiles on the first tokens (tens of seconds, once per process)"
                if engine.compiled is not None and engine.compiled.ready() else
                "this model decodes eagerly (mixture of experts, or LoRA adapters loaded)")
        print(f"--compile: {note}", file=sys.stderr)
    return engine


def _params(args: argparse.Namespace, stop: list[str] | None = None) -> SamplingParams:
    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=stop or []).validate()


class _Printer:
    """Prints reasoning and answer pieces as they stream; dims reasoning on a terminal."""

    def __init__(self, reasoning_stream, label: bool) -> None:
        self.rs, self.label, self.kind = reasoning_stream, label, None
        self.dim = reasoning_stream.isatty()

    def __call__(self, kind: str, text: str) -> None:
        out = self.rs if kind == "reasoning" else sys.stdout
        if kind != self.kind:
            if self.kind == "reasoning":
                self.rs.write("\x1b[0m\n" if self.dim else "\n")
            if self.label:
                out.write("thinking> " if kind == "reasoning" else "assistant> ")
            if kind == "reasoning" and self.dim:
                out.write("\x1b[2m")
            self.kind = kind
        out.write(text)
        out.flush()

    def end(self) -> None:
        if self.kind == "reasoning" and self.dim:
            self.rs.write("\x1b[0m")
        if self.kind is None and self.label:
            sys.stdout.write("assistant> ")
        sys.stdout.write("\n")
        sys.stdout.flush()


def _reply(engine: Engine, prompt_ids: list[int], params: SamplingParams, thinking: bool,
           printer: _Printer) -> tuple[str, Sequence]:
    """Stream one reply through `printer` (with the first --lora adapter, if any); return (answer, sequence)."""
    adapter = engine.adapter_names[0] if engine.adapter_names else None
    seq = engine.new_sequence(prompt_ids, params, adapter)
    splitter = ReasoningSplitter(open=thinking)
    answer = []
    for ev in engine.run([seq]):
        for kind, text in splitter.push(ev.text) + (splitter.flush() if ev.finished else []):
            printer(kind, text)
            if kind == "content":
                answer.append(text)
    printer.end()
    return "".join(answer), seq


def _stats(seq: Sequence) -> str:
    n = len(seq.output_ids)
    ttft = (seq.t_first - seq.t_admit) * 1000
    decode = (seq.t_end - seq.t_first) if n > 1 else 0.0
    rate = f"{(n - 1) / decode:.1f} tokens/s" if decode > 0 else "-"
    return f"[{n} tokens, {rate}, first token after {ttft:.0f} ms, {seq.finish_reason}]"


def cmd_generate(args: argparse.Namespace) -> int:
    if args.tools is not None:
        raise UserError("--tools works with `minimind chat` and `minimind serve`, not generate")
    _check_model_flags(args)
    engine = _engine(args)
    params = _params(args, args.stop)
    tok = engine.tokenizer
    if args.raw:
        ids, thinking = tok.encode(args.prompt), False
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        thinking = not args.no_think
        ids = render_prompt(tok, messages, thinking=thinking)
    _reply(engine, ids, params, thinking, _Printer(sys.stderr, label=False))
    return 0


def _command(text: str, state: dict) -> bool:
    """Run one /command on the chat state (history, system, thinking, stats); True to quit."""
    cmd, _, rest = text.partition(" ")
    if cmd in ("/quit", "/exit"):
        return True
    if cmd == "/reset":
        state["history"] = []
        print("(conversation cleared)")
    elif cmd == "/system":
        state["system"] = rest.strip() or None
        print(f"(system prompt {'set' if state['system'] else 'cleared'})")
    elif cmd == "/think" and rest.strip() in ("on", "off"):
        state["thinking"] = rest.strip() == "on"
        print(f"(thinking {'on' if state['thinking'] else 'off'})")
    elif cmd == "/stats":
        state["stats"] = not state["stats"]
        print(f"(stats {'on' if state['stats'] else 'off'})")
    elif cmd == "/help":
        print(HELP)
    else:
        print(f"(unknown command {text!r}; /help lists them)")
    return False


def cmd_chat(args: argparse.Namespace) -> int:
    _check_model_flags(args)
    engine = _engine(args)
    params = _params(args)
    tok = engine.tokenizer
    registry = _registry(args)
    specs = registry.specs() if registry else None
    state = {"history": [], "system": args.system, "thinking": not args.no_think, "stats": False}
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"MiniMind chat ({args.ckpt}); /help for commands, Ctrl-D to leave.")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if text.startswith("/") and _command(text, state):
            break
        if not text or text.startswith("/"):
            continue
        history, thinking = state["history"] + [{"role": "user", "content": text}], state["thinking"]
        head = [{"role": "system", "content": state["system"]}] if state["system"] else []
        try:  # keep the newest turns that fit, leaving room for a reply of at least a few tokens
            ids, dropped = fit_prompt(tok, head + history, engine.max_seq_len - 16, thinking=thinking, tools=specs)
        except UserError as err:  # this one message can never fit: refuse it, keep the session
            print(f"({err})")
            continue
        if dropped:
            history = history[dropped:]
            print(f"(oldest {dropped} messages dropped to fit the context)")
        if registry is not None:
            history += _agent_reply(engine, head + history, params, thinking, registry, state["stats"])
        else:
            answer, seq = _reply(engine, ids, params, thinking, _Printer(sys.stdout, label=True))
            history.append({"role": "assistant", "content": answer})
            if state["stats"]:
                print(_stats(seq))
        state["history"] = history
    return 0


AGENT_NOTES = {"malformed": "(the model wrote a tool call that does not parse; shown as text)",
               "turn_limit": "(stopped: the model was still calling tools after {turns} replies)",
               "context": "(stopped: the conversation no longer fits the context)"}
AGENT_TURNS = 4


def _agent_reply(engine: Engine, messages: list[dict], params: SamplingParams, thinking: bool,
                 registry: ToolRegistry, stats: bool) -> list[dict]:
    """One user turn through the agent loop, printing calls and results; returns the new messages."""
    pending: list[dict] = []  # calls of the last reply, matched in order with their results

    def show(_: int, msg: dict) -> None:
        if msg["role"] == "tool":
            fn = pending.pop(0)["function"]
            print(f"[tool] {fn['name']}({json.dumps(fn['arguments'], ensure_ascii=False)}) -> {msg['content']}")
            return
        if msg.get("reasoning_content"):
            print(f"thinking> {msg['reasoning_content']}")
        pending[:] = msg.get("tool_calls", [])
        if msg["content"] or not pending:
            print(f"assistant> {msg['content']}")

    (run,) = run_agents(engine_model(engine, params, tools=registry.specs(), thinking=thinking), [messages],
                        registry, max_turns=AGENT_TURNS, on_message=show)
    if run.finish in AGENT_NOTES:
        print(AGENT_NOTES[run.finish].format(turns=run.turns))
    if stats:
        print(f"[{run.turns} model replies, {run.tool_calls} tool calls, {run.finish}]")
    return run.messages[len(messages):]


def cmd_serve(args: argparse.Namespace) -> int:
    _check_model_flags(args)
    _check_serve_flags(args)
    engine = _engine(args, default_max_seq_len=SERVE_MAX_SEQ_LEN)
    name = args.model_name or Path(args.ckpt).resolve().name
    tools = _registry(args)
    print(f"serving {name} on http://{args.host}:{args.port} (context {engine.max_seq_len}, "
          f"batch {args.max_batch_size}{', API key required' if args.api_key else ''}"
          f"{', tools: ' + ', '.join(tools.names) if tools else ''})", flush=True)
    t = time.perf_counter()
    serve(engine, host=args.host, port=args.port, api_key=args.api_key, model_name=name,
          max_batch_size=args.max_batch_size, allowed_hosts=_allowed_hosts(args), tools=tools)
    print(f"stopped after {time.perf_counter() - t:.0f} s")
    return 0
