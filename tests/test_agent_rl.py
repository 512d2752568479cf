"""Agent RL (`minimind agent-rl`): rule rewards of whole rollouts, observation masking in the
training rows, and the CLI run (2 steps of a tiny model) with an exact resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from minimind.agent import run_agents, scripted_token_model
from minimind.cli import main
from minimind.tools import builtin_tools
from minimind.train.rewards import agent_reward_terms, build_agent_rewards
from minimind.train.stages.agent_rl import references, rollout_rows
from support import killed_copy, save_tiny_policy, train_records, write_jsonl

CALC = builtin_tools().specs()[:1]


def call(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def _assistant(content, *calls):
    msg = {"role": "assistant", "content": content}
    if calls:
        msg["tool_calls"] = [{"type": "function", "function": {"name": n, "arguments": a}} for n, a in calls]
    return msg


def test_agent_reward_terms_by_hand():
    reg = builtin_tools()
    good = [{"role": "user", "content": "q"}, _assistant("", ("calculator", {"expression": "2*3"}),
                                                         ("calculator", {"expr": "2*3"})),
            {"role": "tool", "content": "{}"}, {"role": "tool", "content": "{}"}, _assistant("The answer is 6.")]
    terms = agent_reward_terms(good, "answer", ["a b c", "d e f"], ["6"], reg)
    # one of two calls valid (the second has an unknown argument); the answer matches the reference
    assert terms == {"correct": 1.0, "wellformed": 1.0, "valid": 0.5, "unfinished": 0.0, "repetition": 0.0}
    assert agent_reward_terms(good, "answer", [], ["7", "6.0"], reg)["correct"] == 1.0  # any gt entry
    looping = good[:2] + [_assistant("", ("rm", {"path": "/"}))]  # 1 valid call of 3
    terms = agent_reward_terms(looping, "turn_limit", ["a b c a b c"], ["6"], reg)
    assert terms == {"correct": 0.0, "wellformed": 1.0, "valid": 1 / 3, "unfinished": -1.0, "repetition": -0.25}
    assert agent_reward_terms(good[:1] + [_assistant("<tool_call>{")], "malformed", [], ["6"], reg)["wellformed"] == 0.0
    w = build_agent_rewards("correct:1,valid:0.5,unfinished:2")
    totals, parts = w.score([(good, "answer", []), (looping, "turn_limit", [])], [["6"], ["6"]], reg)
    assert totals == [1 + 0.25, 0.5 / 3 - 2] and parts["valid"] == [0.5, 1 / 3]
    assert references("6", None) == ["6"] and references("6", [12, "x"]) == ["12", "x"] and references(None, None) == []
    with pytest.raises(Exception, match="unknown agent reward 'format'"):
        build_agent_rewards("format:1")


def test_rollout_rows_train_only_generated_tokens(tok):
    """Observation tokens carry no loss: labels are -100 over prompt, tool results and padding,
    and equal to the ids over every generated token."""
    replies = {0: call("calculator", expression="2*3"), 1: "6"}
    model = scripted_token_model(tok, lambda p: replies[p.count("<tool_response>\n")])
    conv = [{"role": "system", "content": "", "tools": CALC}, {"role": "user", "content": "2*3?"}]
    runs = run_agents(model, [conv, conv[1:]], builtin_tools(), max_turns=1)  # the second ends at its limit
    ids, labels = rollout_rows(runs, tok.pad_id)
    for i, run in enumerate(runs):
        flat = [(t, trainable) for seg, trainable in run.segments for t in seg]
        assert ids[i, : len(flat)].tolist() == [t for t, _ in flat]
        assert labels[i, : len(flat)].tolist() == [t if m else -100 for t, m in flat]
        assert (labels[i, len(flat):] == -100).all()
    full = run_agents(model, [conv], builtin_tools(), max_turns=2)[0]
    ids, labels = rollout_rows([full], tok.pad_id)
    obs = tok.decode(full.segments[2][0])
    assert '{"result": 6}' in obs
    start = len(full.segments[0][0]) + len(full.segments[1][0])
    assert (labels[0, start : start + len(full.segments[2][0])] == -100).all()  # the tool result: no loss
    assert tok.decode([t for t in labels[0].tolist() if t != -100]) == replies[0] + "<|im_end|>6<|im_end|>"


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("agent_rl")
    save_tiny_policy(d / "init", tok, max_seq_len=512)
    system = {"role": "system", "content": "", "tools": json.dumps(CALC)}
    recs = [{"conversations": [system, {"role": "user", "content": f"What is {i}*3?"},
                               {"role": "assistant", "content": f"{3 * i}"}], "gt": [str(3 * i)]} for i in range(8)]
    return {"init": str(d / "init"), "data": str(write_jsonl(d / "agent.jsonl", recs))}


def test_agent_rl_cli_runs_and_resumes_exactly(files, tmp_path):
    args = ["agent-rl", "--init", files["init"], "--data", files["data"], "--max-steps", "2", "--batch-size", "2",
            "--group-size", "2", "--max-new-tokens", "6", "--max-turns", "2", "--seq-len", "64", "--no-progress",
            "--num-samples", "0", "--eval-batches", "0", "--save-every", "1", "--keep-last", "3", "--lr", "1e-3"]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    recs = train_records(full)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert {"reward", "reward/correct", "reward/valid", "reward/unfinished", "turns", "tool_calls", "kl",
                "finish/answer"} <= set(r)
        assert 1 <= r["turns"] <= 2
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1 samples from the reference itself

    part = killed_copy(full, tmp_path / "part", step=1)
    assert main([*args, "--out", str(part), "--resume"]) == 0
    assert [(r["loss"], r["reward"]) for r in train_records(part)] == [(r["loss"], r["reward"]) for r in recs]
    a = load_file(str(full / "checkpoints" / "step-0000002" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_agent_rl_bad_options_are_user_errors(files, tmp_path, capsys):
    base = ["agent-rl", "--init", files["init"], "--data", files["data"], "--out", str(tmp_path / "x"), "--max-steps", "1"]
    for extra, msg in ((["--tools", "calculator,rm"], "unknown tool(s) rm"), (["--max-turns", "0"], "--max-turns"),
                       (["--rewards", "correct:x"], "bad weight")):
        assert main([*base, *extra]) == 2
        assert msg in capsys.readouterr().err


def test_rollout_starts_from_the_loader_prompt_with_record_tools(files, tok):
    """Tools given at the record level reach the model (the rollout starts from the loader's
    prompt ids, in the thinking-off mode), and a rollout batch is reproducible from its counter."""
    from minimind.chat import render_prompt
    from minimind.checkpoint import load_model
    from minimind.train.stages.agent_rl import AgentRLConfig, AgentRLStage
    from minimind.train.stages.base import TrainContext

    cfg = AgentRLConfig(init=files["init"], data=[files["data"]], out="unused", max_steps=1, group_size=2,
                        max_new_tokens=5, max_turns=2)
    ctx = TrainContext(config=cfg, device=torch.device("cpu"), tokenizer=tok, model=load_model(files["init"]).train(),
                       autocast=lambda: torch.autocast("cpu", enabled=False))
    stage = AgentRLStage(cfg)
    msgs = [[{"role": "user", "content": "What is 2*3?"}]]
    loader_prompt = render_prompt(tok, msgs[0], tools=CALC)  # as `data prepare` renders an rl record with tools
    raw = {"prompt_ids": [loader_prompt], "answers": ["6"], "messages": msgs, "gt": [None]}
    b = stage.rollout(raw, ctx, count=0)
    want = render_prompt(tok, msgs[0], tools=CALC, thinking=False)
    assert "# Tools" in tok.decode(want)
    for i in range(2):
        assert b["input_ids"][i, : len(want)].tolist() == want and (b["labels"][i, : len(want)] == -100).all()
    assert b["advantages"].shape == (2,) and ctx.model.training
    again = stage.rollout(raw, ctx, count=0)
    assert torch.equal(again["input_ids"], b["input_ids"]) and again["texts"] == b["texts"]
