"""The agent loop: scripted fake models give exact transcripts; the real engine runs it batched."""

import json

import pytest
import torch

from minimind.agent import engine_model, run_agents, text_model
from minimind.checkpoint import save_model
from minimind.config import ModelConfig
from minimind.infer import SamplingParams
from minimind.infer.loading import load_engine
from minimind.model import MiniMindLM
from minimind.tokenizer import default_tokenizer_dir, load_tokenizer
from minimind.tools import builtin_tools

CALC = builtin_tools().specs()[:1]
QUESTION = "What is (2+3)*4?"
TOOL_CONV = [  # what the tiny tool model is overfit on
    {"role": "system", "content": "", "tools": CALC}, {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": {"expression": "(2+3)*4"}}]},
    {"role": "tool", "content": '{"result": 20}'}, {"role": "assistant", "content": "It is 20."}]


def tool_checkpoint(tmp_path_factory):
    """A tiny model (shipped tokenizer) overfit on TOOL_CONV, built once per session: asked
    QUESTION with the calculator offered, it calls calculator, then answers "It is 20."."""
    from minimind.chat import render_conversation

    folder = tmp_path_factory.getbasetemp() / "tool-trained"
    if (folder / "ckpt" / "model.safetensors").is_file():
        return folder / "ckpt"
    tok = load_tokenizer(default_tokenizer_dir())
    ids, mask = render_conversation(tok, TOOL_CONV)
    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                                   num_kv_heads=2, max_seq_len=512))
    x, y = torch.tensor([ids]), torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    try:
        for _ in range(150):
            loss = model(x, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return save_model(model.eval(), folder / "ckpt", tokenizer_dir=default_tokenizer_dir())


def call(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def scripted(replies):
    """A fake model: the prompt's number of tool results picks the reply, and every prompt is kept."""
    prompts = []

    def fn(prompt):
        prompts.append(prompt)
        return replies[prompt.count("<tool_response>\n")]
    return fn, prompts


def test_scripted_transcript_is_exact():
    fn, prompts = scripted({  # by the number of tool results in the prompt
        0: "Let me compute.\n" + call("calculator", expression="(2+3)*4") + "\n" + call("weekday", date="2026-11-27"),
        2: "<think>\nboth known\n</think>\n\n20, on a Friday."})
    conv = [{"role": "user", "content": "q"}]
    (run,) = run_agents(text_model(fn, tools=builtin_tools().specs()), [conv], builtin_tools())
    assert run.finish == "answer" and run.turns == 2 and run.tool_calls == 2
    assert run.messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Let me compute.", "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "(2+3)*4"}}},
            {"type": "function", "function": {"name": "weekday", "arguments": {"date": "2026-11-27"}}}]},
        {"role": "tool", "name": "calculator", "content": '{"result": 20}'},
        {"role": "tool", "name": "weekday", "content": '{"result": "Friday"}'},
        {"role": "assistant", "content": "20, on a Friday.", "reasoning_content": "both known"}]
    assert conv == [{"role": "user", "content": "q"}]  # the input is not modified
    # the second prompt shows the tools, the call and both results in one user turn, as trained
    assert prompts[1].startswith("<|im_start|>system\n# Tools\n")
    assert prompts[1].endswith('<tool_response>\n{"result": 20}\n</tool_response>\n<tool_response>\n'
                               '{"result": "Friday"}\n</tool_response><|im_end|>\n'
                               "<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_finish_reasons_batched():
    replies = {"loop": call("calculator", expression="1+1"), "bad": '<tool_call>\n{"name": "calculator", '
               '"arguments": {"expression": }\n</tool_call>', "plain": "hello", "unknown": call("rm", path="/")}
    seen_batches = []

    def model(batch):
        seen_batches.append(len(batch))
        out = []
        for msgs in batch:
            key = msgs[0]["content"]
            out.append("done" if key == "unknown" and msgs[-1]["role"] == "tool" else replies[key])
        return out

    convs = [[{"role": "user", "content": k}] for k in ("loop", "bad", "plain", "unknown")]
    runs = run_agents(model, convs, builtin_tools(), max_turns=3)
    assert [r.finish for r in runs] == ["turn_limit", "malformed", "answer", "answer"]
    assert seen_batches == [4, 2, 1]  # all four together, then the ones still calling tools
    assert [r.turns for r in runs] == [3, 1, 1, 2]
    assert runs[0].messages[-1] == {"role": "tool", "name": "calculator", "content": '{"result": 2}'}
    assert runs[1].messages[-1]["content"].startswith("<tool_call>") and "tool_calls" not in runs[1].messages[-1]
    assert json.loads(runs[3].messages[2]["content"])["error"].startswith("unknown tool 'rm'")  # never executed
    with pytest.raises(ValueError):
        run_agents(model, convs, builtin_tools(), max_turns=0)


def test_real_engine_runs_the_loop(tmp_path_factory):
    engine = load_engine(tool_checkpoint(tmp_path_factory), max_batch_size=4, max_seq_len=512)
    convs = [TOOL_CONV[:2], TOOL_CONV[:2], [TOOL_CONV[1]]]
    runs = run_agents(engine_model(engine, SamplingParams(max_new_tokens=40, temperature=0)), convs, builtin_tools())
    for run in runs[:2]:  # the overfit model calls the tool, reads its real result, answers
        assert run.finish == "answer" and run.messages[2:] == [
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "(2+3)*4"}}}]},
            {"role": "tool", "name": "calculator", "content": '{"result": 20}'},
            {"role": "assistant", "content": "It is 20."}]
    assert runs[2].finish in ("answer", "malformed", "turn_limit")  # no tools shown: whatever it says, it ends


def test_context_full_ends_the_run(tmp_path_factory):
    engine = load_engine(tool_checkpoint(tmp_path_factory), max_batch_size=2, max_seq_len=64)
    (run,) = run_agents(engine_model(engine, SamplingParams(max_new_tokens=8, temperature=0)), [TOOL_CONV[:2]],
                        builtin_tools())
    assert run.finish == "context" and run.messages == TOOL_CONV[:2]


def test_token_segments_concatenate_to_the_render_and_mask_observations(tok):
    """Token-level run: generated ids are the trainable segments, tool results and template
    text are not, and all segments joined are the renderer's ids of the transcript."""
    from minimind.agent import scripted_token_model
    from minimind.chat import render_conversation

    seen = []

    def fn(prompt):
        n = prompt.count("<tool_response>\n")
        return {0: "need both\n</think>\n\nLet me compute.\n" + call("calculator", expression="(2+3)*4") + "\n"
                   + call("weekday", date="2026-11-27"),
                2: "both known\n</think>\n\n20, on a Friday."}[n]

    conv = [{"role": "system", "content": "", "tools": builtin_tools().specs()}, {"role": "user", "content": "q"}]
    (run,) = run_agents(scripted_token_model(tok, lambda p: seen.append(p) or fn(p), thinking=True), [conv],
                        builtin_tools())
    assert run.finish == "answer" and run.turns == 2 and run.tool_calls == 2
    assert [m["role"] for m in run.messages] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert run.messages[-1] == {"role": "assistant", "content": "20, on a Friday.", "reasoning_content": "both known"}
    assert [t for _, t in run.segments] == [0, 1, 0, 1]
    # the generated segments are exactly the replies (plus <|im_end|>); observations are the loop's text
    assert [tok.decode(s) for s, t in run.segments if t] == [fn(p) + "<|im_end|>" for p in seen]
    obs = tok.decode(run.segments[2][0])
    assert obs == ('\n<|im_start|>user\n<tool_response>\n{"result": 20}\n</tool_response>\n<tool_response>\n'
                   '{"result": "Friday"}\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n')
    ids, mask = render_conversation(tok, run.messages)
    assert run.ids == ids[: len(run.ids)] and tok.decode(ids[len(run.ids):]) == "\n"
    # loss mask over the run: 1 on every generated token, 0 on prompt and tool results
    flat_mask = [t for s, t in run.segments for _ in s]
    assert sum(flat_mask) == sum(len(s) for s, t in run.segments if t)
    # every trained token is an assistant token of the render; the observation holds none
    assert all(mask[k] for k, m in enumerate(flat_mask) if m)
    start = len(run.segments[0][0]) + len(run.segments[1][0])
    # (except its closing "<think>\n": the render trains it, the loop supplied it as the prompt)
    think = len(tok.encode("<think>\n", allow_special=True))
    assert not any(mask[start:start + len(run.segments[2][0]) - think]) and '{"result": 20}' in obs


def test_token_runs_end_on_turn_limit_and_context(tok):
    from minimind.agent import scripted_token_model

    looping = scripted_token_model(tok, lambda p: call("calculator", expression="1+1"), max_seq_len=10_000)
    conv = [{"role": "user", "content": "loop"}]
    (run,) = run_agents(looping, [conv], builtin_tools(), max_turns=3)
    assert run.finish == "turn_limit" and run.turns == 3 and [t for _, t in run.segments] == [0, 1, 0, 1, 0, 1]
    tiny = scripted_token_model(tok, lambda p: call("calculator", expression="1+1"), max_seq_len=60)
    (run,) = run_agents(tiny, [conv], builtin_tools(), max_turns=5)
    assert run.finish == "context" and run.turns >= 2 and run.segments[-1][1] == 0  # ended on an observation


def test_engine_token_model_continues_from_its_own_ids(tmp_path_factory):
    from minimind.agent import engine_token_model

    engine = load_engine(tool_checkpoint(tmp_path_factory), max_batch_size=4, max_seq_len=512)
    model = engine_token_model(engine, lambda i, turn: SamplingParams(max_new_tokens=40, temperature=0))
    runs = run_agents(model, [TOOL_CONV[:2], TOOL_CONV[:2]], builtin_tools())
    for run in runs:  # same transcript as the text-level loop, and the generated ids are the engine's
        assert run.finish == "answer" and run.messages[2:] == [
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "(2+3)*4"}}}]},
            {"role": "tool", "name": "calculator", "content": '{"result": 20}'},
            {"role": "assistant", "content": "It is 20."}]
        assert [t for _, t in run.segments] == [0, 1, 0, 1]
        assert run.segments[-1][0][-1] == engine.tokenizer.eos_id
