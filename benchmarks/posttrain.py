"""Post-training gains on the embedded demo data, on CPU in minutes: DPO, distillation, reasoning, GRPO.

    python benchmarks/posttrain.py --out runs/posttrain [--base RUN_OR_CKPT] [--scale 1.0] [--only dpo,grpo]

Starting point: an SFT model. `--base` names one (e.g. a `minimind quickstart` run's `sft/`);
without it the script runs the quick start with reduced budgets into OUT/base first. Each stage
then trains from that model through the one Trainer (the same code path as the CLI) and is
measured on the held-out demo files, before and after:

- dpo:     on dpo_eval, the mean log-prob margin log p(chosen) - log p(rejected) (summed over
           answer tokens) and the preference accuracy (share of pairs with a positive margin);
- distill: two `tiny` students start from the pretrained checkpoint and train the same number of
           steps on SFT data, one with the SFT model as teacher (alpha 0.5, T 1.5), one with plain
           CE; on sft_eval: token KL to the teacher (T = 1) and cross-entropy on answer tokens;
- reason:  on held-out rl_eval questions (greedy): share of replies with exactly one well-formed
           think block then an answer (thinking on), and share with no think tags (thinking off);
- grpo:    accuracy on held-out rl_eval questions (greedy, thinking on), and the reward curve
           (OUT/grpo/reward.png).

Writes OUT/results.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from minimind import load_model
from minimind.chat import render_conversation, render_prompt
from minimind.data.demo import write_demo
from minimind.data.formats import iter_examples
from minimind.infer import SamplingParams
from minimind.infer.loading import load_engine
from minimind.locator import METRICS, resolve_checkpoint
from minimind.tokenizer import load_tokenizer
from minimind.train.losses import distill_loss, sequence_logprobs
from minimind.train.metrics import read_metrics
from minimind.train.plot import plot_run
from minimind.train.quickstart import quickstart
from minimind.train.recipes import run_stage
from minimind.train.rewards import correctness_reward, format_reward


def train(stage: str, out: Path, **options) -> Path:
    """Run one stage to completion (or resume / reuse its run: `run_stage`) and return its final checkpoint."""
    t = time.perf_counter()
    result = run_stage(stage, out=str(out), progress=False, **{"num_samples": 0, **options})
    if not result.reused:
        print(f"== {stage}: {result.step} steps in {time.perf_counter() - t:.0f} s")
    return result.checkpoint


def _labels(ids: list[int], mask: list[int]) -> torch.Tensor:
    return torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])


@torch.no_grad()
def pair_margins(ckpt: Path, path: Path, limit: int, seq_len: int = 512) -> dict:
    """Held-out DPO pairs: mean summed log-prob margin chosen - rejected, and the share > 0."""
    model, tok = load_model(ckpt).eval(), load_tokenizer(ckpt)
    margins = []
    for ex in list(iter_examples("dpo", [path]))[:limit]:
        side = {}
        for name in ("chosen", "rejected"):
            ids, mask = render_conversation(tok, ex[name], ex["tools"])
            ids, mask = ids[:seq_len], mask[:seq_len]
            side[name] = float(sequence_logprobs(model(torch.tensor([ids])).logits, _labels(ids, mask)).seq_logps)
        margins.append(side["chosen"] - side["rejected"])
    m = torch.tensor(margins)
    return {"margin": float(m.mean()), "accuracy": float((m > 0).float().mean()), "pairs": len(margins)}


@torch.no_grad()
def kl_and_ce(student: Path, teacher: Path, path: Path, limit: int, seq_len: int = 256) -> dict:
    """Held-out SFT conversations: token KL(teacher || student) at T=1 and CE on answer tokens."""
    s_model, t_model, tok = load_model(student).eval(), load_model(teacher).eval(), load_tokenizer(student)
    kl = ce = n = 0.0
    for ex in list(iter_examples("sft", [path]))[:limit]:
        ids, mask = render_conversation(tok, ex["messages"], ex["tools"])
        ids, mask = ids[:seq_len], mask[:seq_len]
        labels = _labels(ids, mask)
        tokens = float((labels[:, 1:] != -100).sum())
        if tokens == 0:
            continue
        x = torch.tensor([ids])
        _, m = distill_loss(s_model(x).logits, t_model(x).logits, labels, temperature=1.0, alpha=0.5)
        kl, ce, n = kl + float(m["kl"]) * tokens, ce + float(m["ce"]) * tokens, n + tokens
    return {"kl_to_teacher": kl / n, "ce": ce / n}


def _generate(ckpt: Path, questions: list[str], thinking: bool, max_new_tokens: int) -> list[str]:
    engine = load_engine(ckpt, max_batch_size=64)
    prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": q}], thinking=thinking) for q in questions]
    seqs = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    return [s.text for s in seqs]


def think_rates(ckpt: Path, questions: list[str], max_new_tokens: int) -> dict:
    """Thinking on: share of well-formed "<think>..</think> answer" replies; off: share without tags."""
    on = _generate(ckpt, questions, True, max_new_tokens)
    off = _generate(ckpt, questions, False, max_new_tokens)
    well_formed = sum(format_reward("<think>\n" + t, None, []) for t in on) / len(on)
    tag_free = sum("<think>" not in t and "</think>" not in t for t in off) / len(off)
    return {"think_on_well_formed": well_formed, "think_off_tag_free": tag_free}


def accuracy(ckpt: Path, tasks: list[tuple[str, str]], max_new_tokens: int) -> float:
    texts = _generate(ckpt, [q for q, _ in tasks], True, max_new_tokens)
    return sum(correctness_reward("<think>\n" + t, a, []) for t, (_, a) in zip(texts, tasks)) / len(tasks)


def reward_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean reward) from metrics.jsonl; `minimind plot` draws it to run_dir/reward.png."""
    plot_run(run_dir)
    return [(r["step"], r["reward"]) for r in read_metrics(run_dir / METRICS)
            if r.get("split") == "train" and "reward" in r]


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/posttrain")
    ap.add_argument("--base", default=None, help="SFT checkpoint or run dir to start from (default: run the quick start)")
    ap.add_argument("--pretrained", default=None, help="pretrained checkpoint for the distillation students "
                    "(default: the quick start's pretrain/ next to --base)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every step budget")
    ap.add_argument("--only", default="dpo,distill,reason,grpo")
    ap.add_argument("--eval-limit", type=int, default=200, help="held-out examples per measurement")
    ap.add_argument("--grpo-kinds", default=None, help="train and measure GRPO only on these task kinds "
                    "(comma-separated, e.g. count_letter,compare): a weak base needs tasks it sometimes solves")
    ap.add_argument("--grpo-lr", type=float, default=3e-5)
    ap.add_argument("--group-size", type=int, default=4)
    return ap.parse_args()


@dataclass
class Bench:
    """What every measurement needs: flags, output folder, demo files, the SFT base and the pretrained model."""

    args: argparse.Namespace
    out: Path
    data: dict[str, Path]
    base: Path
    pretrained: Path
    rl_eval: list[tuple[str, str]]
    common: dict = field(default_factory=lambda: dict(seq_len=256, eval_batches=0, save_every=0))

    def steps(self, n: int) -> int:
        return max(1, int(n * self.args.scale))


def _bench(args: argparse.Namespace) -> Bench:
    """Demo files, the base models (the quick start's, unless --base), the GRPO task filter."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_demo(out / "data")
    if args.base:
        base = resolve_checkpoint(args.base)
        pretrained = resolve_checkpoint(args.pretrained or Path(args.base).parent / "pretrain")
    else:
        scale = lambda n: max(1, int(n * args.scale))  # noqa: E731
        qs = quickstart(out / "base", pretrain_steps=scale(250), sft_steps=scale(120))
        base, pretrained = resolve_checkpoint(qs["sft"]), resolve_checkpoint(qs["pretrain"])
    if args.grpo_kinds:  # RL files carry each task's "kind"; keep the chosen kinds only
        kinds = set(args.grpo_kinds.split(","))
        for name in ("rl", "rl_eval"):
            rows = [line for line in data[name].read_text().splitlines() if json.loads(line).get("kind") in kinds]
            data[name] = out / "data" / f"{name}_{'_'.join(sorted(kinds))}.jsonl"
            data[name].write_text("\n".join(rows) + "\n")
    rl_eval = [(ex["messages"][-1]["content"], ex["answer"]) for ex in iter_examples("rl", [data["rl_eval"]])][: args.eval_limit]
    return Bench(args, out, data, base, pretrained, rl_eval)


def measure_dpo(b: Bench) -> dict:
    t = time.perf_counter()
    ckpt = train("dpo", b.out / "dpo", init=str(b.base), data=[str(b.data["dpo"])], max_steps=b.steps(60), batch_size=8,
                 lr=5e-5, beta=0.1, **b.common)
    limit = b.args.eval_limit
    return {"steps": b.steps(60), "before": pair_margins(b.base, b.data["dpo_eval"], limit),
            "after": pair_margins(ckpt, b.data["dpo_eval"], limit), "seconds": time.perf_counter() - t}


def measure_distill(b: Bench) -> dict:
    t = time.perf_counter()
    n = b.steps(60)
    sft_opts = dict(init=str(b.pretrained), data=[str(b.data["sft"])], max_steps=n, batch_size=8, lr=1e-3,
                    warmup_steps=5, **b.common)
    plain = train("sft", b.out / "distill_plain", **sft_opts)
    taught = train("distill", b.out / "distill", teacher=str(b.base), alpha=0.5, temperature=1.5, **sft_opts)
    return {"steps": n, "plain_sft": kl_and_ce(plain, b.base, b.data["sft_eval"], b.args.eval_limit),
            "distilled": kl_and_ce(taught, b.base, b.data["sft_eval"], b.args.eval_limit),
            "seconds": time.perf_counter() - t}


def measure_reason(b: Bench) -> dict:
    t = time.perf_counter()
    ckpt = train("reason", b.out / "reason", init=str(b.base), data=[str(b.data["sft"])], max_steps=b.steps(60),
                 batch_size=8, lr=5e-4, no_think_ratio=0.3, tag_weight=2.0, **b.common)
    qs = [q for q, _ in b.rl_eval]
    return {"steps": b.steps(60), "before": think_rates(b.base, qs, 160), "after": think_rates(ckpt, qs, 160),
            "seconds": time.perf_counter() - t}


def measure_grpo(b: Bench) -> dict:
    t = time.perf_counter()
    args = b.args
    before = accuracy(b.base, b.rl_eval, 96)
    ckpt = train("grpo", b.out / "grpo", init=str(b.base), data=[str(b.data["rl"])], max_steps=b.steps(60), batch_size=8,
                 group_size=args.group_size, max_new_tokens=96, lr=args.grpo_lr, beta_kl=0.02,
                 rewards="correct:1,format:0.2", **b.common)
    curve = reward_curve(b.out / "grpo")
    head, tail = curve[: max(1, len(curve) // 5)], curve[-max(1, len(curve) // 5):]
    return {"steps": b.steps(60), "kinds": args.grpo_kinds, "lr": args.grpo_lr, "group_size": args.group_size,
            "accuracy_before": before, "accuracy_after": accuracy(ckpt, b.rl_eval, 96),
            "reward_first_20pct": sum(r for _, r in head) / len(head),
            "reward_last_20pct": sum(r for _, r in tail) / len(tail), "seconds": time.perf_counter() - t}


MEASURES = {"dpo": measure_dpo, "distill": measure_distill, "reason": measure_reason, "grpo": measure_grpo}


def print_table(results: dict) -> None:
    print("\n| stage | measure (held-out) | before | after |\n|---|---|---|---|")
    if "dpo" in results:
        r = results["dpo"]
        print(f"| dpo ({r['steps']} steps) | log-prob margin chosen-rejected | {r['before']['margin']:.3f} | {r['after']['margin']:.3f} |")
        print(f"| | preference accuracy | {r['before']['accuracy']:.3f} | {r['after']['accuracy']:.3f} |")
    if "distill" in results:
        r = results["distill"]
        print(f"| distill ({r['steps']} steps; before = plain SFT) | KL to teacher | {r['plain_sft']['kl_to_teacher']:.3f} | {r['distilled']['kl_to_teacher']:.3f} |")
        print(f"| | answer-token CE | {r['plain_sft']['ce']:.3f} | {r['distilled']['ce']:.3f} |")
    if "reason" in results:
        r = results["reason"]
        print(f"| reason ({r['steps']} steps) | well-formed think block, thinking on | {r['before']['think_on_well_formed']:.3f} | {r['after']['think_on_well_formed']:.3f} |")
        print(f"| | no think tags, thinking off | {r['before']['think_off_tag_free']:.3f} | {r['after']['think_off_tag_free']:.3f} |")
    if "grpo" in results:
        r = results["grpo"]
        print(f"| grpo ({r['steps']} steps) | rl_eval accuracy | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} |")
        print(f"| | train reward, first vs last 20% of steps | {r['reward_first_20pct']:.3f} | {r['reward_last_20pct']:.3f} |")


def main() -> None:
    b = _bench(_parse_args())
    results_path = b.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["base"] = str(b.base)
    only = set(b.args.only.split(","))
    for name, measure in MEASURES.items():
        if name in only:
            results[name] = measure(b)
            results_path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{name}: {json.dumps(results[name])}")
    print_table(results)


if __name__ == "__main__":
    main()
