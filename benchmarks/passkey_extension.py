"""Passkey retrieval before and after a context-extension stage, at CPU scale.

What it tests: a small model pretrained at 256-token windows on demo prose mixed with synthetic
passkey documents should retrieve the key at length 256 but not beyond (RoPE distances it never
saw); a short continued-pretraining stage at 1024-token windows with YaRN written into the config
should raise accuracy at 512/1024, while a control with the same steps and tokens at 256 without
YaRN should not (and, optionally, a second control at 1024 without YaRN). Beside accuracy, the
perplexity of each model with 256- vs 1024-token windows shows whether positions past 256 work.
Everything runs through the public CLI (`minimind data demo`, `minimind pretrain --recipe ...`,
`minimind eval --suite passkey` / `--task ppl`), one subprocess per command, so the printed
commands are exactly what a user would type.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/passkey_extension.py --out /tmp/passkey
        [--seeds 0 1] [--parallel] [--no-yarn-control]

Measured on 2 shared CPU cores (1.46M parameters, 2.5M base tokens, 410k per continuation):
the model did not learn to copy the key (passkey 0% everywhere), so the perplexity columns carry
the result: at 1024-token windows the base is worse than at 256, the extension better, the
same-budget control unchanged. A larger run (GPU) is needed for accuracy to move.

Contract:
- Training passkey documents use the eval's own text (`minimind.eval.passkey.make_case`: INTRO,
  filler, NEEDLE, QUESTION) followed by the answer " KEY.", with keys and depths from their own
  random stream, and no key that any eval case of the benchmark uses (checked, not hoped).
- Every passkey document is exactly `window - 1` tokens long, so with its EOS it fills one
  training window exactly (the pretrain loader cuts windows from each source's stream of
  documents + EOS): no example is cut in two, every window ends with an answer. A 256-token
  window holds one 256- or two 128-token documents, a 1024-token one one 1024-, two 512- or four
  256-token documents (one source per length). Short documents put more retrieval examples,
  the signal the model learns copying from, into each window.
- Mixtures are weighted recipe sources (`data.mixture`): prose and passkey sources by weight.
- Stages (each skipped when its run directory already holds a finished run, so an interrupted
  benchmark continues): base (seq 256) -> eval; extension (seq 1024, YaRN) -> eval; control
  (seq 256, same steps and tokens per step, no YaRN) -> eval; optionally a second control (seq
  1024, no YaRN). `results_s<seeds>.json` and `table_s<seeds>.md` (the table and every command
  run, with its wall time) go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from minimind.eval.passkey import make_case, make_cases
from minimind.tokenizer import load_tokenizer

EVAL_LENGTHS = (256, 512, 1024)
EVAL_DEPTHS = (0, 25, 50, 75, 100)
BASE_WINDOW, LONG_WINDOW = 256, 1024
# Passkey documents by length in tokens (with EOS) -> share of the passkey rows, for the base's
# 256-token windows and the extension's 1024-token ones (the prompt without filler is 85 tokens).
BASE_DOCS = {128: 0.6, 256: 0.4}
LONG_DOCS = {256: 0.25, 512: 0.35, 1024: 0.4}
DOC_COUNTS = {128: 12000, 256: 5000, 512: 2000, 1024: 1000}
HELDOUT = "pk1023_heldout.jsonl"  # 100 documents of 1024 tokens (seed 999) for perplexity only
TRAIN_SEED_OFFSET = 1000  # training keys: default_rng([1000 + seed, ...]); the eval's: default_rng([0, L, d, t])


def minimind_cmd() -> list[str]:
    """`minimind` as this interpreter runs it (same environment, same PYTHONPATH)."""
    return [sys.executable, "-m", "minimind"]


def eval_keys(trials: int) -> set[str]:
    tok = load_tokenizer()
    return {c.key for c in make_cases(tok, EVAL_LENGTHS, [d / 100 for d in EVAL_DEPTHS], trials, seed=0)}


def passkey_docs(path: Path, n: int, length: int, seed: int, banned: set[str]) -> dict:
    """Write `n` passkey documents of exactly `length` tokens (prompt + " KEY.") to `path` (JSONL).

    The text is decoded from ids the eval's way and re-encoded; a document whose re-encoding is
    not exactly `length` tokens (a merge across a piece boundary) is dropped and redrawn."""
    tok = load_tokenizer()
    rng = np.random.default_rng([TRAIN_SEED_OFFSET + seed, length])
    written = dropped = 0
    with path.open("w", encoding="utf-8") as fh:
        while written < n:
            key = str(int(rng.integers(10000, 100000)))
            depth = float(rng.random())
            if key in banned:
                continue
            answer = f" {key}."
            case = make_case(tok, length - len(tok.encode(answer)), depth, key)
            text = tok.decode(case.prompt_ids) + answer
            if len(tok.encode(text)) != length:
                dropped += 1
                continue
            fh.write(json.dumps({"text": text}) + "\n")
            written += 1
    return {"file": str(path), "docs": n, "tokens_each": length, "redrawn": dropped}


def write_recipe(path: Path, name: str, data: dict[str, float], seq_len: int, batch: int, steps: int,
                 lr: float, warmup: int, seed: int, shape: dict, schedule: str = "cosine") -> Path:
    recipe = {"seed": seed, **shape, "lr": lr, "schedule": schedule, "min_lr_ratio": 0.1,
              "eval_batches": 2, "num_samples": 0, "save_every": 100, "keep_last": 1,
              "phases": [{"name": name, "data": data, "seq_len": seq_len, "batch_size": batch,
                          "max_steps": steps, "warmup_steps": warmup}]}
    path.write_text(json.dumps(recipe, indent=1))
    return path


def run(cmd: list[str], log: Path, log_lines: list[str]) -> float:
    """Run one CLI command (output to `log`), record it, return its wall time in seconds."""
    shown = " ".join(["minimind", *cmd[len(minimind_cmd()):]])
    print(f"$ {shown}", flush=True)
    t0 = time.time()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    log_lines.append(f"{shown}    # {wall:.0f} s wall")
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}), see {log}: {shown}")
    return wall


def finished_ckpt(run_dir: Path) -> Path | None:
    """The final checkpoint of a finished run directory (its latest), or None."""
    ckpts = sorted((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").exists() else []
    return ckpts[-1] if ckpts and (run_dir / "DONE").exists() else None


def train_cmd(run_dir: Path, recipe: Path, data_root: Path, extra: list[str]) -> list[str]:
    return [*minimind_cmd(), "pretrain", "--recipe", str(recipe), "--data-root", str(data_root),
            "--out", str(run_dir), "--device", "cpu", *extra]


def train_all(jobs: list[tuple[Path, list[str]]], parallel: bool, log_lines: list[str]) -> None:
    """Train every (run_dir, command) not finished yet; with `parallel`, at once, one thread each
    (the two-core machine is shared: several one-thread processes get more of it than one)."""
    todo = [(d, c) for d, c in jobs if finished_ckpt(d) is None]
    for run_dir, _ in todo:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted run of this benchmark: start it again, cleanly
    if not parallel:
        for run_dir, cmd in todo:
            run(cmd, run_dir.with_suffix(".log"), log_lines)
            (run_dir / "DONE").touch()
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0, procs = time.time(), []
    for run_dir, cmd in todo:
        shown = " ".join(["minimind", *cmd[len(minimind_cmd()):]])
        print(f"$ OMP_NUM_THREADS=1 {shown} &", flush=True)
        log_lines.append(f"OMP_NUM_THREADS=1 {shown} &")
        procs.append((run_dir, subprocess.Popen(cmd, stdout=run_dir.with_suffix(".log").open("w"),
                                                stderr=subprocess.STDOUT, env=env)))
    for run_dir, proc in procs:
        if proc.wait() != 0:
            sys.exit(f"training failed ({proc.returncode}), see {run_dir.with_suffix('.log')}")
        (run_dir / "DONE").touch()
    log_lines.append(f"wait    # {time.time() - t0:.0f} s wall for the {len(procs)} runs above")


def evaluate(ckpt: Path, out: Path, trials: int, log_lines: list[str]) -> dict:
    if not out.exists():
        run([*minimind_cmd(), "eval", "--ckpt", str(ckpt), "--suite", "passkey",
             "--lengths", ",".join(map(str, EVAL_LENGTHS)), "--depths", ",".join(map(str, EVAL_DEPTHS)),
             "--trials", str(trials), "--json", str(out), "--no-log"], out.with_suffix(".log"), log_lines)
    report = json.loads(out.read_text())
    data = out.parent.parent / "data"
    # Perplexity with windows of 256 vs 1024 tokens (no overlap: positions 0..window-1) on held-out
    # prose and held-out 1024-token passkey documents: does the model break beyond position 256?
    for name, file in (("prose", data / "pretrain_eval.jsonl"), ("passkey", data / HELDOUT)):
        for window in (BASE_WINDOW, LONG_WINDOW):
            ppl_out = out.with_name(f"{out.stem}_{name}_ppl{window}.json")
            if not ppl_out.exists():
                run([*minimind_cmd(), "eval", "--ckpt", str(ckpt), "--task", "ppl", "--data", str(file),
                     "--max-len", str(window), "--stride", str(window), "--json", str(ppl_out), "--no-log"],
                    ppl_out.with_suffix(".log"), log_lines)
            report[f"{name}_ppl_{window}"] = json.loads(ppl_out.read_text())["ppl"]
    return report


def row(name: str, report: dict) -> str:
    cells = [f"{100 * report.get(f'accuracy_len_{L}', float('nan')):.0f}%" for L in EVAL_LENGTHS]
    ppl = [f"{report[f'{name}_ppl_{w}']:.2f}" for name in ("prose", "passkey") for w in (BASE_WINDOW, LONG_WINDOW)]
    return f"| {name} | " + " | ".join(cells) + f" | {100 * report['accuracy']:.0f}% | " + " | ".join(ppl) + " |"


def mixtures(data: Path, seed: int, prose_weight: float, trials: int) -> tuple[dict[str, float], dict[str, float]]:
    """(base mixture at 256, extension mixture at 1024): {source: weight}, passkey files written
    on first use. Short documents pack several retrieval examples into one window: the copy signal
    per token is what the model learns from; prose keeps it a language model."""
    banned = eval_keys(trials)
    pick = {}
    for length in sorted({*BASE_DOCS, *LONG_DOCS}):
        path = data / f"pk{length - 1}_s{seed}.jsonl"
        if not path.exists():
            print(passkey_docs(path, DOC_COUNTS[length], length - 1, seed, banned), flush=True)
        pick[length] = str(path)
    if not (data / HELDOUT).exists():
        print(passkey_docs(data / HELDOUT, 100, LONG_WINDOW - 1, 999, banned), flush=True)
    prose = str(data / "pretrain.jsonl")

    def mix(shares: dict[int, float]) -> dict[str, float]:
        return {prose: prose_weight, **{pick[n]: (1 - prose_weight) * w for n, w in shares.items()}}
    return mix(BASE_DOCS), mix(LONG_DOCS)


def seed_runs(args: argparse.Namespace, seed: int, log_lines: list[str]) -> dict[str, dict]:
    """Base, eval, extension (+ controls), eval, for one seed; returns {model: eval report}."""
    data, here = args.out / "data", args.out / f"s{seed}"
    (here / "recipes").mkdir(parents=True, exist_ok=True)
    short_mix, long_mix = mixtures(data, seed, args.prose_weight, args.trials)
    shape = {"preset": "tiny", "hidden_size": args.hidden_size, "num_layers": args.num_layers,
             "num_heads": args.num_heads, "num_kv_heads": args.num_heads}
    if args.rope_theta:  # not a flag: a --model-config file (tiny's context and vocabulary)
        config = {**{k: v for k, v in shape.items() if k != "preset"}, "max_seq_len": 2048,
                  "vocab_size": 6400, "rope_theta": args.rope_theta}
        (here / "model_config.json").write_text(json.dumps(config))
        shape = {"model_config": str(here / "model_config.json")}
    base = here / "base"
    recipe = write_recipe(here / "recipes/base.json", "base", short_mix, BASE_WINDOW, 8, args.base_steps,
                          args.lr, 50, seed, shape, args.schedule)
    train_all([(base, train_cmd(base, recipe, data, []))], False, log_lines)
    reports = {"base": evaluate(finished_ckpt(base), here / "eval_base.json", args.trials, log_lines)}
    return {**reports, **continuations(args, here, finished_ckpt(base), short_mix, long_mix, seed, log_lines)}


def continuations(args: argparse.Namespace, here: Path, base_ckpt: Path, short_mix: dict, long_mix: dict,
                  seed: int, log_lines: list[str]) -> dict[str, dict]:
    """Extension and controls from the base checkpoint, each evaluated; {model: eval report}."""
    data = args.out / "data"
    init = ["--init", str(base_ckpt), "--max-seq-len", str(2 * LONG_WINDOW)]
    yarn = ["--rope-scaling", f"yarn:{LONG_WINDOW // BASE_WINDOW}:{BASE_WINDOW}"]
    # Same optimizer steps and tokens per step (8 x 256 = 2 x 1024) for every continuation.
    plans = {"extension (1024, YaRN)": ("extend", long_mix, LONG_WINDOW, 2, yarn),
             "control (256, no YaRN)": ("control", short_mix, BASE_WINDOW, 8, [])}
    if args.no_yarn_control:
        plans["control (1024, no YaRN)"] = ("extend_noyarn", long_mix, LONG_WINDOW, 2, [])
    jobs = []
    for name, mix, seq, batch, extra in plans.values():
        recipe = write_recipe(here / f"recipes/{name}.json", name, mix, seq, batch, args.ext_steps,
                              args.ext_lr, 10, seed, {})
        jobs.append((here / name, train_cmd(here / name, recipe, data, [*init, *extra])))
    train_all(jobs, args.parallel, log_lines)
    return {label: evaluate(finished_ckpt(here / name), here / f"eval_{name}.json", args.trials, log_lines)
            for label, (name, *_rest) in plans.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="where data, runs and reports go")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trials", type=int, default=4, help="eval prompts per (length, depth)")
    ap.add_argument("--base-steps", type=int, default=1200, help="base steps at seq 256, batch 8")
    ap.add_argument("--ext-steps", type=int, default=200, help="steps of every continuation (2048 tokens each)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--ext-lr", type=float, default=1e-3)
    ap.add_argument("--prose-weight", type=float, default=0.05, help="share of rows from demo prose")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--num-layers", type=int, default=3)
    ap.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE base (0: tiny's 1e6)")
    ap.add_argument("--schedule", default="wsd", help="base LR schedule: wsd holds the peak LR longer than cosine")
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--no-yarn-control", action="store_true", help="also extend at 1024 without YaRN")
    ap.add_argument("--parallel", action="store_true", help="train the continuations at once, one thread each")
    args = ap.parse_args()
    args.out = args.out.resolve()
    if not (args.out / "data" / "pretrain.jsonl").exists():
        subprocess.run([*minimind_cmd(), "data", "demo", "--out", str(args.out / "data")], check=True,
                       stdout=subprocess.DEVNULL)
    log_lines: list[str] = []
    table = ["| seed | model | " + " | ".join(f"passkey {L}" for L in EVAL_LENGTHS) + " | all | "
             + " | ".join(f"{name} ppl @{w}" for name in ("prose", "passkey-doc") for w in (BASE_WINDOW, LONG_WINDOW))
             + " |", "|---|---|" + "---:|" * (len(EVAL_LENGTHS) + 5)]
    results = {}
    for seed in args.seeds:
        reports = seed_runs(args, seed, log_lines)
        results[seed] = {k: {key: v for key, v in r.items() if key != "predictions"} for k, r in reports.items()}
        table += [row(f"{seed} | {name}", r) for name, r in reports.items()]
    tag = "_".join(f"s{seed}" for seed in args.seeds)
    (args.out / f"results_{tag}.json").write_text(json.dumps(results, indent=1))
    text = "\n".join(table) + "\n\ncommands:\n" + "\n".join(f"    {c}" for c in log_lines) + "\n"
    (args.out / f"table_{tag}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
