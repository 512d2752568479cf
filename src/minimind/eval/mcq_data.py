"""Reading multiple-choice questions in the layouts users download: C-Eval, CMMLU, generic JSONL.

Contract: every reader returns `Question`s in file order; `read_suite(family, path, skip_bad)`
returns a `Suite` (questions to score, few-shot pool per subject, files read, rows skipped).
- C-Eval (`family="ceval"`): a folder with `val/{subject}_val.csv` (scored) and `dev/{subject}_dev.csv`
  (few-shot examples), header `id,question,A,B,C,D,answer[,explanation]`.
- CMMLU (`family="cmmlu"`): a folder with `test/{subject}.csv` (scored) and `dev/{subject}.csv`,
  header `<empty>,Question,A,B,C,D,Answer` (the leading column is pandas' index; it becomes the id).
- Generic (`family="mcq"`): a JSONL file of {"question", "choices": [2..26 strings], "answer": index
  or letter, "subject"?, "id"?}; few-shot examples are its first k records (see `mcq.py`).
A bad row (wrong field count, missing column, answer not among the choices, fewer than two choices,
empty question) raises `UserError("file:line: ...")`, or with `skip_bad` is counted in `skipped`.
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..data.formats import RecordError, parse_payload
from ..errors import UserError

LETTERS = string.ascii_uppercase  # choice labels: A, B, C, ...
CSV_COLUMNS = {"ceval": ("question", "A", "B", "C", "D", "answer"),
               "cmmlu": ("Question", "A", "B", "C", "D", "Answer")}
SCORED_SPLIT = {"ceval": "val", "cmmlu": "test"}  # what lm-eval's ceval-valid / cmmlu tasks score


@dataclass
class Question:
    id: str | int
    subject: str
    question: str
    choices: list[str]
    answer: int  # index into choices
    where: str = ""  # "file:line", for messages


@dataclass
class Suite:
    family: str
    questions: list[Question]
    fewshot: dict[str, list[Question]] = field(default_factory=dict)  # subject -> dev questions
    files: list[Path] = field(default_factory=list)
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)


def answer_index(value, n_choices: int) -> int:
    """A gold answer given as a letter ("B") or a 0-based index (1) -> the index; RecordError if neither."""
    if isinstance(value, bool) or value is None:
        raise RecordError(f"answer {value!r} is not a choice letter or index")
    if isinstance(value, int):
        if not 0 <= value < n_choices:
            raise RecordError(f"answer index {value} is outside the {n_choices} choices (0..{n_choices - 1})")
        return value
    letter = str(value).strip()
    if letter not in LETTERS[:n_choices] or not letter:
        raise RecordError(f"answer {value!r} is not one of the choice letters {', '.join(LETTERS[:n_choices])}")
    return LETTERS.index(letter)


def _subject_of(path: Path, family: str) -> str:
    stem = path.stem
    for suffix in ("_val", "_dev", "_test"):
        if family == "ceval" and stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def read_csv(path: Path, family: str, skip_bad: bool, suite: Suite) -> list[Question]:
    """Questions of one C-Eval or CMMLU CSV file (quoted multi-line fields are fine)."""
    subject = _subject_of(path, family)
    want = CSV_COLUMNS[family]
    out: list[Question] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise UserError(f"{path}:1: empty file (expected a header {','.join(want)})")
        missing = [c for c in want if c not in header]
        if missing:
            raise UserError(f"{path}:1: missing column {', '.join(repr(c) for c in missing)} "
                            f"(header: {','.join(header)})")
        col = {c: header.index(c) for c in want}
        id_col = header.index("id") if "id" in header else (0 if header[0] in ("", "Unnamed: 0") else None)
        line = reader.line_num + 1
        for row in reader:
            where = f"{path}:{line}"
            line = reader.line_num + 1  # a quoted field may span lines: the next row starts here
            if not any(cell.strip() for cell in row):
                continue
            try:
                if len(row) != len(header):
                    raise RecordError(f"row has {len(row)} fields, the header has {len(header)}")
                q = Question(id=row[id_col] if id_col is not None else len(out), subject=subject,
                             question=row[col[want[0]]], choices=[row[col[c]] for c in "ABCD"],
                             answer=answer_index(row[col[want[5]]], 4), where=where)
                if not q.question.strip():
                    raise RecordError("the question is empty")
            except RecordError as err:
                _bad(suite, where, err, skip_bad)
                continue
            out.append(q)
    return out


def read_jsonl(path: Path, skip_bad: bool, suite: Suite) -> list[Question]:
    """Questions of a generic JSONL file; `id` defaults to the record's 0-based index."""
    out: list[Question] = []
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                out.append(_jsonl_question(parse_payload(line), len(out), where))
            except RecordError as err:
                _bad(suite, where, err, skip_bad)
    return out


def _jsonl_question(rec: dict, index: int, where: str) -> Question:
    for key in ("question", "choices", "answer"):
        if key not in rec:
            raise RecordError(f"missing key {key!r} (keys present: {', '.join(sorted(rec)) or 'none'})")
    question, choices = rec["question"], rec["choices"]
    if not isinstance(question, str) or not question.strip():
        raise RecordError("'question' must be a non-empty string")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise RecordError("'choices' must be a list of strings")
    if len(choices) < 2:
        raise RecordError(f"'choices' has {len(choices)} entr{'y' if len(choices) == 1 else 'ies'}; "
                          f"a question needs at least 2")
    if len(choices) > len(LETTERS):
        raise RecordError(f"'choices' has {len(choices)} entries; at most {len(LETTERS)} are supported")
    return Question(id=rec.get("id", index), subject=str(rec.get("subject", "all")), question=question,
                    choices=choices, answer=answer_index(rec["answer"], len(choices)), where=where)


def _bad(suite: Suite, where: str, err: Exception, skip_bad: bool) -> None:
    if not skip_bad:
        raise UserError(f"{where}: {err}") from None
    suite.skipped += 1
    if len(suite.skipped_examples) < 5:
        suite.skipped_examples.append(f"{where}: {err}")


def _csv_files(folder: Path, family: str, split: str) -> dict[str, Path]:
    files = sorted((folder / split).glob("*.csv")) if (folder / split).is_dir() else []
    return {_subject_of(f, family): f for f in files}


def read_suite(family: str, path: str | Path, skip_bad: bool = False) -> Suite:
    """All questions of a C-Eval / CMMLU folder or a generic JSONL file (see the module docstring)."""
    path = Path(path)
    suite = Suite(family, [])
    if family == "mcq":
        if not path.is_file():
            raise UserError(f"{path}: no such file (the mcq task reads a JSONL file of questions)")
        suite.files = [path]
        suite.questions = read_jsonl(path, skip_bad, suite)
    else:
        if not path.is_dir():
            raise UserError(f"{path}: not a folder (the {family} task reads a folder with "
                            f"{SCORED_SPLIT[family]}/ and dev/ CSV files)")
        scored = _csv_files(path, family, SCORED_SPLIT[family])
        if not scored:
            raise UserError(f"{path}: no {SCORED_SPLIT[family]}/*.csv files "
                            f"(expected the {'C-Eval' if family == 'ceval' else 'CMMLU'} folder layout)")
        for subject, f in scored.items():
            suite.files.append(f)
            suite.questions += read_csv(f, family, skip_bad, suite)
        for subject, f in _csv_files(path, family, "dev").items():
            if subject in scored:
                suite.files.append(f)
                suite.fewshot[subject] = read_csv(f, family, skip_bad, suite)
    if not suite.questions:
        raise UserError(f"{path}: no questions to score")
    return suite

