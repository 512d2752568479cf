"""PPO next to GRPO on the easy arithmetic task, at equal rollouts, on CPU.

    OMP_NUM_THREADS=1 python benchmarks/ppo_vs_grpo.py --base QS/sft --out OUT [--seed 0]

The task and split are benchmarks/grpo_arith.py's ("What is a + b?" / "What is a - b?", a in 10..99,
b in 1..9, no carry or borrow; 200 held-out questions never trained on), and so is the warm-up: SFT
from --base on the training questions, the common starting point. From it, with the same seed:
  grpo  the `grpo` stage: G completions per prompt, group-relative advantages (Dr. GRPO, r - mean);
  ppo   the `ppo` stage: the same number of completions per step, each its own sample, advantages
        from GAE over a learned value head (whitened), clipped policy and value losses.
Both use reward `correct:1`, thinking off, temperature 1, no KL (beta 0), frozen embeddings, the
same lr, steps and prompts x G x grad-accum rollouts per step. Reported: held-out greedy accuracy,
held-out sampled pass@1 (--eval-samples per question at T = 1) and the mean training reward of the
first and last 20% of steps. Writes OUT/results.json (finished runs are reused) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from grpo_arith import accuracy, arithmetic_split, write_data
from tool_rl import train

from minimind.locator import METRICS, resolve_checkpoint
from minimind.train.metrics import read_metrics


def reward_curve(run: Path) -> tuple[float, float]:
    rewards = [r["reward"] for r in read_metrics(run / METRICS) if r.get("split") == "train" and "reward" in r]
    n = max(1, len(rewards) // 5)
    return sum(rewards[:n]) / n, sum(rewards[-n:]) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="SFT checkpoint or run dir (e.g. a quick start's sft/)")
    ap.add_argument("--out", default="runs/ppo_vs_grpo")
    ap.add_argument("--seed", type=int, nargs="+", default=[0])
    ap.add_argument("--warmup-steps", type=int, default=250,
                    help="warm-up SFT steps: 150 leaves 7%% sampled accuracy, 400 gives 90%%; RL needs groups that disagree")
    ap.add_argument("--steps", type=int, default=30, help="RL optimizer steps of each method")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args()
    out = Path(args.out)
    train_set, eval_set = arithmetic_split((10, 99), (1, 9), 200, 1234)
    data = write_data(out / "data", train_set, eval_set, 4, 1234)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results["config"] = vars(args)

    def measure(ckpt: Path) -> dict:
        greedy = accuracy(ckpt, eval_set, args.max_new_tokens)["accuracy"]
        sampled = accuracy(ckpt, eval_set, args.max_new_tokens, 1.0, args.eval_samples)["accuracy"]
        return {"greedy": greedy, "sampled": sampled}

    base = resolve_checkpoint(args.base)
    for seed in args.seed:
        run = out / f"seed{seed}"
        start = train("sft", run / "warmup", init=str(base), data=[str(data["sft"])], max_steps=args.warmup_steps,
                      batch_size=8, seq_len=256, lr=1e-3, warmup_steps=5, seed=seed)
        res = results.setdefault(f"seed{seed}", {})
        res.setdefault("start", measure(start))
        common = dict(data=[str(data["rl"])], max_steps=args.steps, batch_size=args.prompts, group_size=args.group_size,
                      grad_accum=args.grad_accum, max_new_tokens=args.max_new_tokens, temperature=1.0, lr=args.lr,
                      warmup_steps=3, beta_kl=0.0, freeze_embeddings=True, rewards="correct:1", thinking=False,
                      seq_len=128, seed=seed)
        for method, extra in (("grpo", {"scale_advantages": False}), ("ppo", {})):
            if method in res:
                continue
            t = time.perf_counter()
            ckpt = train(method, run / method, init=str(start), **common, **extra)
            first, last = reward_curve(run / method)
            res[method] = {**measure(ckpt), "reward_first_20pct": first, "reward_last_20pct": last,
                           "seconds": time.perf_counter() - t}
            results_path.write_text(json.dumps(results, indent=1) + "\n")
            print(f"seed {seed} {method}: {res['start']} -> {res[method]}")
        results_path.write_text(json.dumps(results, indent=1) + "\n")

    rollouts = args.prompts * args.group_size * args.grad_accum
    print(f"\n{args.steps} steps x {rollouts} rollouts per step, lr {args.lr}\n")
    print("| seed | method | held-out greedy before | after | sampled pass@1 before | after | reward first 20% | last 20% |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seed:
        r = results[f"seed{seed}"]
        for method in ("grpo", "ppo"):
            m = r[method]
            print(f"| {seed} | {method} | {r['start']['greedy']:.3f} | {m['greedy']:.3f} | {r['start']['sampled']:.3f} | "
                  f"{m['sampled']:.3f} | {m['reward_first_20pct']:.3f} | {m['reward_last_20pct']:.3f} |")


if __name__ == "__main__":
    main()
