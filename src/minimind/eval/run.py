"""Running evaluations: one task on one file, or the embedded demo suites, on a loaded engine.

Contract:
- `load(ckpt, settings)` loads a checkpoint, run directory or Hugging Face folder with its
  tokenizer through `minimind.infer.load_engine` (the one loader; nothing here locates files).
- `read_task(task, data, scorer, settings)` reads and checks a task's files (what `run_task` scores).
- `run_task(engine, task, data, settings)` runs one of TASKS ("ppl", "ceval", "cmmlu", "mcq", "gen",
  "toolcall") and returns its result dict with "files" (paths and sha256) and "settings" added.
- `run_demo(engine, settings, suites=None)` runs ppl, mcq (C-Eval layout), gen and toolcall on the
  demo eval files: `suites` as `minimind.data.demo.write_demo_eval` returned them, or written now
  to a temporary folder; each result has "suite": "demo" and its task name as the demo names it.
- `run_passkey(engine, settings)` runs the generated passkey-retrieval suite (`passkey.py`; no
  data file): accuracy by prompt length and needle depth. `evaluate(ckpt, "passkey", None, s)`.
- `evaluate(ckpt, task, data, settings)` = load + run + `report.make_report`.
A progress bar (tqdm, on stderr, only on a terminal) shows each task's scored requests.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..data import demo
from ..errors import UserError
from ..infer import load_engine
from .gen import evaluate_gen, read_prompts
from .mcq import evaluate_mcq, limited
from .mcq_data import read_suite
from . import passkey
from .ppl import evaluate_ppl, read_documents
from .report import file_info, make_report
from .scorer import Scorer
from .toolcall import evaluate_toolcall, read_cases

TASKS = ("ppl", "ceval", "cmmlu", "mcq", "gen", "toolcall")
GENERATED_SUITES = ("passkey",)  # made on the fly: no --data
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
    max_seq_len: int | None = None  # context used for scoring (default: the model's)
    style: str = "letters"  # generic mcq: lettered choices or full-text continuations
    think: str = "off"  # gen: off, on or both
    pass_k: int = 0  # gen: samples per prompt for pass@k (0: greedy only)
    max_new_tokens: int | None = None  # gen/toolcall: None = 256 (DEMO_MAX_NEW_TOKENS in the demo suites)
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0  # gen pass@k base seed; passkey: which keys are drawn
    passkey_lengths: tuple[int, ...] = passkey.LENGTHS  # prompt tokens
    passkey_depths: tuple[float, ...] = passkey.DEPTHS  # share of the filler before the key
    passkey_trials: int = passkey.TRIALS  # prompts per (length, depth)
    device: str = "cpu"
    dtype: str | None = None


def load(ckpt: str | Path, s: Settings):
    dtype = getattr(torch, s.dtype) if s.dtype else None
    return load_engine(ckpt, max_batch_size=s.batch_size, max_seq_len=s.max_seq_len, device=s.device, dtype=dtype)


def _bar(desc: str, total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, disable=None, leave=False, dynamic_ncols=True)


def _settings_for(task: str, s: Settings) -> dict:
    keys = {"ppl": ("limit", "stride", "max_seq_len"), "gen": ("limit", "think", "pass_k", "max_new_tokens",
                                                            "temperature", "top_p", "seed"),
            "toolcall": ("limit", "max_new_tokens"),
            "passkey": ("passkey_lengths", "passkey_depths", "passkey_trials", "seed", "max_new_tokens")}.get(task, ("limit", "shots", "style", "max_seq_len"))
    return {k: v for k, v in asdict(s).items() if k in keys + ("batch_size", "skip_bad", "device", "dtype")}


def read_task(task: str, data: str | Path, scorer: Scorer, s: Settings):
    """Read and check a task's file(s): a UserError naming `file:line` on bad input (a training run
    calls this before step 1, so a bad eval file never stops it later)."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose from {', '.join(TASKS)} or demo")
    if task == "ppl":
        return read_documents(data, scorer, s.limit, s.skip_bad)
    if task in ("ceval", "cmmlu", "mcq"):
        return read_suite(task, data, s.skip_bad)
    if task == "gen":
        return read_prompts(data, s.skip_bad, s.limit)
    return read_cases(data, s.skip_bad, s.limit)


def run_task(engine, task: str, data: str | Path, s: Settings) -> dict:
    scorer = Scorer(engine.model, engine.tokenizer, s.batch_size, s.max_seq_len)
    s = replace(s, max_new_tokens=s.max_new_tokens or MAX_NEW_TOKENS)
    start = time.perf_counter()
    read = read_task(task, data, scorer, s)
    if task == "ppl":
        with _bar("ppl", None) as bar, engine.packed_matmuls():
            res = evaluate_ppl(scorer, read, s.stride, bar.update)
        files = [Path(data)]
    elif task in ("ceval", "cmmlu", "mcq"):
        total = sum(len(q.choices) for q in limited(read.questions, read.family, s.limit))
        with _bar(task, total) as bar, engine.packed_matmuls():
            res = evaluate_mcq(scorer, read, s.shots, s.style, bar.update, s.limit)
        files = read.files
    elif task == "gen":
        runs = (2 if s.think == "both" else 1) * (1 + s.pass_k)
        with _bar("gen", len(read.records) * runs) as bar:
            res = evaluate_gen(engine, read, s.think, s.pass_k, s.max_new_tokens, s.temperature, s.top_p,
                               s.seed, bar.update)
        files = read.files
    else:
        with _bar("toolcall", len(read.records)) as bar:
            res = evaluate_toolcall(engine, read, s.max_new_tokens, progress=bar.update)
        files = read.files
    res["seconds"] = round(time.perf_counter() - start, 3)  # reading, tokenising and scoring; not loading
    res["skipped"] = read.skipped
    res["truncated"] = scorer.truncated
    res["files"] = [file_info(f) for f in files]
    res["settings"] = _settings_for(task, s)
    return res


def run_passkey(engine, s: Settings) -> dict:
    """The passkey suite, generated for `s.seed`: accuracy by length and depth (see passkey.py)."""
    s = replace(s, max_new_tokens=s.max_new_tokens or passkey.MAX_NEW_TOKENS)
    start = time.perf_counter()
    cases = passkey.make_cases(engine.tokenizer, s.passkey_lengths, s.passkey_depths, s.passkey_trials, s.seed)
    with _bar("passkey", len(cases)) as bar:
        res = passkey.evaluate_passkey(engine, cases, s.max_new_tokens, bar.update)
    res["seconds"] = round(time.perf_counter() - start, 3)
    res["files"] = []
    res["settings"] = _settings_for("passkey", s)
    return res


def write_demo_files(out_dir: Path) -> dict[str, Path]:
    """The demo eval files from `minimind.data.demo.write_demo_eval`, or a UserError if it is missing."""
    writer = getattr(demo, "write_demo_eval", None)
    if writer is None:
        raise UserError("this version has no embedded demo eval suites (minimind.data.demo.write_demo_eval); "
                        "pass --task and --data")
    return writer(out_dir)


def run_demo(engine, s: Settings, suites: dict[str, Path] | None = None) -> list[dict]:
    """The demo suites: those already written at `suites` ({"ppl", "mcq", "gen", "toolcall"} as
    `write_demo_eval` returns them; a training run writes them once), or freshly written to a
    temporary folder. Files are named "demo:<name>" in the results, whichever folder held them."""
    if suites is not None:
        return _run_demo_files(engine, s, suites)
    with tempfile.TemporaryDirectory(prefix="minimind-demo-eval-") as tmp:
        return _run_demo_files(engine, s, write_demo_files(Path(tmp)))


def _run_demo_files(engine, s: Settings, paths: dict[str, Path]) -> list[dict]:
    results = []
    s = replace(s, max_new_tokens=s.max_new_tokens or DEMO_MAX_NEW_TOKENS)
    for name, reader in DEMO_TASKS.items():
        if name not in paths:
            continue
        root = Path(paths[name]).parent
        res = run_task(engine, reader, paths[name], s)
        res.update(task=name, suite="demo")
        for f in res["files"]:  # a temporary folder is gone after the run: keep the name only
            f["path"] = "demo:" + Path(f["path"]).relative_to(root).as_posix()
        results.append(res)
    return results


def evaluate(ckpt: str | Path, task: str | None, data: str | Path | None, s: Settings, engine=None) -> dict:
    """Load `ckpt` (unless `engine` is given) and run `task` on `data`, the demo suites, or a
    generated suite (passkey)."""
    if task in GENERATED_SUITES:
        if data is not None:
            raise UserError(f"the {task} suite is generated on the fly; it takes no --data")
        engine = engine or load(ckpt, s)
        return make_report(str(ckpt), [run_passkey(engine, s)])
    if task not in (None, "demo") and data is None:
        what = "a folder with val/ (or test/) and dev/ CSV files" if task in ("ceval", "cmmlu") else "a file"
        raise UserError(f"--task {task} needs --data ({what})")
    engine = engine or load(ckpt, s)
    results = run_demo(engine, s) if task in (None, "demo") else [run_task(engine, task, data, s)]
    return make_report(str(ckpt), results)
