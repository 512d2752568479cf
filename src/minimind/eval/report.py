"""Presenting evaluation results: terminal tables, the --json report, side-by-side comparison, eval.jsonl.

Contract:
- A *result* is one task's dict (`{"task", "n", "accuracy", ...}` or `{"task": "ppl", "loss", "ppl",
  "bits_per_byte", ...}`), plus "files" [{path, sha256}] and "settings". A *report* is
  {"checkpoint", "created", "results": [result, ...]}; with one result its keys are also copied to
  the top level, so `report["accuracy"]` works for a single-task run.
- `metrics(result)` lists the figures worth printing (numbers only, primary figure first; the rest
  sorted by name, or, for tasks in KEEP_ORDER such as passkey's per-length figures, as the result
  lists them).
- `format_results(report)` is the readable table; `format_compare(labels, reports)` puts several
  checkpoints' figures side by side (rows task/metric, one column each); `format_summary(labels,
  reports)` is the compact one (one row per checkpoint, one column per task: its headline figure,
  bits per byte for ppl, accuracy otherwise), as quickstart prints it after each stage. A passkey
  result also gets its accuracy table by length (rows) and needle depth (columns).
- `flat_metrics(report)` names every figure `eval/{task}_{metric}` (metrics.jsonl, TensorBoard).
- `append_run_log(ckpt, report)` appends one line per result to `<run dir>/eval.jsonl` when the
  checkpoint lives in a run directory (`<run>/checkpoints/<name>`), so runs compare later.
- `file_info(path)` hashes a file, or a folder (every file in it, sorted by relative path).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..errors import UserError
from ..locator import resolve_checkpoint, run_dir_of

PRIMARY = {"ppl": ("loss", "ppl", "bits_per_byte")}
HEADLINE = {"ppl": "bits_per_byte"}  # the one figure per task of the compact summary (else accuracy)
SKIP_KEYS = {"n", "shots", "pass_k", "max_new_tokens", "context", "stride", "tokens", "bytes", "truncated",
             "skipped", "seconds", "trials"}
KEEP_ORDER = {"passkey"}  # accuracy_len_256, _512, _1024 read best in the result's (numeric) order


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_info(path: str | Path) -> dict:
    """{"path", "sha256"} of a file, or of a folder (hash of every file's relative path and hash)."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "sha256": _sha256_file(p)}
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p).as_posix()}\0{_sha256_file(f)}\n".encode())
    return {"path": str(p), "sha256": h.hexdigest()}


def make_report(checkpoint: str, results: list[dict]) -> dict:
    report = {"checkpoint": str(checkpoint), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": results}
    if len(results) == 1:
        report = {**results[0], **report}
    return report


def metrics(result: dict) -> list[tuple[str, float]]:
    first = PRIMARY.get(result["task"], ("accuracy",))
    rest = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in SKIP_KEYS and k not in first]
    if result["task"] not in KEEP_ORDER:
        rest.sort()
    return [(k, float(result[k])) for k in (*first, *rest) if k in result]


def format_value(name: str, value: float | None) -> str:
    """A figure as the tables print it: accuracies as percentages, others with four decimals."""
    if value is None:
        return "-"
    if "accuracy" in name or name.startswith("pass@"):
        return f"{100 * value:.2f}%"
    return f"{value:.4g}" if abs(value) >= 1e5 else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def format_results(report: dict, per_subject: bool = True) -> str:
    rows = []
    for res in report["results"]:
        for i, (name, value) in enumerate(metrics(res)):
            rows.append([res["task"] if i == 0 else "", name, format_value(name, value), str(res["n"]) if i == 0 else ""])
    text = f"checkpoint: {report['checkpoint']}\n" + _table(["task", "metric", "value", "n"], rows)
    timing = [f"{r['task']} {r['n']} in {r['seconds']:.1f} s ({r['n'] / max(r['seconds'], 1e-9):.1f}/s)"
              for r in report["results"] if "seconds" in r]
    if timing:
        text += "\ntime: " + ", ".join(timing)
    for res in report["results"]:
        if res["task"] == "passkey" and res.get("grid"):
            text += "\n\n" + _passkey_grid(res)
        subjects = res.get("per_subject") or {}
        if per_subject and len(subjects) > 1:
            sub_rows = [[s, "accuracy", format_value("accuracy", a)] for s, a in subjects.items()]
            text += f"\n\n{res['task']} per subject\n" + _table(["subject", "metric", "value"], sub_rows)
    return text


def _passkey_grid(res: dict) -> str:
    """Accuracy by prompt length (rows) and needle depth (columns), with each row's mean."""
    depths = list(next(iter(res["grid"].values())))
    rows = [[length, f"{res['accuracy_len_' + length]:.0%}"] + [f"{cells[d]:.0%}" for d in depths]
            for length, cells in res["grid"].items()]
    text = "passkey accuracy by length (tokens) and depth\n" + _table(["length", "all"] + [f"{d}%" for d in depths], rows)
    if res.get("skipped_lengths"):
        text += f"\nskipped (longer than the context): {', '.join(map(str, res['skipped_lengths']))}"
    return text


def format_compare(labels: list[str], reports: list[dict]) -> str:
    """One row per (task, metric) seen in any report, one column per checkpoint."""
    keys: list[tuple[str, str]] = []
    values: list[dict[tuple[str, str], float]] = []
    for rep in reports:
        got = {}
        for res in rep["results"]:
            for name, value in metrics(res):
                got[(res["task"], name)] = value
                if (res["task"], name) not in keys:
                    keys.append((res["task"], name))
        values.append(got)
    rows = [[task, name] + [format_value(name, v.get((task, name))) for v in values] for task, name in keys]
    legend = "\n".join(f"  [{i + 1}] {label}" for i, label in enumerate(labels))
    return "checkpoints:\n" + legend + "\n" + _table(["task", "metric"] + [f"[{i + 1}]" for i in range(len(labels))], rows)


def flat_metrics(report: dict) -> dict[str, float]:
    """{"eval/mcq_accuracy": 0.31, "eval/ppl_bits_per_byte": 2.4, ...}: every figure of every result."""
    return {f"eval/{res['task']}_{name}": value for res in report["results"] for name, value in metrics(res)}


def format_summary(labels: list[str], reports: list[dict]) -> str:
    """One row per report (e.g. per training stage), one column per task with its headline figure."""
    tasks: list[str] = []
    for rep in reports:
        tasks += [r["task"] for r in rep["results"] if r["task"] not in tasks]
    names = [HEADLINE.get(t, "accuracy") for t in tasks]
    header = ["model"] + [f"{t} {'bits/byte' if n == 'bits_per_byte' else n}" for t, n in zip(tasks, names)]
    rows = []
    for label, rep in zip(labels, reports):
        got = {r["task"]: r for r in rep["results"]}
        rows.append([label] + [format_value(n, got[t].get(n)) if t in got else "-" for t, n in zip(tasks, names)])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _run_of(ckpt: str | Path) -> Path | None:
    """The run directory `ckpt` (a checkpoint or run directory) belongs to; None for a Hugging Face folder."""
    try:
        return run_dir_of(resolve_checkpoint(ckpt))
    except UserError:  # a Hugging Face folder is not a run's checkpoint
        return None


def append_run_log(ckpt: str | Path, report: dict) -> Path | None:
    run = _run_of(ckpt)
    if run is None:
        return None
    name = resolve_checkpoint(ckpt).name
    with open(run / "eval.jsonl", "a", encoding="utf-8") as fh:
        for res in report["results"]:
            slim = {k: v for k, v in res.items() if k != "predictions"}
            fh.write(json.dumps({"created": report["created"], "checkpoint": name, **slim}, ensure_ascii=False) + "\n")
    return run / "eval.jsonl"


def load_report(path: str | Path) -> dict:
    """A saved --json report, or the last run's lines of an eval.jsonl, as a report."""
    p = Path(path)
    try:
        if p.suffix == ".jsonl":
            lines = [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
            last = lines[-1].get("created") if lines else None
            report = {"checkpoint": str(p), "results": [x for x in lines if x.get("created") == last]}
        else:
            report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{p}: not a readable evaluation report ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list) or not report["results"]:
        raise UserError(f"{p}: not an evaluation report (no 'results' list); write one with --json")
    return report
