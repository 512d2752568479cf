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
    from minimind.tokenizer_train import train_tokenizer

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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread, and so on a busy CPU
    try:
        for _ in range(steps):
            loss = model(x, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return save_model(model, folder / "ckpt", tokenizer_dir=tok.path), tok


def shared_trained_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """`trained_checkpoint` built once per test session (per xdist worker) and reused."""
    from minimind.tokenizer import load_tokenizer

    folder = tmp_path_factory.getbasetemp() / "infer-trained"
    ckpt = folder / "ckpt"
    if not (ckpt / "model.safetensors").is_file():
        return trained_checkpoint(folder)
    return ckpt, load_tokenizer(ckpt)


class LiveServer:
    """Run an ASGI app under uvicorn in a background thread on a free loopback port."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
