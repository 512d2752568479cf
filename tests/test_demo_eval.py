"""Demo eval suites: the contract `minimind eval --task demo` reads (C-Eval CSV layout, RL-format
generation prompts, tool-call cases), deterministic bytes, every answer recomputable from its
question, and nothing held out appearing in the demo training files."""

import csv
import hashlib
import json
import re
from fractions import Fraction

import pytest
from test_demo_data import calls_of, solve_tool

from minimind.chat import render_conversation
from minimind.data.demo import write_demo, write_demo_eval
from minimind.data.demo.conversations import CITIES, TOOLS
from minimind.data.demo.evalsets import TOOLCALL_KINDS
from minimind.tools import builtin_tools
from minimind.data.demo.mcq import GLOSSARY
from minimind.tokenizer import load_tokenizer

SUBJECTS = ("arithmetic", "units", "vocabulary", "identity")
TRAIN = ("pretrain", "sft", "dpo", "rl", "agent_rl")
HEADER = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
# to-value = from-value * factor, as the questions name the units (written out here, not imported)
FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
           ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("liters", "milliliters"): 1000,
           ("days", "hours"): 24, ("meters", "kilometers"): Fraction(1, 1000),
           ("grams", "kilograms"): Fraction(1, 1000), ("minutes", "hours"): Fraction(1, 60),
           ("千米", "米"): 1000, ("米", "厘米"): 100, ("千克", "克"): 1000, ("小时", "分钟"): 60, ("分钟", "秒"): 60,
           ("升", "毫升"): 1000, ("天", "小时"): 24, ("米", "千米"): Fraction(1, 1000),
           ("克", "千克"): Fraction(1, 1000), ("分钟", "小时"): Fraction(1, 60)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    return write_demo_eval(tmp_path_factory.mktemp("eval"))


def tree_digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == HEADER, path
    return [dict(zip(HEADER, r, strict=True)) for r in rows[1:]]


def mcq_rows(suites, split):
    return {s: read_csv(suites["mcq"] / split / f"{s}_{split}.csv") for s in SUBJECTS}


def test_contract_and_determinism(suites, demo, tmp_path):
    assert sorted(suites) == ["gen", "mcq", "ppl", "toolcall"]
    assert suites["mcq"].is_dir() and all(suites[k].is_file() for k in ("ppl", "gen", "toolcall"))
    root = suites["ppl"].parent
    again = write_demo_eval(tmp_path / "again")
    assert tree_digest(tmp_path / "again") == tree_digest(root) and again["mcq"] == tmp_path / "again" / "mcq"
    # write_demo writes the very same suites under eval/
    assert tree_digest(demo["eval"]) == tree_digest(root)
    assert sorted(p.relative_to(root).as_posix() for p in (root / "mcq").rglob("*.csv")) == sorted(
        [f"mcq/dev/{s}_dev.csv" for s in SUBJECTS] + [f"mcq/val/{s}_val.csv" for s in SUBJECTS])


def test_csvs_parse_in_ceval_layout(suites):
    dev, val = mcq_rows(suites, "dev"), mcq_rows(suites, "val")
    assert all(len(rows) == 5 for rows in dev.values())
    assert 300 <= sum(map(len, val.values())) <= 500 and min(map(len, val.values())) >= 40
    for split in (dev, val):
        for rows in split.values():
            assert [r["id"] for r in rows] == [str(i) for i in range(len(rows))]
            for r in rows:
                choices = [r[k] for k in "ABCD"]
                assert r["answer"] in "ABCD" and len(r["answer"]) == 1
                assert all(c.strip() for c in choices) and len(set(choices)) == 4 and r["question"].strip()
    letters = [r["answer"] for rows in val.values() for r in rows]
    assert all(letters.count(x) > len(letters) / 8 for x in "ABCD")  # the gold letter is not one position


def solve(subject, q, choices):
    """The right choice worked out from the question text alone."""
    if subject == "arithmetic":
        if m := re.search(r"(\d+) 和 (\d+)，哪个数更大|larger, (\d+) or (\d+)\?", q):
            return str(max(int(x) for x in m.groups() if x))
        a, op, b = re.search(r"(\d+) ([+-]) (\d+)", q).groups()
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if subject == "units":
        if m := re.search(r"How many (\w+) are there in ([\d.]+) (\w+)\?", q):
            to, value, frm = m.groups()
        else:
            value, frm, to = re.search(r"([\d.]+) (\S+?)等于多少(\S+?)？", q).groups()
        x = Fraction(value) * FACTORS[(frm, to)]
        return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"
    if subject == "vocabulary":
        word = re.search(r"“(.+)”", q).group(1)
        meaning = dict(GLOSSARY) | {e: z for z, e in GLOSSARY}
        return meaning[word]
    if subject == "identity":
        (right,) = [c for c in choices if "MiniMind" in c and "不是 MiniMind" not in c]
        return right
    raise AssertionError(subject)


@pytest.mark.parametrize("split", ["dev", "val"])
def test_every_mcq_answer_is_recomputable(suites, split):
    for subject, rows in mcq_rows(suites, split).items():
        for r in rows:
            choices = [r[k] for k in "ABCD"]
            assert r[r["answer"]] == solve(subject, r["question"], choices), (subject, r)


def training_strings(demo):
    """Every string value in the training files, normalised (case, whitespace)."""
    out = []

    def walk(x):
        if isinstance(x, str):
            out.append(" ".join(x.lower().split()))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for name in TRAIN:
        for rec in read_jsonl(demo[name]):
            walk(rec)
    return "\n".join(out)


def held_out_questions(suites):
    qs = [r["question"] for split in ("dev", "val") for rows in mcq_rows(suites, split).values() for r in rows]
    qs += [r["conversations"][0]["content"] for r in read_jsonl(suites["gen"])]
    qs += [m["content"] for c in read_jsonl(suites["toolcall"]) for m in c["conversations"] if m["role"] == "user"]
    return [" ".join(q.lower().split()) for q in qs]


def test_no_held_out_question_appears_in_training(suites, demo):
    text = training_strings(demo)
    questions = held_out_questions(suites)
    assert len(set(questions)) >= 500  # (gen and toolcall may ask the same unit conversion)
    for q in questions:
        start = text.find(q)
        while start != -1:  # a match counts unless it is the tail of a longer number or word ("47 和" in "347 和")
            assert start > 0 and re.fullmatch(r"[0-9a-z.]", text[start - 1]), (q, text[max(0, start - 30):start])
            start = text.find(q, start + 1)


def test_training_data_teaches_every_subject(demo, suites):
    pretrain = [r["text"] for r in read_jsonl(demo["pretrain"])]
    sft = [r["conversations"] for r in read_jsonl(demo["sft"])]
    for name in ("算术", "单位换算", "词汇", "身份认知", *SUBJECTS):
        assert sum(t.startswith(f"以下是中国关于{name}的单项选择题") for t in pretrain) >= 50, name
    assert sum(c[0]["content"].endswith("\n答案：") for c in sft) >= 300
    glossary = [t for t in pretrain if t.startswith("“苹果”的英文是 apple")]
    assert len(glossary) == 1 and all(f"“{z}”的英文是 {e}，" in glossary[0] for z, e in GLOSSARY)
    asks = {c[0]["content"] for c in sft}
    taught = [z for z, _ in GLOSSARY if f"“{z}”用英语怎么说？" in asks or f"How do you say “{z}” in English?" in asks]
    assert len(taught) > len(GLOSSARY) * 0.75


def word_ngrams(text, n=13):
    toks = [t.lower() for t in re.findall(r"[\u3400-\u9fff]|[A-Za-z0-9_]+", text)]
    return {" ".join(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def test_ppl_text_shares_no_13gram_with_pretraining(suites, demo):
    held = [r["text"] for r in read_jsonl(suites["ppl"])]
    assert held == [r["text"] for r in read_jsonl(demo["pretrain_eval"])]
    zh = sum(len(t) for t in held if re.search(r"[\u4e00-\u9fff]", t[:40]))
    assert zh > 20_000 and sum(map(len, held)) - zh > 20_000
    grams = set().union(*(word_ngrams(t) for t in held))
    shared = [g for r in read_jsonl(demo["pretrain"]) for g in word_ngrams(r["text"]) & grams]
    assert shared == []


def test_gen_is_held_out_rl_eval(suites, demo):
    gen = read_jsonl(suites["gen"])
    rl_eval = read_jsonl(demo["rl_eval"])
    assert len(gen) == 100
    for g, r in zip(gen, rl_eval):
        assert g["conversations"] == r["conversations"][:1] and g["conversations"][0]["role"] == "user"
        assert (g["answer"], g["kind"]) == (r["answer"], r["kind"])


def test_toolcall_cases(suites):
    """Held-out tool cases: the reference calls copy the question's own values, executing them
    with the built-in tools leads to the `gt` answer, and weather asks about unseen cities."""
    tok = load_tokenizer()
    registry = builtin_tools()
    cases = read_jsonl(suites["toolcall"])
    assert len(cases) == 120
    trained_cities = {c for pair in CITIES for c in pair}
    kinds = set()
    for case in cases:
        conv, kind = case["conversations"], case["kind"]
        system, user, assistant = conv[0], conv[-2], conv[-1]
        assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
        assert isinstance(system["tools"], str) and isinstance(assistant["tool_calls"], str) and assistant["content"] == ""
        tools = json.loads(system["tools"])
        assert all(t in TOOLS.values() for t in tools)
        calls = calls_of(assistant)
        assert {n for n, _ in calls} <= {t["function"]["name"] for t in tools}
        assert len(calls) == (2 if kind == "calc2" else 1)
        kinds.add(kind)
        if kind == "weather":
            assert calls[0][1]["city"] in user["content"] and calls[0][1]["city"] not in trained_cities
            assert "gt" not in case
        elif kind == "calc2":
            assert all(a["expression"] in user["content"] for _, a in calls) and "gt" not in case
        else:
            name, args = calls[0]
            if kind == "chain":  # "each × count", both read from the question
                assert all(n in user["content"] for n in re.findall(r"\d+", args["expression"]))
            else:
                assert all(str(v) in user["content"] for v in args.values())
            if kind == "multi_turn":
                assert sum(m["role"] == "user" for m in conv) == 2 and any(m["role"] == "tool" for m in conv)
            else:
                assert case["gt"] == [solve_tool(kind, user["content"])]
            result = json.loads(registry.call(name, args))["result"]
            if kind in ("calc", "unit", "add_days", "days_between", "capital"):  # the result is the answer
                assert str(result) == case["gt"][0] or float(result) == float(case["gt"][0])
        ids, mask = render_conversation(tok, conv)  # the chat template accepts the case
        assert sum(mask) > 0
    assert kinds == set(TOOLCALL_KINDS)


def test_held_out_text_alternates_languages_so_a_limit_takes_both(suites):
    """`minimind eval --limit N` (and quickstart's bounded demo eval) read the first N documents."""
    def chinese(text: str) -> bool:
        return sum("\u4e00" <= c <= "\u9fff" for c in text) > len(text) / 4

    held = [chinese(r["text"]) for r in read_jsonl(suites["ppl"])]
    n_zh = sum(held)
    assert 0 < n_zh < len(held)
    assert held[: 2 * n_zh] == [True, False] * n_zh
