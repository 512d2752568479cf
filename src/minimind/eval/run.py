"""Running evaluations: one task on one file, or the embedded demo suites, on a loaded engine.

Contract:
- `load(ckpt, settings)` loads a checkpoint, run directory or Hugging Face folder with its
  tokenizer through `minimind.infer.load_engine` (the one loader; nothing here locates files).
- `run_task(engine, task, data, settings)` runs one of TASKS ("ppl", "ceval", "cmmlu", "mcq", "gen",
  "toolcall") and returns its result dict with "files" (paths and sha256) and "settings" added.
- `run_demo(engine, settings)` writes the demo eval files (`minimind.data.demo.write_demo_eval`) to
  a temporary folder and runs ppl, mcq (C-Eval layout), gen and toolcall on them; each result has
  "suite": "demo" and its task name as the demo names it.
- `evaluate(ckpt, task, data, settings)` = load + run + `report.make_report`.
A progress bar (tqdm, on stderr, only on a terminal) shows each task's scored requests.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import UserError
from .gen import evaluate_gen, read_prompts
from .mcq import evaluate_mcq, limited
from .mcq_data import read_suite
from .ppl import evaluate_ppl, read_documents
from .report import file_info, make_report
from .scorer import Scorer
from .toolcall import evaluate_toolcall, read_cases

TASKS = ("ppl", "ceval", "cmmlu", "mcq", "gen", "toolcall")
DEMO_TASKS = {"ppl": "ppl", "mcq": "ceval", "gen": "gen", "toolcall": "toolcall"}  # demo name -> reader
MAX_NEW_TOKENS = 256
# The demo answers are one line and the demo calls one block (< 60 tokens); a model that never
# stops should not spend minutes per suite.
DEMO_MAX_NEW_TOKENS = 96


@dataclass
class Settings:
    shots: int = 0
    limit: int | None = None
    batch_size: int = 16
    skip_bad: bool = False
    stride: int | None = None  # ppl sliding window (default: half the context)
    max_len: int | None = None  # context used for scoring (default: the model's)
    style: str = "letters"  # generic mcq: lettered choices or full-text continuations
    think: str = "off"  # gen: off, on or both
    pass_k: int = 0  # gen: samples per prompt for pass@k (0: greedy only)
    max_new_tokens: int | None = None  # gen/toolcall: None = 256 (DEMO_MAX_NEW_TOKENS in the demo suites)
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    device: str = "cpu"
    dtype: str | None = None


def load(ckpt: str | Path, s: Settings):
    import torch

    from ..infer import load_engine

    dtype = getattr(torch, s.dtype) if s.dtype else None
    return load_engine(ckpt, max_batch_size=s.batch_size, max_len=s.max_len, device=s.device, dtype=dtype)


def _bar(desc: str, total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)


def _settings_for(task: str, s: Settings) -> dict:
    keys = {"ppl": ("limit", "stride", "max_len"), "gen": ("limit", "think", "pass_k", "max_new_tokens",
                                                            "temperature", "top_p", "seed"),
            "toolcall": ("limit", "max_new_tokens")}.get(task, ("limit", "shots", "style", "max_len"))
    return {k: v for k, v in asdict(s).items() if k in keys + ("batch_size", "skip_bad", "device", "dtype")}


def run_task(engine, task: str, data: str | Path, s: Settings) -> dict:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose from {', '.join(TASKS)} or demo")
    scorer = Scorer(engine.model, engine.tokenizer, s.batch_size, s.max_len)
    s = replace(s, max_new_tokens=s.max_new_tokens or MAX_NEW_TOKENS)
    start = time.perf_counter()
    if task == "ppl":
        docs = read_documents(data, scorer, s.limit, s.skip_bad)
        with _bar("ppl", None) as bar:
            res = evaluate_ppl(scorer, docs, s.stride, bar.update)
        files, skipped = [Path(data)], docs.skipped
    elif task in ("ceval", "cmmlu", "mcq"):
        suite = read_suite(task, data, s.skip_bad)
        total = sum(len(q.choices) for q in limited(suite.questions, suite.family, s.limit))
        with _bar(task, total) as bar:
            res = evaluate_mcq(scorer, suite, s.shots, s.style, bar.update, s.limit)
        files, skipped = suite.files, suite.skipped
    elif task == "gen":
        prompts = read_prompts(data, s.skip_bad, s.limit)
        runs = (2 if s.think == "both" else 1) * (1 + s.pass_k)
        with _bar("gen", len(prompts.records) * runs) as bar:
            res = evaluate_gen(engine, prompts, s.think, s.pass_k, s.max_new_tokens, s.temperature, s.top_p,
                               s.seed, bar.update)
        files, skipped = prompts.files, prompts.skipped
    else:
        cases = read_cases(data, s.skip_bad, s.limit)
        with _bar("toolcall", len(cases.records)) as bar:
            res = evaluate_toolcall(engine, cases, s.max_new_tokens, progress=bar.update)
        files, skipped = cases.files, cases.skipped
    res["seconds"] = round(time.perf_counter() - start, 3)  # reading, tokenising and scoring; not loading
    res["skipped"] = skipped
    res["truncated"] = scorer.truncated
    res["files"] = [file_info(f) for f in files]
    res["settings"] = _settings_for(task, s)
    return res


def write_demo_files(out_dir: Path) -> dict[str, Path]:
    """The demo eval files from `minimind.data.demo.write_demo_eval`, or a UserError if it is missing."""
    from ..data import demo

    writer = getattr(demo, "write_demo_eval", None)
    if writer is None:
        raise UserError("this version has no embedded demo eval suites (minimind.data.demo.write_demo_eval); "
                        "pass --task and --data")
    return writer(out_dir)


def run_demo(engine, s: Settings, writer=write_demo_files) -> list[dict]:
    results = []
    s = replace(s, max_new_tokens=s.max_new_tokens or DEMO_MAX_NEW_TOKENS)
    with tempfile.TemporaryDirectory(prefix="minimind-demo-eval-") as tmp:
        paths = writer(Path(tmp))
        for name, reader in DEMO_TASKS.items():
            if name not in paths:
                continue
            res = run_task(engine, reader, paths[name], s)
            res.update(task=name, suite="demo")
            for f in res["files"]:  # the temporary folder is gone after the run: keep the name only
                f["path"] = "demo:" + Path(f["path"]).relative_to(tmp).as_posix()
            results.append(res)
    return results


def evaluate(ckpt: str | Path, task: str | None, data: str | Path | None, s: Settings, engine=None) -> dict:
    """Load `ckpt` (unless `engine` is given) and run `task` on `data`, or the demo suites."""
    if task not in (None, "demo") and data is None:
        what = "a folder with val/ (or test/) and dev/ CSV files" if task in ("ceval", "cmmlu") else "a file"
        raise UserError(f"--task {task} needs --data ({what})")
    engine = engine or load(ckpt, s)
    results = run_demo(engine, s) if task in (None, "demo") else [run_task(engine, task, data, s)]
    return make_report(str(ckpt), results)
