"""Tool use on CPU: tool-call accuracy and agent task success before and after tool-use SFT and agent RL.

    OMP_NUM_THREADS=1 python benchmarks/tool_rl.py --base QS/sft --out OUT [--seed 0 1]

Models:
  (a)  --base, the quick start's SFT model (its SFT data is the demo mix);
  (b)  (a) after tool-use SFT: --sft-steps on the demo SFT conversations that offer tools (1,147:
       single calls, two calls in one reply, chains, second user turns, tools offered but not needed);
  (b2) (b) after --focus-sft-steps more SFT on a focused task (--focus, default "calc": multi-digit
       arithmetic that needs the calculator), each conversation offering only the tool it needs:
       the agent-RL starting point, which must already succeed sometimes (GRPO learns only from
       groups whose rollouts differ in reward);
  (c)  per --seed, (b2) after agent RL (`agent-rl` stage: G rollouts per prompt through the agent
       loop, the built-in tools executed, rule rewards) on focused prompts;
  (d)  per --seed, the equal-compute control: (b2) after more focused SFT for as many training
       tokens (forward + backward) as that seed's agent-RL run used.
Scores (greedy): on the demo suite `eval/toolcall.jsonl` (120 held-out cases), format / name /
arguments accuracy of the first reply's calls (`evaluate_toolcall`) and task success through the
agent loop on its 100 cases with `gt` (`evaluate_agent`); and task success on the focused held-out
set (--focus-sizes EVAL prompts). The focused SFT, RL and eval questions are disjoint and none is
asked anywhere in the demo data. Writes OUT/results.json (finished stages are reused) and a table.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

from minimind.data.demo import conversations as C
from minimind.data.demo import write_demo
from minimind.data.demo.evalsets import normalise
from minimind.data.demo.tasks import make_tool_task
from minimind.eval.toolcall import evaluate_agent, evaluate_toolcall, read_agent_cases, read_cases
from minimind.infer.loading import load_engine
from minimind.locator import METRICS, resolve_checkpoint
from minimind.tools import builtin_tools
from minimind.train.metrics import read_metrics
from minimind.train.stages import get_stage
from minimind.train.trainer import Trainer


def train(stage: str, out: Path, **options) -> Path:
    """Run one stage through the one Trainer (or reuse a finished run); return its checkpoint."""
    if (out / "checkpoints" / "latest").is_file():
        print(f"== {stage}: reusing {out}")
        return resolve_checkpoint(out)
    cls = get_stage(stage)
    cfg = cls.config_class(out=str(out), progress=False, num_samples=0, eval_batches=0, save_every=0, log_every=5,
                           **options)
    cfg.validate()
    t = time.perf_counter()
    Trainer(cls(cfg)).fit()
    print(f"== {stage}: {out} in {time.perf_counter() - t:.0f} s")
    return resolve_checkpoint(out)


def write_data(out: Path) -> dict[str, Path]:
    """The demo data and its tool-use SFT subset (the conversations that offer tools)."""
    if not (out / "agent_rl.jsonl").is_file():
        write_demo(out)
    files = {"tool_sft": out / "tool_sft.jsonl", "eval": out / "eval" / "toolcall.jsonl"}
    sft = [line for line in open(out / "sft.jsonl", encoding="utf-8") if json.loads(line)["conversations"][0].get("tools")]
    files["tool_sft"].write_text("".join(sft), encoding="utf-8")
    return files


def focus_data(out: Path, kind: str, n_sft: int, n_rl: int, n_eval: int, taken: set[str]) -> dict[str, Path]:
    """A focused task: `kind` conversations offering only the tools they need (short prompts), for
    SFT (both wire shapes), RL prompts and a held-out eval with `gt`; the three sets ask disjoint
    questions and none asks one in `taken` (the demo data's). Deterministic (fixed seeds)."""
    rng, seen = random.Random(1234), set(taken)

    def fresh(n: int) -> list:
        tasks = []
        while len(tasks) < n:
            task = make_tool_task(rng, ("zh", "en")[len(tasks) % 2], kind)
            if normalise(task.question) not in seen:
                seen.add(normalise(task.question))
                tasks.append(task)
        return tasks

    def prompt(task) -> list[dict]:
        system = {"role": "system", "content": C.TOOL_SYSTEM[task.lang], "tools": C.offered_tools(rng, task, 0)}
        return [system, {"role": "user", "content": task.question}]

    evals, rl = fresh(n_eval), fresh(n_rl)
    sft = [prompt(t)[:1] + C.tool_exchange(t, think=False) for t in fresh(n_sft)]
    rows = {"eval": [{"conversations": C.upstream_shape(prompt(t)), "gt": [t.answer], "kind": kind} for t in evals],
            "rl": [{"conversations": C.upstream_shape(prompt(t)), "gt": [t.answer], "kind": kind} for t in rl],
            "sft": [{"conversations": C.upstream_shape(c) if i % 2 else C.openai_shape(c)} for i, c in enumerate(sft)]}
    files = {}
    for name, recs in rows.items():
        files[name] = out / f"focus_{kind}_{name}.jsonl"
        files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return files


def evaluate(ckpt: Path, cases: Path, focus: Path, cache: Path, max_turns: int, max_new_tokens: int) -> dict:
    """Tool-call accuracy and agent task success of one checkpoint on the demo suite, and task
    success on the focused held-out set (cached in `cache`)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    t = time.perf_counter()
    engine = load_engine(ckpt, max_batch_size=64)
    calls = evaluate_toolcall(engine, read_cases(cases), max_new_tokens=64)
    agent = evaluate_agent(engine, read_agent_cases(cases), builtin_tools(), max_turns, max_new_tokens)
    kinds = [json.loads(line)["kind"] for line in open(cases, encoding="utf-8") if "gt" in json.loads(line)]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, p in zip(kinds, agent["predictions"], strict=True):
        by_kind[kind].append(p["success"])
    focused = evaluate_agent(engine, read_agent_cases(focus), builtin_tools(), max_turns, max_new_tokens)
    res = {"ckpt": str(ckpt), **{k: calls[k] for k in ("n", "format_accuracy", "name_accuracy", "arguments_accuracy")},
           **{f"focus_{k}": v for k, v in focused.items() if k not in ("predictions", "task")},
           "focus_examples": [p["transcript"] for p in focused["predictions"][:3]],
           **{f"agent_{k}": v for k, v in agent.items() if k not in ("predictions", "task")},
           "success_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
           "examples": [p["transcript"] for p in agent["predictions"][:3]], "seconds": time.perf_counter() - t}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n")
    print(f"   {cache.stem}: success {res['agent_success']:.3f} (focus {res['focus_success']:.3f}), "
          f"arguments {res['arguments_accuracy']:.3f}, "
          f"well-formed {res['format_accuracy']:.3f} ({res['seconds']:.0f} s)")
    return res


def run_summary(run: Path) -> dict:
    """Tokens trained and the reward curve (first vs last 20% of steps) of an RL run."""
    rows = [r for r in read_metrics(run / METRICS) if r.get("split") == "train"]
    rewards = [r["reward"] for r in rows if "reward" in r]
    n = max(1, len(rewards) // 5)
    return {"tokens": rows[-1]["tokens"], "steps": rows[-1]["step"],
            "reward_first_20pct": sum(rewards[:n]) / n if rewards else None,
            "reward_last_20pct": sum(rewards[-n:]) / n if rewards else None}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the quick start's SFT checkpoint or run dir, model (a)")
    ap.add_argument("--out", default="runs/tool_rl")
    ap.add_argument("--seed", type=int, nargs="+", default=[0])
    ap.add_argument("--sft-steps", type=int, default=100)
    ap.add_argument("--sft-lr", type=float, default=1e-3)
    ap.add_argument("--focus", default="calc", help="the tool-task kind agent RL trains on (and its held-out set)")
    ap.add_argument("--focus-sft-steps", type=int, default=60, help="SFT steps on the focused conversations before RL")
    ap.add_argument("--focus-sizes", type=int, nargs=3, default=(2000, 1000, 200), metavar=("SFT", "RL", "EVAL"))
    ap.add_argument("--rl-steps", type=int, default=10)
    ap.add_argument("--rl-lr", type=float, default=1e-4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per micro-batch, each rolled out --group-size times")
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--rewards", default="correct:1,wellformed:0.2,valid:0.2,unfinished:0.5,repetition:0.5")
    ap.add_argument("--beta-kl", type=float, default=0.0)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64, help="per reply, in RL and in the agent eval")
    ap.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                    help="also train the equal-compute SFT control per seed")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    data = write_data(out / "data")
    taken = {normalise(m["content"]) for name in ("sft.jsonl", "agent_rl.jsonl", "eval/toolcall.jsonl")
             for line in open(out / "data" / name, encoding="utf-8")
             for m in json.loads(line)["conversations"] if m["role"] == "user"}
    focus = focus_data(out / "data", args.focus, *args.focus_sizes, taken)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["config"] = vars(args)

    def score(ckpt: Path, name: str) -> dict:
        results[name] = evaluate(ckpt, data["eval"], focus["eval"], out / "evals" / f"{name}.json", args.max_turns,
                                 args.max_new_tokens)
        results_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        return results[name]

    base = resolve_checkpoint(args.base)
    score(base, "a_quickstart_sft")
    sft_opts = dict(batch_size=8, seq_len=512, lr=args.sft_lr, warmup_steps=10)
    tool_sft = train("sft", out / "tool_sft", init=str(base), data=[str(data["tool_sft"])], max_steps=args.sft_steps,
                     seed=0, **sft_opts)
    score(tool_sft, "b_tool_sft")
    start = train("sft", out / "focus_sft", init=str(tool_sft), data=[str(focus["sft"])],
                  max_steps=args.focus_sft_steps, seed=0, **sft_opts)
    score(start, f"b2_{args.focus}_sft")
    for seed in args.seed:
        rl = train("agent-rl", out / f"seed{seed}" / "agent_rl", init=str(start), data=[str(focus["rl"])],
                   max_steps=args.rl_steps, batch_size=args.prompts, grad_accum=args.grad_accum,
                   group_size=args.group_size, temperature=args.temperature, lr=args.rl_lr, warmup_steps=2,
                   beta_kl=args.beta_kl, freeze_embeddings=True, scale_advantages=False, rewards=args.rewards,
                   max_turns=args.max_turns, max_new_tokens=args.max_new_tokens, seq_len=512, seed=seed)
        summary = run_summary(out / f"seed{seed}" / "agent_rl")
        results[f"seed{seed}_rl_run"] = summary
        score(rl, f"c_agent_rl_seed{seed}")
    for seed in args.seed if args.control else []:  # the same training tokens, spent on SFT with the references
        ctrl = train("sft", out / f"seed{seed}" / "sft_control", init=str(start), data=[str(focus["sft"])],
                     max_tokens=results[f"seed{seed}_rl_run"]["tokens"], seed=seed,
                     **{**sft_opts, "lr": args.rl_lr, "warmup_steps": 2})
        score(ctrl, f"d_sft_control_seed{seed}")

    print("\n| model | well-formed | right function | right arguments | task success (suite) | called a tool | "
          f"task success ({args.focus}, held out) |\n|---|---|---|---|---|---|---|")
    for k in (k for k in results if k[:2] in ("a_", "b_", "b2", "c_", "d_")):
        r = results[k]
        print(f"| {k} | {r['format_accuracy']:.3f} | {r['name_accuracy']:.3f} | {r['arguments_accuracy']:.3f} | "
              f"{r['agent_success']:.3f} | {r['agent_called_tool']:.3f} | {r['focus_success']:.3f} |")


if __name__ == "__main__":
    main()
