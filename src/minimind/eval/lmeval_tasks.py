"""lm-evaluation-harness task files for a local C-Eval or CMMLU folder: the reference harness, run on
the very files `minimind eval` reads, with nothing fetched from a hub.

Contract: `write_lmeval_tasks(family, root, subjects, out_dir) -> {subject: task name}` writes one
task YAML per subject into `out_dir`. Each includes lm-eval's own task file (`ceval-valid_{subject}`
or `cmmlu_{subject}`: its prompt template, description, few-shot sampler and metrics) and replaces
only the data source: the folder's CSV rows, copied into `out_dir` as JSON lines with every field a
string (`dataset_path: json`). Not the CSVs themselves: the CSV loader of `datasets` guesses column
types, so a column of numeric choices became floats and the prompt read "A. 15.0" where the file
says "15" (found by benchmarks/eval_vs_lmeval.py; the hub's C-Eval is all strings). Give `out_dir` to
`lm_eval.tasks.TaskManager(include_path=...)`. Subjects must be ones lm-eval knows (the official
C-Eval / CMMLU names); an unknown one raises `UserError`. Needs lm-eval (the `eval` extra).

`write_lmeval_ppl_task(path, out_dir) -> task name`: a `loglikelihood_rolling` task over the documents
of a pretrain-format file (JSONL {"text"}, .jsonl.gz, Parquet: the reader `--task ppl` uses, in
order), with lm-eval's word/byte perplexity and bits per byte. lm-eval prefixes each document
with its model's `prefix_token_id`: pass our EOS there (`prefix_token_id=2` in `--model_args`) to
score what `--task ppl` scores, and `--stride` = the context for the same windows.

Used by tests/test_eval_lmeval.py (same prompts and accuracy as lm-eval) and
benchmarks/eval_vs_lmeval.py (scoring speed side by side); docs/evaluation.md shows the commands.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..data.formats import iter_examples
from ..errors import UserError
from .mcq_data import SCORED_SPLIT


def lmeval_task_dir() -> Path:
    """The folder of lm-eval's bundled task files."""
    import lm_eval  # the `eval` extra; imported here so the rest of `minimind.eval` does not need it

    return Path(lm_eval.__file__).parent / "tasks"


def _csv_files(family: str, root: Path, subject: str) -> dict[str, Path]:
    """The scored split and the few-shot split of one subject, in the folder layout of `family`."""
    scored = SCORED_SPLIT[family]
    name = (lambda split: f"{subject}_{split}.csv") if family == "ceval" else (lambda split: f"{subject}.csv")
    return {split: root / split / name(split) for split in (scored, "dev")}


def _as_json_lines(src: Path, dst: Path) -> Path:
    """The CSV's rows as JSON lines, every value the string the file holds."""
    if not src.is_file():
        raise UserError(f"{src}: no such file (expected the folder layout of C-Eval or CMMLU)")
    with open(src, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return dst


def write_lmeval_tasks(family: str, root: Path, subjects: list[str], out_dir: Path) -> dict[str, str]:
    """Task YAMLs for `subjects` of the C-Eval/CMMLU folder `root`; returns {subject: task name}."""
    if family not in SCORED_SPLIT:
        raise UserError(f"lm-eval tasks exist for {', '.join(SCORED_SPLIT)}, not {family!r}")
    tasks = lmeval_task_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    for subject in subjects:
        base = tasks / (f"ceval/ceval-valid_{subject}.yaml" if family == "ceval" else f"cmmlu/cmmlu_{subject}.yaml")
        if not base.is_file():
            raise UserError(f"lm-eval has no {family} task for subject {subject!r} (looked for {base})")
        name = f"local_{family}_{subject}"
        files = {split: _as_json_lines(path, out_dir / "data" / f"{name}_{split}.jsonl")
                 for split, path in _csv_files(family, Path(root), subject).items()}
        (out_dir / f"{name}.yaml").write_text(
            f"include: {base}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  cache_dir: {out_dir.resolve() / 'hf_cache'}\n  data_files:\n"
            + "".join(f"    {split}: {path.resolve()}\n" for split, path in files.items()), encoding="utf-8")
        names[subject] = name
    return names


def write_lmeval_ppl_task(path: Path, out_dir: Path) -> str:
    """A rolling log-likelihood task over the documents of `path`; returns its task name."""
    data = out_dir / "data" / "local_ppl.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    texts = [json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in iter_examples("pretrain", [Path(path)])]
    data.write_text("".join(texts), encoding="utf-8")
    metrics = "".join(f"  - metric: {m}\n" for m in ("word_perplexity", "byte_perplexity", "bits_per_byte"))
    (out_dir / "local_ppl.yaml").write_text(
        f"task: local_ppl\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  cache_dir: {out_dir.resolve() / 'hf_cache'}\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        f"metric_list:\n{metrics}metadata:\n  version: 1.0\n", encoding="utf-8")
    return "local_ppl"
