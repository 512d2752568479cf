"""The training commands end to end on tiny data: pretrain -> sft -> lora, exact resume after kill -9,
SFT masking, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimind.cli import main

WORDS = ("the cat sat on a mat and the dog ran to the park while birds sang songs of spring "
         "小猫 在 花园 里 玩 太阳 很 温暖").split()
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--no-progress", "--eval-batches", "1",
        "--num-samples", "1", "--sample-tokens", "4"]


def _pretrain_file(path: Path, n: int = 120) -> Path:
    import random

    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))},
                               ensure_ascii=False) + "\n")
    return path


def _sft_file(path: Path, n: int = 60) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            conv = [{"role": "system", "content": "You are MiniMind."},
                    {"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
            f.write(json.dumps({"conversations": conv}) + "\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {"pretrain": _pretrain_file(d / "pretrain.jsonl"), "sft": _sft_file(d / "sft.jsonl")}


@pytest.mark.slow
def test_pretrain_sft_lora_plot(tmp_path, data, capsys):
    pre, sft, lora = tmp_path / "pre", tmp_path / "sft", tmp_path / "lora"
    assert main(["pretrain", *TINY, "--data", str(data["pretrain"]), "--out", str(pre), "--max-steps", "3"]) == 0
    ck = pre / "checkpoints" / "step-0000003"
    for name in ("model.safetensors", "model_config.json", "tokenizer.json", "trainer_state.pt", "trainer_state.json"):
        assert (ck / name).is_file(), name
    for name in ("metrics.jsonl", "train_config.json", "loss.png", "lr.png", "tokenizer/tokenizer.json"):
        assert (pre / name).is_file(), name
    assert json.loads((pre / "train_config.json").read_text())["max_steps"] == 3

    assert main(["sft", *TINY, "--init", str(pre), "--data", str(data["sft"]), "--out", str(sft), "--max-steps", "3"]) == 0
    assert (sft / "checkpoints" / "step-0000003" / "model.safetensors").is_file()

    # --config supplies options, explicit flags override them.
    cfg = tmp_path / "lora.json"
    cfg.write_text(json.dumps({"lora_rank": 2, "max_steps": 50, "lr": 1e-3}))
    assert main(["lora", *TINY, "--config", str(cfg), "--init", str(sft), "--data", str(data["sft"]),
                 "--out", str(lora), "--max-steps", "3"]) == 0
    saved = json.loads((lora / "train_config.json").read_text())
    assert (saved["lora_rank"], saved["max_steps"], saved["lr"]) == (2, 3, 1e-3)
    lck = lora / "checkpoints" / "step-0000003"
    assert (lck / "adapter.safetensors").is_file() and not (lck / "model.safetensors").exists()
    assert (lck / "adapter.safetensors").stat().st_size < (sft / "checkpoints" / "step-0000003" / "model.safetensors").stat().st_size / 10
    assert json.loads((lck / "adapter_config.json").read_text())["rank"] == 2
    from minimind.checkpoint import load_model

    merged = load_model(lora / "merged")  # a normal checkpoint: base + adapters folded in
    assert merged.config.vocab_size == load_model(sft).config.vocab_size

    (pre / "loss.png").unlink()
    assert main(["plot", str(pre)]) == 0
    assert (pre / "loss.png").stat().st_size > 1000


def test_sft_loss_counts_only_assistant_tokens(data):
    from minimind.data import make_loader
    from minimind.model import MiniMindLM
    from minimind.tokenizer import load_tokenizer
    from minimind.train.stages.base import TrainContext
    from minimind.train.stages.sft import SFTConfig, SFTStage
    from minimind.config import get_preset

    tok = load_tokenizer(None)
    batch = next(iter(make_loader("sft", data["sft"], tok, 64, 4)))
    labels = batch["labels"]
    # The supervised tokens are exactly the assistant answers and their <|im_end|>.
    spans = [tok.decode([t for t in row.tolist() if t != -100]) for row in labels]
    assert all(s.endswith("<|im_end|>") and " plus " in s and "is" in s for s in spans)
    assert not any("What is" in s or "MiniMind" in s for s in spans)

    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.num_layers = 1
    model = MiniMindLM(cfg)
    ctx = TrainContext(config=SFTConfig(max_steps=1), device=torch.device("cpu"), model=model, tokenizer=tok)
    stage = SFTStage(ctx.config)
    loss, _ = stage.loss(model, batch, ctx)
    logits = model(batch["input_ids"]).logits
    keep = labels[:, 1:] != -100
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][keep], labels[:, 1:][keep])
    torch.testing.assert_close(loss, manual)
    assert stage.batch_weight(batch) == keep.sum().item()


def test_clear_errors(tmp_path, data, capsys):
    assert main(["sft", *TINY, "--data", str(data["sft"]), "--out", str(tmp_path / "a"), "--max-steps", "1"]) == 2
    assert "needs --init" in capsys.readouterr().err
    assert main(["pretrain", *TINY, "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "b"),
                 "--max-steps", "1"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
    assert main(["pretrain", *TINY, "--data", str(data["pretrain"]), "--out", str(tmp_path / "c"),
                 "--max-steps", "lots"]) == 2
    assert "max_steps: expected int, got 'lots'" in capsys.readouterr().err
    assert main(["pretrain", *TINY, "--data", str(data["pretrain"]), "--out", str(tmp_path / "d")]) == 2
    assert "--max-steps" in capsys.readouterr().err
    assert main(["sft", *TINY, "--init", str(tmp_path), "--data", str(data["sft"]), "--out", str(tmp_path / "e"),
                 "--max-steps", "1"]) == 2
    assert "not a MiniMind checkpoint" in capsys.readouterr().err


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "minimind", *args]


@pytest.mark.slow
def test_kill_9_then_resume_is_exact(tmp_path, data):
    args = ["pretrain", *TINY, "--data", str(data["pretrain"]), "--max-steps", "40", "--save-every", "4",
            "--eval-batches", "0", "--num-samples", "0", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(_cli(*args, "--out", str(full)), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cli(*args, "--out", str(part)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics, killed_at = part / "metrics.jsonl", None
    while proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if len(lines) >= 10:  # mid-run, some steps past the last checkpoint
            proc.send_signal(signal.SIGKILL)
            killed_at = len(lines)
            break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    latest = (part / "checkpoints" / "latest").read_text().strip()
    assert latest != "step-0000040"
    subprocess.run(_cli(*args, "--out", str(part), "--resume"), check=True, env=env, capture_output=True)

    def losses(run):
        return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
                if json.loads(x)["split"] == "train"]

    assert losses(part) == losses(full)  # identical floats, each step exactly once
    a = load_file(str(full / "checkpoints" / "step-0000040" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "step-0000040" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
