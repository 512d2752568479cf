"""GRPO on a verifiable arithmetic task, on CPU: held-out accuracy before and after, and the reward curve.

    OMP_NUM_THREADS=1 python benchmarks/grpo_arith.py --base QS/sft --out OUT [--seed 0 [1 2 ...]]

Why a dedicated task: GRPO learns only from groups whose completions disagree in reward. The demo
RL tasks (4-digit sums, products...) are out of reach of the 2.9M `tiny` quick-start model (0%
arithmetic), so every group scores all zeros and there is no signal. Here the task is easy enough
for the base to solve a fair share of it after an SFT warm-up:

1. data (generated here, deterministic): "What is a + b?" / "What is a - b?" with a in --a-range and
   b in --b-range (a >= b for subtraction; no carry or borrow unless --carry), answered
   "The answer is N." (the demo RL format, which
   the `correct` reward parses). The (op, a, b) triples are split once, by --data-seed, into a
   held-out evaluation set and a training set: no evaluated question is ever trained on.
2. warm-up SFT from --base on the training triples (`sft` stage, thinking off): the SFT starting
   point, which learns the answer format and most of the arithmetic (held-out ~0.73-0.86);
3. held-out accuracy, greedy and sampled pass@1 (mean of --eval-samples samples per question at the
   rollout temperature), thinking off ("before");
4. GRPO from the warm-up checkpoint (`grpo` stage through the one Trainer, --no-thinking, reward
   `correct:1`), on the training questions only. The defaults are the recipe that works on CPU:
   128 prompts per step (--prompts 32 x --grad-accum 4) x G 4, lr 1e-4, Dr. GRPO advantages, 250
   steps (~28 min a seed on one core). With 8 prompts per step the policy gradient is mostly noise
   and accuracy does not rise (docs/benchmarks.md has both);
5. held-out accuracy again ("after"), and the reward curve (OUT/seedS/grpo/reward.png).

Every seed (--seed, several allowed) reruns steps 2-5 with that training seed (model sampling,
data order); the data split stays the same. Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from minimind.chat import render_prompt
from minimind.infer import SamplingParams
from minimind.infer.loading import load_engine
from minimind.locator import METRICS, resolve_checkpoint
from minimind.train.metrics import read_metrics
from minimind.train.plot import plot_run
from minimind.train.recipes import run_stage
from minimind.train.rewards import correctness_reward


def arithmetic_split(a_range: tuple[int, int], b_range: tuple[int, int], eval_size: int, data_seed: int,
                     carry: bool = False) -> tuple[list[tuple], list[tuple]]:
    """All (op, a, b) questions with a, b in the inclusive ranges (a >= b for "-"), shuffled by
    data_seed and cut into (train, held-out eval). Without `carry`, only questions whose units
    digits neither carry nor borrow (54 + 3, 57 - 3): the answer is then "copy the tens, apply a
    one-digit fact to the units", so a held-out question is a new combination of seen parts."""
    def keep(op: str, a: int, b: int) -> bool:
        if op == "-" and a < b:
            return False
        return carry or (a % 10 + b % 10 <= 9 if op == "+" else a % 10 >= b % 10)

    triples = [(op, a, b) for op in "+-" for a in range(a_range[0], a_range[1] + 1)
               for b in range(b_range[0], b_range[1] + 1) if keep(op, a, b)]
    random.Random(data_seed).shuffle(triples)
    if not 0 < eval_size < len(triples):
        sys.exit(f"--eval-size must be in 1..{len(triples) - 1} for these operand ranges")
    return triples[eval_size:], triples[:eval_size]


def question(op: str, a: int, b: int) -> tuple[str, str]:
    return f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)


def write_data(out: Path, train: list[tuple], evals: list[tuple], sft_copies: int, data_seed: int) -> dict[str, Path]:
    """sft.jsonl (each training question `sft_copies` times, shuffled), rl.jsonl and eval.jsonl."""
    out.mkdir(parents=True, exist_ok=True)

    def record(t: tuple) -> dict:
        q, a = question(*t)
        return {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": f"The answer is {a}."}],
                "answer": a, "kind": "add" if t[0] == "+" else "sub"}

    sft = [record(t) for t in train for _ in range(sft_copies)]
    random.Random(data_seed + 1).shuffle(sft)
    files = {"sft": out / "sft.jsonl", "rl": out / "rl.jsonl", "eval": out / "eval.jsonl"}
    for name, rows in (("sft", sft), ("rl", [record(t) for t in train]), ("eval", [record(t) for t in evals])):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def train(stage: str, out: Path, **options) -> Path:
    """Run one stage through the one Trainer (or resume / reuse its run: `run_stage`); return its checkpoint."""
    t = time.perf_counter()
    result = run_stage(stage, out=str(out), progress=False, num_samples=0, eval_batches=0, save_every=0, **options)
    if not result.reused:
        print(f"== {stage}: {result.step} steps in {time.perf_counter() - t:.0f} s")
    return result.checkpoint


def accuracy(ckpt: Path, triples: list[tuple], max_new_tokens: int, temperature: float = 0.0, samples: int = 1) -> dict:
    """Thinking-off accuracy under the same `correct` reward GRPO optimises: greedy by default;
    with a temperature, the mean over `samples` seeded samples per question (sampled pass@1, what
    a GRPO rollout sees; averaging k samples cuts the noise of one 0/1 draw per question)."""
    engine = load_engine(ckpt, max_batch_size=64)
    qa = [question(*t) for t in triples]
    prompts = [render_prompt(engine.tokenizer, [{"role": "user", "content": q}], thinking=False) for q, _ in qa]
    k = samples if temperature > 0 else 1
    params = [SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=i) for i in range(k * len(qa))]
    texts = [s.text for s in engine.generate([p for p in prompts for _ in range(k)], params)]
    scores = [correctness_reward(t, a) for t, (_, a) in zip(texts, [x for x in qa for _ in range(k)])]
    right = [sum(scores[i * k:(i + 1) * k]) / k for i in range(len(qa))]
    texts = texts[::k]
    by_op = {op: [r for r, t in zip(right, triples) if t[0] == op] for op in "+-"}
    return {"accuracy": sum(right) / len(right), **{f"accuracy_{op}": sum(v) / max(1, len(v)) for op, v in by_op.items()},
            "examples": [f"{q} -> {t!r}" for (q, _), t in list(zip(qa, texts))[:4]]}


def reward_curve(run_dir: Path) -> list[float]:
    """Per-step mean reward from metrics.jsonl; `minimind plot` draws it to run_dir/reward.png."""
    plot_run(run_dir)
    return [r["reward"] for r in read_metrics(run_dir / METRICS) if r.get("split") == "train" and "reward" in r]


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="SFT checkpoint or run dir to start from (e.g. a quick start's sft/)")
    ap.add_argument("--out", default="runs/grpo_arith")
    ap.add_argument("--seed", type=int, nargs="+", default=[0], help="training seeds; each is a full warm-up + GRPO run")
    ap.add_argument("--data-seed", type=int, default=1234, help="fixes the train/held-out split of the questions")
    ap.add_argument("--a-range", type=int, nargs=2, default=(10, 99), metavar=("LO", "HI"), help="first operand")
    ap.add_argument("--b-range", type=int, nargs=2, default=(1, 9), metavar=("LO", "HI"), help="second operand")
    ap.add_argument("--carry", action="store_true", help="also questions whose units digits carry or borrow")
    ap.add_argument("--eval-size", type=int, default=200)
    ap.add_argument("--sft-copies", type=int, default=4, help="times each training question appears in the warm-up file")
    ap.add_argument("--warmup-steps", type=int, default=400, help="warm-up SFT steps (0: start GRPO from --base)")
    ap.add_argument("--warmup-lr", type=float, default=1e-3)
    ap.add_argument("--grpo-steps", type=int, default=250)
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--grpo-lr-warmup", type=int, default=10, help="GRPO linear lr warmup steps")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the GRPO rollouts")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per GRPO micro-batch (each sampled --group-size times)")
    ap.add_argument("--beta-kl", type=float, default=0.0)
    ap.add_argument("--scale-advantages", action=argparse.BooleanOptionalAction, default=False,
                    help="divide advantages by the group's reward std (--no-scale-advantages: Dr. GRPO)")
    ap.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction, default=True,
                    help="GRPO leaves the (tied) token embeddings alone; without it lr 3e-4 collapsed the model")
    ap.add_argument("--rewards", default="correct:1")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--eval-samples", type=int, default=8,
                    help="samples per held-out question for the sampled pass@1 (at --temperature)")
    ap.add_argument("--grad-accum", type=int, default=4, help="GRPO micro-batches per step (prompts per step = "
                                                              "--prompts x --grad-accum)")
    return ap.parse_args()


def run_seed(args: argparse.Namespace, seed: int, base: Path, data: dict[str, Path], eval_set: list[tuple],
             train_probe: list[tuple]) -> dict:
    """Warm-up SFT and GRPO with this training seed; accuracies before/after and the reward curve."""
    t = time.perf_counter()
    run = Path(args.out) / f"seed{seed}"
    start = base
    if args.warmup_steps:
        start = train("sft", run / "warmup", init=str(base), data=[str(data["sft"])], max_steps=args.warmup_steps,
                      batch_size=8, seq_len=256, lr=args.warmup_lr, warmup_steps=5, seed=seed)
    before = accuracy(start, eval_set, args.max_new_tokens)
    before_train = accuracy(start, train_probe, args.max_new_tokens)
    # What the rollouts see: with few right samples per group of G, most groups carry no signal.
    sampled_before = accuracy(start, train_probe, args.max_new_tokens, args.temperature)["accuracy"]
    sampled_heldout_before = accuracy(start, eval_set, args.max_new_tokens, args.temperature, args.eval_samples)["accuracy"]
    print(f"seed {seed}: start held-out {before['accuracy']:.3f} (sampled {sampled_heldout_before:.3f}), "
          f"trained {before_train['accuracy']:.3f}, "
          f"sampled at T={args.temperature} {sampled_before:.3f}")
    ckpt = train("grpo", run / "grpo", init=str(start), data=[str(data["rl"])], max_steps=args.grpo_steps,
                 batch_size=args.prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                 temperature=args.temperature, lr=args.grpo_lr, warmup_steps=args.grpo_lr_warmup, beta_kl=args.beta_kl,
                 freeze_embeddings=args.freeze_embeddings, rewards=args.rewards,
                 scale_advantages=args.scale_advantages, grad_accum=args.grad_accum,
                 thinking=False, seq_len=128, seed=seed)
    after = accuracy(ckpt, eval_set, args.max_new_tokens)
    after_train = accuracy(ckpt, train_probe, args.max_new_tokens)
    sampled_heldout_after = accuracy(ckpt, eval_set, args.max_new_tokens, args.temperature, args.eval_samples)["accuracy"]
    rewards = reward_curve(run / "grpo")
    n = max(1, len(rewards) // 5)
    return {
        "heldout_before": before, "heldout_after": after,
        "train_before": before_train["accuracy"], "train_after": after_train["accuracy"],
        "train_sampled_before": sampled_before,
        "heldout_sampled_before": sampled_heldout_before, "heldout_sampled_after": sampled_heldout_after,
        "reward_first_20pct": sum(rewards[:n]) / n, "reward_last_20pct": sum(rewards[-n:]) / n,
        "reward_png": str(run / "grpo" / "reward.png"), "seconds": time.perf_counter() - t,
    }


def main() -> None:
    args = _parse_args()
    out = Path(args.out)
    base = resolve_checkpoint(args.base)
    train_set, eval_set = arithmetic_split(tuple(args.a_range), tuple(args.b_range), args.eval_size, args.data_seed, args.carry)
    data = write_data(out / "data", train_set, eval_set, args.sft_copies, args.data_seed)
    train_probe = train_set[: args.eval_size]  # accuracy on trained questions, for contrast
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["config"] = {**vars(args), "base": str(base), "train_questions": len(train_set), "eval_questions": len(eval_set)}
    for seed in args.seed:
        results[f"seed{seed}"] = run_seed(args, seed, base, data, eval_set, train_probe)
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        r = results[f"seed{seed}"]
        print(f"seed {seed}: held-out {r['heldout_before']['accuracy']:.3f} -> {r['heldout_after']['accuracy']:.3f}, "
              f"reward {r['reward_first_20pct']:.3f} -> {r['reward_last_20pct']:.3f} ({r['seconds']:.0f} s)")

    print("\n| seed | held-out accuracy before | after | (+ / -) after | held-out sampled pass@1 before | after | "
          "trained questions before | after | reward first 20% | last 20% |\n|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seed:
        r = results[f"seed{seed}"]
        b, a = r["heldout_before"], r["heldout_after"]
        print(f"| {seed} | {b['accuracy']:.3f} | {a['accuracy']:.3f} | {a['accuracy_+']:.3f} / {a['accuracy_-']:.3f} | "
              f"{r['heldout_sampled_before']:.3f} | {r['heldout_sampled_after']:.3f} | "
              f"{r['train_before']:.3f} | {r['train_after']:.3f} | {r['reward_first_20pct']:.3f} | {r['reward_last_20pct']:.3f} |")


if __name__ == "__main__":
    main()
