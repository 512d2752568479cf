"""Eval suites during training (`--eval-suite`): metrics at the evaluation steps, checked before
step 1, RNG and train() mode untouched, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimind.cli import main
from support import killed_copy

WORDS = "the cat sat on a mat and the dog ran to the park 小猫 在 花园 里 玩 太阳 很 温暖".split()
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--no-progress", "--eval-batches", "1",
        "--num-samples", "0", "--seed", "5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("data") / "pretrain.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(80):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))},
                               ensure_ascii=False) + "\n")
    return path


def _records(run: Path, split: str) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("split") == split]


def test_mcq_suite_is_logged_at_each_evaluation_and_resume_is_exact(tmp_path, corpus, capsys):
    # The embedded demo MCQ set (C-Eval layout), 1 question per subject = 4 questions.
    args = ["pretrain", *TINY, "--data", str(corpus), "--max-steps", "6", "--eval-every", "2", "--save-every", "2",
            "--keep-last", "5", "--eval-suite", "mcq", "--eval-limit", "1"]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    evals = _records(full, "eval")
    assert [r["step"] for r in evals] == [2, 4, 6]
    for r in evals:
        assert set(r) >= {"eval/mcq_accuracy", "eval/mcq_accuracy_macro", "eval/mcq_accuracy_norm"}
        assert r["eval/mcq_accuracy"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 questions
    assert "eval mcq" in capsys.readouterr().out

    # Interrupted after step 2 (its checkpoint was saved before that step's evaluation): resuming
    # must give the same losses and weights as the run that evaluated and went on.
    part = killed_copy(full, tmp_path / "part", step=2)
    assert main([*args, "--out", str(part), "--resume"]) == 0
    assert [r["loss"] for r in _records(part, "train")] == [r["loss"] for r in _records(full, "train")]
    assert [r["eval/mcq_accuracy"] for r in _records(part, "eval")] == [r["eval/mcq_accuracy"] for r in evals]
    a = load_file(str(full / "checkpoints" / "step-0000006" / "model.safetensors"))
    b = load_file(str(part / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_eval_settings_fail_before_step_1(tmp_path, corpus, capsys):
    base = ["pretrain", *TINY, "--data", str(corpus), "--max-steps", "2"]
    cases = [
        (["--eval-suite", "mcq", "--eval-data", str(tmp_path / "missing.jsonl")], "--eval-data"),
        (["--eval-suite", "quiz"], "--eval-suite must be one of"),
        (["--eval-suite", "ceval"], "needs --eval-data"),
        (["--eval-data", str(corpus)], "need --eval-suite"),
        (["--eval-suite", "demo", "--eval-limit", "0"], "--eval-limit must be at least 1"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert main([*base, "--out", str(out), *extra]) == 2, extra
        assert message in capsys.readouterr().err
        assert not (out / "metrics.jsonl").exists()
    # A malformed record in the eval file: file:line, and nothing trained or written.
    bad = tmp_path / "gen.jsonl"
    bad.write_text(json.dumps({"conversations": [{"role": "user", "content": "1+1?"}], "answer": "2"}) + "\n{oops\n")
    out = tmp_path / "bad"
    assert main([*base, "--out", str(out), "--eval-suite", "gen", "--eval-data", str(bad)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_suite_leaves_rng_and_train_mode_as_it_found_them(tmp_path, corpus):
    from minimind.train import get_stage
    from minimind.train.config import load_config
    from minimind.train.trainer import Trainer

    stage_cls = get_stage("pretrain")
    cfg = load_config(stage_cls.config_class, None, {
        "data": [str(corpus)], "out": str(tmp_path / "r"), "preset": "tiny", "seq_len": 32, "batch_size": 2,
        "max_steps": 1, "eval_suite": "demo", "eval_limit": 1, "num_samples": 0, "progress": False})
    trainer = Trainer(stage_cls(cfg))
    trainer._setup()
    try:
        model = trainer.model
        model.train()
        before = torch.get_rng_state()
        (record,) = trainer.evaluator.samples(model, 7)
        assert torch.equal(torch.get_rng_state(), before) and model.training
        assert record["step"] == 7 and record["split"] == "eval"
        assert {"eval/ppl_bits_per_byte", "eval/mcq_accuracy", "eval/gen_accuracy", "eval/toolcall_accuracy"} <= set(record)
        assert all(0 <= record[k] <= 1 for k in record if k.endswith("accuracy"))
    finally:
        trainer.lock.release()
