"""Shared fixtures for the evaluation tests (no tests here): tiny models and tiny task files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from minimind.checkpoint import save_model
from minimind.config import ModelConfig
from minimind.model import MiniMindLM
from minimind.tokenizer import default_tokenizer_dir, load_tokenizer


def tiny_lm(seed: int = 0, max_seq_len: int = 512, vocab_size: int = 6400) -> MiniMindLM:
    """A 2-layer random model on the shipped 6400-token vocabulary, with decisive, varied logits.

    Random init gives nearly uniform logits and the same answer letter for every prompt. Scaling the
    LM head makes the choices' scores differ by far more than float rounding (no near-ties that
    could flip between two implementations), and scaling the embeddings and projections makes the
    prediction depend on the question, so agreement on predictions means something.
    """
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_seq_len=max_seq_len, tie_word_embeddings=False)
    model = MiniMindLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "proj" in name or "embed" in name:
                p.mul_(10)
        model.lm_head.weight.mul_(20)
    return model


def tiny_ckpt(folder: Path, seed: int = 0, max_seq_len: int = 512) -> Path:
    """Save `tiny_lm` with the shipped tokenizer as one of our checkpoints."""
    return save_model(tiny_lm(seed, max_seq_len), folder, tokenizer_dir=default_tokenizer_dir())


def shipped_tokenizer():
    return load_tokenizer()


CEVAL_HEADER = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]


def ceval_rows(n: int, offset: int = 0) -> list[list[str]]:
    """Arithmetic-style questions with varied choices (quotes, commas and a newline inside fields)."""
    rows = []
    for i in range(offset, offset + n):
        a, b = 3 + i, 7 + 2 * i
        choices = [str(a + b), str(a * b), f"{a}-{b}, \"近似\"", f"以上都不对\n（第{i}题）"]
        rows.append([str(i), f" {a} 加 {b} 等于多少？ ", *choices, "ABCD"[i % 4], "解释"])
    return rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_ceval(root: Path, subjects: dict[str, tuple[int, int]]) -> Path:
    """A C-Eval folder: per subject (dev rows, val rows)."""
    for s, (n_dev, n_val) in subjects.items():
        write_csv(root / "dev" / f"{s}_dev.csv", CEVAL_HEADER, ceval_rows(n_dev, 100))
        write_csv(root / "val" / f"{s}_val.csv", CEVAL_HEADER, ceval_rows(n_val))
    return root


def write_cmmlu(root: Path, subjects: dict[str, tuple[int, int]]) -> Path:
    """A CMMLU folder: per subject (dev rows, test rows), leading index column, no explanation."""
    for s, (n_dev, n_test) in subjects.items():
        for split, n, off in (("dev", n_dev, 100), ("test", n_test, 0)):
            rows = [[str(j)] + r[1:7] for j, r in enumerate(ceval_rows(n, off))]
            write_csv(root / split / f"{s}.csv", CMMLU_HEADER, rows)
    return root


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "天气查询",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}},
         {"type": "function", "function": {"name": "calculator", "description": "计算",
                                             "parameters": {"type": "object",
                                                            "properties": {"expression": {"type": "string"}}}}}]
WEATHER_CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}
GEN_CHAT = [{"role": "user", "content": "3 加 4 等于多少？"}, {"role": "assistant", "content": "答案是 7。"}]


def tool_case(user: str = "北京今天天气怎么样？", call: dict = WEATHER_CALL, as_strings: bool = True) -> dict:
    """A tool-call case in the upstream SFT shape (tools and tool_calls as JSON strings)."""
    dump = (lambda x: json.dumps(x, ensure_ascii=False)) if as_strings else (lambda x: x)
    return {"conversations": [{"role": "system", "content": "你是助手。", "tools": dump(TOOLS)},
                              {"role": "user", "content": user},
                              {"role": "assistant", "content": "", "tool_calls": dump([call])}]}


def overfit_checkpoint(folder: Path, steps: int = 80) -> Path:
    """A tiny model overfit on two conversations (a few seconds): it answers "3 加 4 等于多少？" with
    "答案是 7。" and "北京今天天气怎么样？" (tools offered) with the get_weather call, thinking off."""
    from minimind.chat import render_conversation

    tok = shipped_tokenizer()
    case = tool_case(as_strings=False)["conversations"]
    rows = [render_conversation(tok, GEN_CHAT), render_conversation(tok, case)]
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_seq_len=512)
    model = MiniMindLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        loss = model(x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_model(model.eval(), folder, tokenizer_dir=default_tokenizer_dir())
