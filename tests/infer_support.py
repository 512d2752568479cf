"""Shared helpers for the inference / serving tests: a tiny random model and a tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch

from minimind.checkpoint import save_model
from minimind.config import ModelConfig
from minimind.model import MiniMindLM

CORPUS = (
    "Hello world. The quick brown fox jumps over the lazy dog.\n"
    "MiniMind trains small language models on a laptop.\n"
    "你好，世界。小模型也能学会说话。\n"
) * 20


def tiny_model(vocab_size: int = 128, seed: int = 0, max_seq_len: int = 256, sharp: bool = True) -> MiniMindLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_seq_len=max_seq_len, tie_word_embeddings=False)
    model = MiniMindLM(cfg).eval()
    if sharp:
        # Random init gives near-uniform logits; a larger output scale makes greedy choices
        # decisive (no near-ties that float rounding could flip between batched and single runs).
        with torch.no_grad():
            model.lm_head.weight.mul_(30)
    return model


def tiny_tokenizer(folder: Path, vocab_size: int = 300):
    """A byte-level BPE with few merges: Chinese characters stay split into 2-3 byte tokens."""
    from minimind.tokenizer import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return train_tokenizer([corpus], vocab_size, folder / "tok")


def tiny_checkpoint(folder: Path, seed: int = 0, max_seq_len: int = 256) -> tuple[Path, object]:
    """Save a tiny model with the tiny tokenizer; return (checkpoint dir, tokenizer)."""
    tok = tiny_tokenizer(folder / "tokenizer")
    model = tiny_model(tok.vocab_size, seed=seed, max_seq_len=max_seq_len)
    return save_model(model, folder / "ckpt", tokenizer_dir=tok.path), tok


CHAT = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "reasoning_content": "用户在打招呼。", "content": "你好，世界！我是小模型。"},
]


def trained_checkpoint(folder: Path, steps: int = 200) -> tuple[Path, object]:
    """A tiny model overfit (a few seconds) on one chat turn, so it answers real Chinese text.

    Whatever the user says, it reasons "用户在打招呼。" and answers "你好，世界！我是小模型。".
    """
    from minimind.chat import render_conversation

    tok = tiny_tokenizer(folder / "tokenizer", vocab_size=420)  # merges cover the corpus' Chinese
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_seq_len=256)
    model = MiniMindLM(cfg)
    rows = []
    for question in ("你好", "hello", "hi"):
        ids, mask = render_conversation(tok, [{**CHAT[0], "content": question}, CHAT[1]])
        rows.append((ids, mask))
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows), T, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (ids, mask) in enumerate(rows):
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(ids)] = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        loss = model(x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return save_model(model, folder / "ckpt", tokenizer_dir=tok.path), tok
