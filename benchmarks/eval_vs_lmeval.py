"""Scoring speed: `minimind eval` vs lm-evaluation-harness, same questions and documents, same weights.

    .venv/bin/python benchmarks/eval_vs_lmeval.py                      # small, 0- and 5-shot, 2 repeats
    .venv/bin/python benchmarks/eval_vs_lmeval.py --shots 0 --repeats 3 --ckpt out/sft

Questions: the embedded demo multiple-choice suite (320 questions, C-Eval layout), its four subjects
filed under official C-Eval subject names so that lm-eval's own task files apply unchanged (prompt
template, description, first-n few-shot sampler); `minimind.eval.lmeval_tasks` points them at the
local files. Perplexity: the demo's 97 held-out documents (`--task ppl`) against lm-eval's
`loglikelihood_rolling` task on the same texts (`write_lmeval_ppl_task`), lm-eval's prefix token set
to our EOS so that both score the same tokens (every document fits one window).
Model: `--ckpt`, or a randomly initialised `--preset` (speed does not depend on the weights; they are
scaled so that answers vary), exported once with `export_hf`; lm-eval runs its `hf` model on that
folder, we run `minimind.eval.evaluate` on the same folder, both on the CPU in float32 with the same
batch size. Each run is timed whole (loading the model and the data included), the two tools
interleaved repeat by repeat; the table gives the medians, the ratio and whether both gave the same
result (every answer; the bits per byte to 1e-5). Needs the `eval` extra and `accelerate`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from minimind.checkpoint import load_model
from minimind.config import get_preset
from minimind.data.demo.evalsets import write_demo_eval
from minimind.eval import Settings, evaluate
from minimind.eval.lmeval_tasks import write_lmeval_ppl_task, write_lmeval_tasks
from minimind.interop import export_hf
from minimind.model import MiniMindLM
from minimind.tokenizer import default_tokenizer_dir

# Demo subject -> an official C-Eval subject whose lm-eval task file the questions are run under.
OFFICIAL = {"arithmetic": "high_school_mathematics", "units": "high_school_physics",
            "vocabulary": "chinese_language_and_literature", "identity": "ideological_and_moral_cultivation"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="a checkpoint or HF folder (default: a random --preset model)")
    p.add_argument("--preset", default="small")
    p.add_argument("--shots", default="0,5", help="comma-separated few-shot counts (default 0,5)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-ppl", dest="ppl", action="store_false", help="skip the perplexity comparison")
    return p.parse_args(argv)


def random_model(preset: str) -> MiniMindLM:
    """A random `preset` model whose answers depend on the question: plain random init gives nearly
    uniform logits and one answer letter for every prompt (then "same answers" would mean little),
    so the embeddings and projections are scaled up, as in tests/test_eval_support.py."""
    torch.manual_seed(0)
    model = MiniMindLM(get_preset(preset)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name or "embed" in name:
                p.mul_(10)
    return model


def demo_questions_as_ceval(out: Path) -> Path:
    """The demo suite's C-Eval folder with each subject's files renamed to its official subject."""
    src = write_demo_eval(out / "demo")["mcq"]
    for split in ("val", "dev"):
        (out / "ceval" / split).mkdir(parents=True)
        for ours, official in OFFICIAL.items():
            shutil.copy(src / split / f"{ours}_{split}.csv", out / "ceval" / split / f"{official}_{split}.csv")
    return out / "ceval"


def lm_eval_hf(hf: Path, names: list[str], task_dir: Path, batch: int, model_args: str = "", **kwargs) -> dict:
    """lm-eval's `simple_evaluate` with its `hf` model on the folder `hf` (CPU, float32)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf},device=cpu,dtype=float32{model_args}",
                                   tasks=names, task_manager=TaskManager(include_path=str(task_dir)),
                                   batch_size=batch, **kwargs)


def run_lm_eval(hf: Path, tasks: dict[str, str], task_dir: Path, shots: int, batch: int) -> dict[tuple, str]:
    """lm-eval's `hf` model on `tasks`: {(subject, row): predicted letter}."""
    out = lm_eval_hf(hf, list(tasks.values()), task_dir, batch, num_fewshot=shots, log_samples=True)
    preds = {}
    for subject, name in tasks.items():
        for s in out["samples"][name]:
            lls = [r[0] for r in s["filtered_resps"]]
            preds[subject, s["doc_id"]] = "ABCD"[max(range(4), key=lambda i: (lls[i], -i))]  # first of equal maxima
    return preds


def run_ours(hf: Path, root: Path, shots: int, batch: int) -> dict[tuple, str]:
    """`minimind eval` on the folder: {(subject, row): predicted letter} (rows in file order)."""
    report = evaluate(hf, "ceval", root, Settings(shots=shots, batch_size=batch))
    rows: dict[str, int] = {}
    preds = {}
    for p in report["predictions"]:
        row = rows[p["subject"]] = rows.get(p["subject"], -1) + 1
        preds[p["subject"], row] = p["pred"]
    return preds


def side_by_side(ours, theirs, repeats: int) -> tuple:
    """Run `ours()` and `theirs()` in turn `repeats` times. Returns [(our result, theirs)] per repeat,
    the table's timing cells (median seconds of each, median (range) of theirs / ours per repeat) and
    the two medians."""
    ours_t, theirs_t, results = [], [], []
    for _ in range(repeats):
        t, mine = timed(ours)
        ours_t.append(t)
        t, other = timed(theirs)
        theirs_t.append(t)
        results.append((mine, other))
    ratios = [b / a for a, b in zip(ours_t, theirs_t)]
    cells = (f"{statistics.median(ours_t):.1f} | {statistics.median(theirs_t):.1f} | "
             f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
    return results, cells, (statistics.median(ours_t), statistics.median(theirs_t))


def compare_mcq(hf: Path, root: Path, tasks: dict[str, str], task_dir: Path, shots: int, batch: int,
                repeats: int) -> None:
    """Time `--task ceval` and lm-eval's tasks on the same questions; print a table row."""
    results, cells, (ours_s, theirs_s) = side_by_side(lambda: run_ours(hf, root, shots, batch),
                                                      lambda: run_lm_eval(hf, tasks, task_dir, shots, batch), repeats)
    same = all(mine == theirs for mine, theirs in results)
    mine = results[-1][0]
    n = len(mine)
    print(f"| multiple choice, {shots}-shot | {cells} | {n / ours_s:.1f}, {n / theirs_s:.1f} | "
          f"{'yes' if same else 'NO'} ({n} questions, {len(set(mine.values()))} distinct answers) |")


def compare_ppl(hf: Path, docs: Path, task_dir: Path, eos: int, batch: int, repeats: int) -> None:
    """Time `--task ppl` and lm-eval's rolling log-likelihood on `docs`; print a table row."""
    name = write_lmeval_ppl_task(docs, task_dir)

    def lm_eval_bpb() -> float:
        return lm_eval_hf(hf, [name], task_dir, batch, f",prefix_token_id={eos}")["results"][name]["bits_per_byte,none"]

    results, cells, _ = side_by_side(lambda: evaluate(hf, "ppl", docs, Settings(batch_size=batch))["bits_per_byte"],
                                     lm_eval_bpb, repeats)
    same = all(abs(a - b) <= 1e-5 * abs(b) for a, b in results)
    mine, theirs = results[-1]
    print(f"| perplexity, 97 documents | {cells} | - | "
          f"{'yes' if same else 'NO'} (bits per byte {mine:.6f} vs {theirs:.6f}) |")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="eval_vs_lmeval_"))
    try:
        model = load_model(args.ckpt) if args.ckpt else random_model(args.preset)
        hf = work / "hf"
        export_hf(model, hf, tokenizer_dir=default_tokenizer_dir())
        root = demo_questions_as_ceval(work)
        tasks = write_lmeval_tasks("ceval", root, list(OFFICIAL.values()), work / "tasks")
        print(f"# scoring side by side with lm-eval, {args.ckpt or 'random ' + args.preset}, 320 demo questions, "
              f"97 demo documents, CPU float32, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}")
        print("\n| task | minimind eval (s) | lm-eval hf (s) | lm-eval / minimind, median (range) "
              "| questions/s: ours, lm-eval | same result |")
        print("|---|---|---|---|---|---|")
        for shots in (int(k) for k in args.shots.split(",")):
            compare_mcq(hf, root, tasks, work / "tasks", shots, args.batch_size, args.repeats)
        if args.ppl:
            compare_ppl(hf, work / "demo" / "ppl.jsonl", work / "ppl_task", model.config.eos_token_id,
                        args.batch_size, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
