"""`minimind eval`: score a checkpoint on perplexity, multiple-choice, generation or tool-call tasks.

    minimind eval --ckpt CKPT --task ppl|ceval|cmmlu|mcq|gen|toolcall --data PATH [--shots K]
                  [--limit N] [--json OUT] [--skip-bad] [--device DEV] [--batch-size B]
    minimind eval --ckpt CKPT                      # the embedded demo suites (same as --task demo)
    minimind eval --ckpt CKPT --suite passkey [--lengths 256,1024] [--depths 0,50,100] [--trials N]
                                                   # passkey retrieval, generated: accuracy by length and depth
    minimind eval --compare A B ... [--task ...]   # checkpoints (evaluated now) or saved reports

The table goes to stdout; progress bars to stderr. `--json OUT` writes every figure with the
checkpoint, the task files and their sha256, and the settings. A checkpoint that lives in a run
directory also gets its results appended to `<run>/eval.jsonl` (unless --no-log).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import UserError
from ..eval.report import append_run_log, format_compare, format_results, load_report
from ..eval.run import Settings, evaluate

TASK_CHOICES = ("ppl", "ceval", "cmmlu", "mcq", "gen", "toolcall", "demo", "passkey")
SUITE_CHOICES = ("demo", "passkey")  # the built-in tasks (no --data): --suite X is --task X


def _numbers(text: str) -> tuple[int, ...]:
    """"256,1024" -> (256, 1024), for --lengths and --depths."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (perplexity, C-Eval/CMMLU, generation, tool calls)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint folder, run directory or Hugging Face folder")
    p.add_argument("--task", choices=TASK_CHOICES, default=None, help="what to evaluate (default: the demo suites)")
    p.add_argument("--suite", choices=SUITE_CHOICES, default=None,
                   help="a built-in suite instead of --task: demo, or passkey (a key hidden in filler text)")
    p.add_argument("--lengths", type=_numbers, default=None, help="passkey: prompt lengths in tokens (default 256,512,1024,2048)")
    p.add_argument("--depths", type=_numbers, default=None,
                   help="passkey: where the key sits, in percent of the filler (default 0,25,50,75,100)")
    p.add_argument("--trials", type=int, default=None, help="passkey: prompts per length and depth (default 4)")
    p.add_argument("--data", help="a folder for ceval/cmmlu (val|test/ and dev/ CSVs), a file otherwise")
    p.add_argument("--shots", type=int, default=0, help="few-shot examples per question (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions/documents/prompts")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the full report as JSON")
    p.add_argument("--skip-bad", action="store_true", help="count malformed records instead of stopping")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps (default cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="compute dtype (default: as stored)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default 16)")
    p.add_argument("--max-seq-len", "--max-len", dest="max_seq_len", type=int, default=None,
                   help="context length for scoring (default: the model's)")
    p.add_argument("--stride", type=int, default=None, help="ppl: sliding-window stride (default: half the context)")
    p.add_argument("--choices", dest="style", choices=["letters", "text"], default="letters",
                   help="mcq JSONL: score choice letters (C-Eval layout) or full choice texts")
    p.add_argument("--think", choices=["off", "on", "both"], default="off", help="gen: thinking mode(s) (default off)")
    p.add_argument("--pass-k", type=int, default=0, help="gen: also sample k answers per prompt for pass@k")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="gen/toolcall: tokens per answer (default 256; 96 in the demo suites)")
    p.add_argument("--temperature", type=float, default=0.7, help="gen pass@k: sampling temperature (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="gen pass@k: nucleus mass (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="gen pass@k: base seed (default 0)")
    p.add_argument("--compare", nargs="+", metavar="CKPT_OR_JSON",
                   help="print several checkpoints (or saved --json reports / eval.jsonl files) side by side")
    p.add_argument("--no-log", action="store_true", help="do not append to the run directory's eval.jsonl")
    p.set_defaults(func=cmd_eval)


def _settings(args: argparse.Namespace) -> Settings:
    for name in ("batch_size", "limit", "max_seq_len", "stride", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    passkey = {}
    if args.lengths:
        passkey["passkey_lengths"] = args.lengths
    if args.depths:
        if any(not 0 <= d <= 100 for d in args.depths):
            raise UserError(f"--depths are percentages in [0, 100], got {args.depths}")
        passkey["passkey_depths"] = tuple(d / 100 for d in args.depths)
    if args.trials is not None:
        if args.trials < 1:
            raise UserError(f"--trials must be >= 1, got {args.trials}")
        passkey["passkey_trials"] = args.trials
    return Settings(**passkey, shots=args.shots, limit=args.limit, batch_size=args.batch_size, skip_bad=args.skip_bad,
                    stride=args.stride, max_seq_len=args.max_seq_len, style=args.style, think=args.think,
                    pass_k=args.pass_k, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, seed=args.seed, device=args.device, dtype=args.dtype)


def _evaluate_one(ckpt: str, args: argparse.Namespace, settings: Settings) -> dict:
    report = evaluate(ckpt, args.task, args.data, settings)
    if not args.no_log:
        log = append_run_log(ckpt, report)
        if log is not None:
            print(f"appended to {log}", file=sys.stderr)
    return report


def _write_json(path: str, data: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.suite is not None:
        if args.task is not None:
            raise UserError("give --task or --suite, not both")
        args.task = args.suite
    if args.task not in (None, "demo", "passkey") and not args.data:
        raise UserError(f"--task {args.task} needs --data")
    if args.task == "passkey" and args.data:
        raise UserError("--suite passkey is generated on the fly; it takes no --data")
    if args.task in (None, "demo") and args.data:
        raise UserError("--data is only used with --task ppl|ceval|cmmlu|mcq|gen|toolcall (the demo suites are built in)")
    settings = _settings(args)
    if args.compare:
        if args.ckpt:
            raise UserError("give the checkpoints to compare after --compare, not with --ckpt")
        reports = [load_report(x) if x.endswith((".json", ".jsonl")) and Path(x).is_file()
                   else _evaluate_one(x, args, settings) for x in args.compare]
        print(format_compare(args.compare, reports))
        if args.json_out:
            _write_json(args.json_out, {"compare": reports})
        return 0
    if not args.ckpt:
        raise UserError("--ckpt is required (or --compare A B ...)")
    report = _evaluate_one(args.ckpt, args, settings)
    print(format_results(report))
    if args.json_out:
        _write_json(args.json_out, report)
    return 0
