"""The training loop on a synthetic stream: learning, accumulation, schedule, NaN stop, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from _train_support import MaskedStage, SyntheticStage, run, tiny_config, train_config
from minimind import locator
from minimind.model import MiniMindLM
from minimind.train import checkpointing as ckpt
from minimind.train.optim import lr_at, param_groups
from minimind.train.trainer import TrainingError


def test_loss_falls_and_run_dir_is_complete(tmp_path):
    _, res = run(SyntheticStage, tmp_path, max_steps=25, eval_every=25)
    first, last = sum(res.losses[:3]) / 3, sum(res.losses[-3:]) / 3
    assert last < first - 0.4, (first, last)
    assert res.val_loss is not None and res.val_loss < first
    names = {p.name for p in tmp_path.iterdir()}
    assert {"checkpoints", "metrics.jsonl", "train_config.json", "loss.png", "lr.png"} <= names
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 26))
    assert [r["loss"] for r in train] == res.losses
    val = [r for r in records if r["split"] == "val"]
    assert val[-1]["ppl"] == pytest.approx(math.exp(val[-1]["loss"]))
    assert locator.latest_checkpoint(tmp_path).name == "step-0000025"


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    # Masks differ per row, so averaging per-micro-batch means would be wrong; the trainer weights
    # each micro-batch by its loss tokens and must reproduce the big batch exactly.
    t1, r1 = run(MaskedStage, tmp_path / "big", batch_size=8, grad_accum=1, max_steps=3, eval_batches=0)
    t2, r2 = run(MaskedStage, tmp_path / "acc", batch_size=2, grad_accum=4, max_steps=3, eval_batches=0)
    for (n, a), (_, b) in zip(t1.model.named_parameters(), t2.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=n)  # unweighted: ~1e-2 off
    assert r1.losses == pytest.approx(r2.losses, rel=1e-6)


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = train_config("x", lr=1.0, warmup_steps=4, min_lr_ratio=0.1, max_steps=14)
    lrs = [lr_at(s, cfg, 14) for s in range(14)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)  # cosine starts at the peak ...
    assert lrs[-1] == pytest.approx(0.1)  # ... and ends exactly at min LR on the last step
    assert lrs[9] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 9)))
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_param_groups_skip_norms_biases_embeddings():
    model = MiniMindLM(tiny_config(qkv_bias=True))
    groups = param_groups(model.named_parameters(), 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert "layers.0.self_attn.q_proj.weight" in names and "layers.1.mlp.down_proj.weight" in names
    assert not any("norm" in n or n.endswith("bias") or "embed" in n for n in names)
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters()))


class NaNAtStep3(SyntheticStage):
    def loss(self, model, batch, ctx):
        loss, m = super().loss(model, batch, ctx)
        return (loss * float("nan") if ctx.step == 2 else loss), m  # ctx.step = steps done so far


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*step-0000002"):
        run(NaNAtStep3, tmp_path, max_steps=6, save_every=1, eval_batches=0)
    good = locator.latest_checkpoint(tmp_path)
    assert good.name == "step-0000002"
    run(SyntheticStage, tmp_path / "ref", max_steps=6, save_every=2, keep_last=5, eval_batches=0)
    ref = load_file(str(tmp_path / "ref" / "checkpoints" / "step-0000002" / "model.safetensors"))
    got = load_file(str(good / "model.safetensors"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_checkpoint_crash_mid_save_keeps_previous(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, lambda d: (d / "w").write_text("one"), {"val_loss": 2.0}, keep_last=2)

    def boom(d):
        (d / "w").write_text("half")
        raise KeyboardInterrupt  # stands in for kill -9 in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, boom, {}, keep_last=2)
    assert locator.latest_checkpoint(tmp_path).name == "step-0000001"
    assert (locator.latest_checkpoint(tmp_path) / "w").read_text() == "one"
    ckpt.clean_partial(tmp_path)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_n_plus_best(tmp_path):
    losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: None}
    for step, val in losses.items():
        ckpt.save_checkpoint(tmp_path, step, lambda d: None, {"val_loss": val}, keep_last=2)
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert left == ["step-0000002", "step-0000004", "step-0000005"]
    assert (tmp_path / "checkpoints" / "best").read_text().strip() == "step-0000002"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000005"


def test_resume_in_process_matches_uninterrupted(tmp_path):
    _, full = run(SyntheticStage, tmp_path / "full", max_steps=8, save_every=4, eval_batches=0)
    run(SyntheticStage, tmp_path / "part", max_steps=8, save_every=4, eval_batches=0)
    # Pretend the run died after step 4: drop the later checkpoint and point `latest` back.
    part = tmp_path / "part" / "checkpoints"
    (part / "latest").write_text("step-0000004\n")
    trainer, resumed = run(SyntheticStage, tmp_path / "part", max_steps=8, save_every=4, eval_batches=0, resume=True)
    assert resumed.losses == full.losses[4:]
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step-0000008" / "model.safetensors"))
    b = load_file(str(part / "step-0000008" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["split"] == "train"]
    assert steps == list(range(1, 9))  # no step logged twice


def test_existing_run_needs_resume_flag(tmp_path):
    run(SyntheticStage, tmp_path, max_steps=2, eval_batches=0)
    with pytest.raises(Exception, match="--resume"):
        run(SyntheticStage, tmp_path, max_steps=2, eval_batches=0)


def test_activation_checkpointing_gives_same_gradients(tmp_path):
    t1, r1 = run(SyntheticStage, tmp_path / "a", max_steps=2, eval_batches=0)
    t2, r2 = run(SyntheticStage, tmp_path / "b", max_steps=2, eval_batches=0, activation_checkpointing=True)
    assert r1.losses == pytest.approx(r2.losses, rel=1e-6)
    for a, b in zip(t1.model.parameters(), t2.model.parameters()):
        torch.testing.assert_close(a, b)


def test_quickstart_plan_fits_the_budget():
    from minimind.train.quickstart import plan_steps, quickstart_plan

    plan = quickstart_plan()  # minimind/recipes/quickstart.json
    pre, sft = (s for s in plan["stages"] if "share" in s)
    assert (pre["name"], sft["name"]) == ("pretrain", "sft")
    per_step = {s["name"]: s["options"]["batch_size"] * s["options"]["seq_len"] for s in (pre, sft)}
    n_pre, n_sft = plan_steps(tok_s=3000.0, minutes=9.0)
    tokens = n_pre * per_step["pretrain"] + n_sft * per_step["sft"]
    assert tokens / 3000.0 <= (pre["share"] + sft["share"]) * 9 * 60 + 1
    assert n_pre == int(0.6 * 540 * 3000 / 2048)  # the shipped plan: 60% of the time, 8 x 256 tokens a step
    assert plan_steps(1.0, 9.0) == (pre["steps"][0], sft["steps"][0])  # slow machine: the minimums
    assert plan_steps(1e9, 9.0) == (pre["steps"][1], sft["steps"][1])  # GPU: the maximums


class SixBatchEpochs(SyntheticStage):
    def batches(self, ctx, split="train"):
        b = super().batches(ctx, split)
        b.__class__ = type("Sized6", (type(b),), {"__len__": lambda self: 6})
        return b


def test_budget_by_epochs_and_tokens(tmp_path):
    _, res = run(SixBatchEpochs, tmp_path / "ep", max_steps=None, epochs=2, grad_accum=2, eval_batches=0)
    assert res.step == 6  # 2 epochs x 6 micro-batches / 2 per step
    # 16 tokens x 4 rows = 64 tokens per step: 200 tokens need ceil(200 / 64) = 4 steps.
    _, res = run(SyntheticStage, tmp_path / "tok", max_steps=None, max_tokens=200, eval_batches=0)
    assert res.step == 4


def test_optional_loggers_fail_clearly_when_missing(tmp_path):
    import importlib.util

    from minimind.errors import UserError
    from minimind.train.metrics import MetricsLogger

    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(UserError, match="pip install tensorboard"):
            MetricsLogger(tmp_path, tensorboard=True)
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(UserError, match="pip install wandb"):
            MetricsLogger(tmp_path, wandb_project="x")
