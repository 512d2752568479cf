"""Multiple choice: the harness's prompt layout written out by hand, metrics, readers and bad input."""

from __future__ import annotations

import pytest
from support import write_jsonl
from test_eval_support import (CEVAL_HEADER, ceval_rows, shipped_tokenizer, tiny_lm, write_ceval, write_cmmlu,
                               write_csv)

from minimind.errors import UserError
from minimind.eval.mcq import build_prompt, evaluate_mcq, summarise
from minimind.eval.mcq_data import Question, read_suite
from minimind.eval.scorer import Scorer


def test_kshot_prompt_is_the_harness_layout_byte_for_byte():
    shot = Question(1, "logic", "  1 加 1 等于几？\n", ["2", "3", "4", "5"], 0)
    q = Question(2, "logic", "天空是什么颜色？", ["红", "蓝", "绿", "黑"], 1)
    assert build_prompt(q, [shot], "ceval") == (
        "以下是中国关于逻辑学的单项选择题，请选出其中的正确答案。\n\n"
        "1 加 1 等于几？\nA. 2\nB. 3\nC. 4\nD. 5\n答案： A\n\n"
        "天空是什么颜色？\nA. 红\nB. 蓝\nC. 绿\nD. 黑\n答案：")
    cm = Question(0, "agronomy", "问题", ["a", "b", "c", "d"], 3)
    assert build_prompt(cm, [], "cmmlu") == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n问题\nA. a\nB. b\nC. c\nD. d\n答案：")
    # A subject the harness does not know keeps its file name in the same sentence.
    assert build_prompt(Question(0, "my_exam", "q", list("wxyz"), 0), [], "ceval").startswith("以下是中国关于my_exam的")
    # Generic JSONL: no description; full-text style puts the choice text after the cue.
    gen = Question(0, "all", "Q?", ["yes", "no"], 0)
    assert build_prompt(gen, [], "mcq") == "Q?\nA. yes\nB. no\n答案："
    assert build_prompt(gen, [gen], "mcq", "text") == "Q?\n答案： yes\n\nQ?\n答案："


def test_micro_macro_and_per_subject():
    preds = [{"subject": "s1", "pred": "A", "gold": "A"}, {"subject": "s1", "pred": "B", "gold": "B"},
             {"subject": "s2", "pred": "C", "gold": "D"}]
    res = summarise("ceval", preds, norm_hits=1, shots=0)
    assert res["accuracy"] == pytest.approx(2 / 3)
    assert res["accuracy_macro"] == pytest.approx(0.5)
    assert res["per_subject"] == {"s1": 1.0, "s2": 0.0}
    assert res["accuracy_norm"] == pytest.approx(1 / 3)


def test_readers_keep_file_order_ids_and_fewshot_pools(tmp_path):
    ce = read_suite("ceval", write_ceval(tmp_path / "ce", {"b_subject": (3, 2), "a_subject": (4, 3)}))
    assert [(q.subject, q.id) for q in ce.questions] == [("a_subject", "0"), ("a_subject", "1"), ("a_subject", "2"),
                                                         ("b_subject", "0"), ("b_subject", "1")]
    assert len(ce.fewshot["a_subject"]) == 4 and ce.questions[0].choices[3] == "以上都不对\n（第0题）"
    cm = read_suite("cmmlu", write_cmmlu(tmp_path / "cm", {"arts": (5, 3)}))
    assert [q.id for q in cm.questions] == ["0", "1", "2"] and cm.questions[1].answer == 1


def test_scoring_predicts_argmax_and_length_normalises_full_texts(tmp_path):
    scorer = Scorer(tiny_lm(), shipped_tokenizer(), batch_size=4)
    recs = [{"question": f"第{i}题：哪一个对？", "choices": ["对", "这个答案比较长一些", "错", "也许"], "answer": i % 4}
            for i in range(6)]
    suite = read_suite("mcq", write_jsonl(tmp_path / "q.jsonl", recs))
    res = evaluate_mcq(scorer, suite, shots=1, style="text")
    assert res["n"] == 5  # the first question is the one-shot example
    norm_hits = 0
    for p, rec in zip(res["predictions"], recs[1:]):
        lps = p["logprobs"]
        assert p["pred"] == "ABCD"[lps.index(max(lps))]
        norm = [lp / len(c) for lp, c in zip(lps, rec["choices"])]
        norm_hits += norm.index(max(norm)) == rec["answer"]
    assert res["accuracy_norm"] == pytest.approx(norm_hits / 5)


def test_shots_need_enough_dev_questions(tmp_path):
    suite = read_suite("ceval", write_ceval(tmp_path / "ce", {"logic": (2, 2)}))
    with pytest.raises(UserError, match=r"subject 'logic': --shots 3 needs 3 dev questions, the dev/ folder has 2"):
        evaluate_mcq(Scorer(tiny_lm(), shipped_tokenizer()), suite, shots=3)


def _ceval_with(tmp_path, header, rows):
    write_csv(tmp_path / "ce" / "val" / "logic_val.csv", header, rows)
    return tmp_path / "ce"


def test_bad_csv_rows(tmp_path):
    good = ceval_rows(3)
    root = _ceval_with(tmp_path, [c for c in CEVAL_HEADER if c != "answer"], [r[:6] + r[7:] for r in good])
    with pytest.raises(UserError, match=r"logic_val.csv:1: missing column 'answer'"):
        read_suite("ceval", root)
    bad_letter = [good[0], good[1][:6] + ["E", "x"], good[2]]
    root = _ceval_with(tmp_path, CEVAL_HEADER, bad_letter)
    # good[0] spans two lines (a quoted newline), so the second row starts on line 4.
    with pytest.raises(UserError, match=r"logic_val.csv:4: answer 'E' is not one of the choice letters A, B, C, D"):
        read_suite("ceval", root)
    short = [good[0], good[1][:5], good[2]]
    root = _ceval_with(tmp_path, CEVAL_HEADER, short)
    with pytest.raises(UserError, match=r"logic_val.csv:4: row has 5 fields, the header has 8"):
        read_suite("ceval", root)
    suite = read_suite("ceval", root, skip_bad=True)
    assert len(suite.questions) == 2 and suite.skipped == 1
    with pytest.raises(UserError, match="no val/\\*.csv files"):
        read_suite("ceval", tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        read_suite("cmmlu", tmp_path / "nothing")


@pytest.mark.parametrize("record,message", [
    ({"question": "q", "choices": ["only one"], "answer": 0}, "'choices' has 1 entry; a question needs at least 2"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "answer 'C' is not one of the choice letters A, B"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer index 2 is outside the 2 choices"),
    ({"question": "q", "choices": ["a", "b"]}, "missing key 'answer'"),
    ({"question": "", "choices": ["a", "b"], "answer": 0}, "'question' must be a non-empty string"),
    ("{not json", "bad JSON"),
])
def test_bad_jsonl_records(tmp_path, record, message):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "ok", "choices": ["a", "b"], "answer": "B"}, record])
    with pytest.raises(UserError, match=rf"q.jsonl:2: {message}"):
        read_suite("mcq", path)
    suite = read_suite("mcq", path, skip_bad=True)
    assert len(suite.questions) == 1 and suite.skipped == 1 and suite.questions[0].answer == 1
