"""`minimind generate`, `minimind chat` (stdin piped) and `minimind serve` (a real subprocess)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import httpx
import pytest
from infer_support import shared_trained_checkpoint
from test_agent import QUESTION, tool_checkpoint

from minimind.cli import main

REASONING, ANSWER = "用户在打招呼。", "你好，世界！我是小模型。"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_trained_checkpoint(tmp_path_factory)[0]


def test_generate_answer_on_stdout_reasoning_on_stderr(ckpt, capsys):
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "你好", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == ANSWER + "\n"
    assert err.strip() == REASONING


def test_generate_compile_gives_the_same_answer_and_says_what_it_costs(ckpt, capsys):
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "你好", "--temperature", "0", "--compile"]) == 0
    out, err = capsys.readouterr()
    assert out == ANSWER + "\n"
    assert "--compile: the decode step compiles on the first tokens" in err and REASONING in err


def test_generate_raw_and_limits(ckpt, capsys):
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "Hello", "--raw", "--max-new-tokens", "3",
                 "--temperature", "0.9", "--top-p", "0.5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert main(["generate", "--ckpt", str(ckpt), "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err


def test_chat_repl_piped(ckpt, capsys, monkeypatch):
    script = "你好\n/stats\nhello\n/think off\n/system 你是一个助手\n/reset\n/nope\n/help\n/quit\nnot read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [f"thinking> {REASONING}", f"assistant> {ANSWER}"]
    assert lines[2] == "(stats on)"
    assert lines[3:5] == [f"thinking> {REASONING}", f"assistant> {ANSWER}"]
    assert lines[5].startswith("[") and "tokens/s" in lines[5] and lines[5].endswith("stop]")
    assert lines[6:10] == ["(thinking off)", "(system prompt set)", "(conversation cleared)",
                           "(unknown command '/nope'; /help lists them)"]
    assert lines[10] == "commands:" and "not read" not in "\n".join(lines)


def test_chat_keeps_history(ckpt, capsys, monkeypatch):
    """The second turn's prompt contains the first exchange: replies come from a longer prompt."""
    from minimind.infer import engine as engine_mod

    prompts = []
    real = engine_mod.Engine.new_sequence

    def spy(self, prompt_ids, params, adapter=None):
        prompts.append(list(prompt_ids))
        return real(self, prompt_ids, params, adapter)

    monkeypatch.setattr(engine_mod.Engine, "new_sequence", spy)
    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\nhello\n/reset\nhello\n"))
    assert main(["chat", "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "40"]) == 0
    from minimind.tokenizer import load_tokenizer

    tok = load_tokenizer(ckpt)
    second = tok.decode(prompts[1])
    assert "你好" in second and ANSWER in second and second.endswith("hello<|im_end|>\n<|im_start|>assistant\n<think>\n")
    assert len(prompts[2]) < len(prompts[1])  # /reset forgot the first exchange
    assert ANSWER not in tok.decode(prompts[2])


@pytest.mark.slow
def test_chat_with_tools_runs_the_agent_loop(tmp_path_factory, capsys, monkeypatch):
    """The tool-overfit model calls the calculator; chat runs it, shows the call and result, answers."""
    ckpt = tool_checkpoint(tmp_path_factory)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/stats\n{QUESTION}\n"))
    assert main(["chat", "--ckpt", str(ckpt), "--tools", "calculator", "--no-think", "--temperature", "0",
                 "--max-new-tokens", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ['[tool] calculator({"expression": "(2+3)*4"}) -> {"result": 20}', "assistant> It is 20.",
                         "[2 model replies, 1 tool calls, answer]"]


@pytest.mark.parametrize("argv,message", [
    (["chat", "--tools", "calculator,rm"], "--tools: unknown tool(s) rm; built-in: calculator,"),
    (["generate", "--prompt", "x", "--tools"], "--tools works with `minimind chat` and `minimind serve`"),
])
def test_bad_tools_flag(ckpt, capsys, argv, message):
    assert main([argv[0], "--ckpt", str(ckpt), *argv[1:]]) == 2
    assert message in capsys.readouterr().err


def test_serve_subprocess_health(ckpt, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "minimind", "serve", "--ckpt", str(ckpt), "--port", str(port),
                             "--api-key", "k", "--allowed-hosts", "my.lan,other.lan", "--tools", "calculator,weekday"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError(proc.stdout.read().decode() if proc.poll() is not None else "no server")
                time.sleep(0.2)
        assert r.json()["status"] == "ok"
        assert [t["function"]["name"] for t in r.json()["tools"]] == ["calculator", "weekday"]  # --tools reached it
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": "Bearer k"},
                       json={"messages": [{"role": "user", "content": "你好"}], "temperature": 0}, timeout=30)
        assert r.json()["choices"][0]["message"]["content"] == ANSWER
        assert r.json()["model"] == "ckpt"  # the checkpoint folder's name
        # --allowed-hosts reaches the server; other names (a DNS-rebinding page) are refused
        assert httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": f"my.lan:{port}"}).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/health", headers={"Host": "evil.example"}).status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=20)
