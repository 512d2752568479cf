"""Generation and tool-call tasks on a tiny model overfit to answer one question and make one call."""

from __future__ import annotations

import json

import pytest
from support import write_jsonl
from test_eval_support import GEN_CHAT, WEATHER_CALL, overfit_checkpoint, tool_case

from minimind.errors import UserError
from minimind.eval.gen import evaluate_gen, read_prompts
from minimind.eval.run import load, Settings
from minimind.chat import parse_tool_calls
from minimind.eval.toolcall import evaluate_toolcall, read_cases

QUESTION = GEN_CHAT[0]["content"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return load(overfit_checkpoint(tmp_path_factory.mktemp("overfit") / "ckpt"), Settings(batch_size=4))


def test_greedy_exact_and_numeric_match(engine, tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [
        {"prompt": QUESTION, "answer": "7"},                       # numeric: "答案是 7。" holds 7
        {"prompt": QUESTION, "answer": "7.0"},                     # the same number written otherwise
        {"prompt": QUESTION, "answer": "8"},                       # wrong
        {"conversations": [{"role": "user", "content": QUESTION}], "answer": "答案是 7"},  # text match
    ])
    res = evaluate_gen(engine, read_prompts(path), think="off", max_new_tokens=20)
    assert [p["correct"] for p in res["predictions"]] == [True, True, False, True]
    assert res["predictions"][0]["output"] == "答案是 7。"
    assert res["accuracy"] == res["accuracy_think_off"] == 0.75 and res["n"] == 4


def test_pass_at_k_and_both_thinking_modes(engine, tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": QUESTION, "answer": "7"}, {"prompt": QUESTION, "answer": "8"}])
    res = evaluate_gen(engine, read_prompts(path), think="both", pass_k=3, max_new_tokens=12, temperature=0.7)
    for mode in ("off", "on"):
        assert 0 <= res[f"sampled_accuracy_think_{mode}"] <= res[f"pass@3_think_{mode}"] <= 0.5
        assert f"accuracy_think_{mode}" in res
    assert res["accuracy"] == res["accuracy_think_off"] == 0.5
    assert res["pass@3_think_off"] == 0.5  # the overfit model says 7 even when sampling


def test_gen_records_need_an_answer(tmp_path):
    path = write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "hi", "answer": "1"}, {"prompt": "no answer here"}])
    with pytest.raises(UserError, match=r"gen.jsonl:2: no reference answer"):
        read_prompts(path)
    assert len(read_prompts(path, skip_bad=True).records) == 1


def test_parse_tool_calls():
    block = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert parse_tool_calls(block) == ([("f", {"x": 1})], True)
    assert parse_tool_calls("<think>\nhmm\n</think>\n\n" + block + "\n" + block)[1]
    assert parse_tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>')[0] == [("f", {"x": 1})]
    assert parse_tool_calls("no call")[1] is False
    assert parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"x": 1}\n</tool_call>')[1] is False  # bad JSON
    assert parse_tool_calls(block + '\n<tool_call>\n{"name": "g"')[1] is False  # unclosed
    assert parse_tool_calls('<tool_call>\n{"arguments": {}}\n</tool_call>')[1] is False  # no name


def test_toolcall_scores_format_name_and_arguments(engine, tmp_path):
    other_args = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "上海"}}}
    other_name = {"name": "calculator", "arguments": json.dumps({"city": "北京"})}
    path = write_jsonl(tmp_path / "tools.jsonl", [tool_case(), tool_case(call=other_args), tool_case(call=other_name),
                                                  tool_case(as_strings=False)])
    res = evaluate_toolcall(engine, read_cases(path), max_new_tokens=40)
    assert [(p["well_formed"], p["name_ok"], p["arguments_ok"]) for p in res["predictions"]] == [
        (True, True, True), (True, True, False), (True, False, False), (True, True, True)]
    assert res["format_accuracy"] == 1.0 and res["name_accuracy"] == 0.75
    assert res["accuracy"] == res["arguments_accuracy"] == 0.5


@pytest.mark.parametrize("case,message", [
    ({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
     "the last message must be an assistant message with 'tool_calls'"),
    ({"conversations": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]}]}, "no 'tools'"),
    ({"conversations": [{"role": "system", "content": "s", "tools": "[{broken"}]}, "not valid JSON"),
])
def test_bad_toolcall_cases(tmp_path, case, message):
    path = write_jsonl(tmp_path / "tools.jsonl", [tool_case(), case])
    with pytest.raises(UserError, match=rf"tools.jsonl:2: .*{message}"):
        read_cases(path)
    assert len(read_cases(path, skip_bad=True).records) == 1


def _calc_case(question: str, gt: list | None) -> dict:
    from minimind.tools import builtin_tools

    case = {"conversations": [{"role": "system", "content": "", "tools": json.dumps(builtin_tools().specs()[:1])},
                              {"role": "user", "content": question},
                              {"role": "assistant", "content": "", "tool_calls": json.dumps(
                                  [{"name": "calculator", "arguments": {"expression": question[8:-1]}}])}]}
    return case if gt is None else {**case, "gt": gt}


def test_agent_task_success_through_the_loop(tmp_path):
    """A scripted model calls the calculator with the question's expression (or a tool that does
    not exist), then states the last tool result: success needs the loop to run the call and the
    answer to match `gt`; a case without `gt` is skipped."""
    import re

    from minimind.agent import scripted_token_model
    from minimind.eval.toolcall import evaluate_agent, read_agent_cases
    from minimind.tokenizer import load_tokenizer
    from minimind.tools import builtin_tools

    def reply(prompt: str) -> str:
        question = re.findall(r"What is ([^?]+)\?", prompt)[-1]
        results = re.findall(r'"result": (\d+)', prompt)
        if results or "error" in prompt.rpartition("<|im_start|>user")[2]:
            return f"It is {results[-1] if results else 'unknown'}."
        name = "nosuch" if question.startswith("7") else "calculator"
        return f'<tool_call>\n{{"name": "{name}", "arguments": {{"expression": "{question}"}}}}\n</tool_call>'

    path = tmp_path / "cases.jsonl"
    write_jsonl(path, [_calc_case("What is 347 × 29?", ["10063"]), _calc_case("What is 12 × 3?", ["37"]),
                       _calc_case("What is 7 + 1?", ["8"]), _calc_case("What is 2 + 2?", None)])
    cases = read_agent_cases(path)
    assert len(cases.records) == 3 and cases.skipped == 1
    res = evaluate_agent(None, cases, builtin_tools(), model=scripted_token_model(load_tokenizer(), reply))
    assert [p["success"] for p in res["predictions"]] == [True, False, False]
    assert res["success"] == pytest.approx(1 / 3) and res["called_tool"] == 1.0
    assert res["valid_calls"] == pytest.approx(2 / 3) and res["finish_answer"] == 1.0
    first = res["predictions"][0]["transcript"]
    assert [m["role"] for m in first] == ["assistant", "tool", "assistant"]
    assert first[1]["content"] == '{"result": 10063}' and first[2]["content"] == "It is 10063."
