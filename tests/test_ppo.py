"""PPO (`minimind ppo`): a 2-step CLI run of a tiny model on single-turn RL prompts, its value
head saved beside a plain policy checkpoint, and an exact resume. The loss math is checked on
hand values in test_losses.py."""


import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from minimind.checkpoint import load_model
from minimind.cli import main
from support import cli_rank, free_port, killed_copy, save_tiny_policy, train_records, write_jsonl


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("ppo")
    save_tiny_policy(d / "init", tok, max_seq_len=256)
    recs = [{"conversations": [{"role": "user", "content": f"What is {i} + 2?"},
                               {"role": "assistant", "content": str(i + 2)}]} for i in range(8)]
    return {"init": str(d / "init"), "rl": str(write_jsonl(d / "rl.jsonl", recs))}


def test_ppo_cli_runs_saves_the_value_head_and_resumes_exactly(files, tmp_path):
    args = ["ppo", "--init", files["init"], "--data", files["rl"], "--max-steps", "2", "--batch-size", "2",
            "--group-size", "2", "--max-new-tokens", "8", "--seq-len", "64", "--no-progress", "--num-samples", "0",
            "--eval-batches", "0", "--save-every", "1", "--keep-last", "3", "--lr", "1e-2",
            "--rewards", "format:1,correct:1,length:1@20"]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0
    recs = train_records(full)
    assert [r["step"] for r in recs] == [1, 2]
    for r in recs:
        assert {"reward", "kl", "value", "return", "policy_loss", "value_loss", "clip_fraction"} <= set(r)
    # step 1: policy = reference (KL 0), ratio exactly 1, and the zero-initialised head predicts V = 0
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6) and recs[0]["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert recs[0]["value"] == 0.0 and recs[0]["clip_fraction"] == 0.0
    assert recs[1]["value"] != 0.0  # the value head learned from step 1
    ck = full / "checkpoints" / "step-0000002"
    head = load_file(str(ck / "value_head.safetensors"))
    assert set(head) == {"value_head.weight", "value_head.bias"} and head["value_head.weight"].abs().sum() > 0
    assert not any(k.startswith("value_head") for k in load_file(str(ck / "model.safetensors")))
    load_model(ck)  # the policy is a plain model for chat/serve/export

    part = killed_copy(full, tmp_path / "part", step=1)
    assert main([*args, "--out", str(part), "--resume"]) == 0
    assert [(r["loss"], r["value"]) for r in train_records(part)] == [(r["loss"], r["value"]) for r in recs]
    for name in ("model.safetensors", "value_head.safetensors"):
        a, b = load_file(str(ck / name)), load_file(str(part / "checkpoints" / "step-0000002" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ppo_bad_options_are_user_errors(files, tmp_path, capsys):
    base = ["ppo", "--init", files["init"], "--data", files["rl"], "--out", str(tmp_path / "x"), "--max-steps", "1"]
    for extra, msg in ((["--lam", "1.5"], "--gamma and --lam must be in [0, 1]"), (["--value-clip", "0"], "--value-clip")):
        assert main([*base, *extra]) == 2
        assert msg in capsys.readouterr().err


@pytest.mark.slow
def test_ppo_runs_under_ddp_with_two_processes(files, tmp_path, capfd):
    """gloo, 2 processes: each rank samples its own prompts, the value head (outside the wrapped
    forward) is all-reduced with the policy, and rank 0 saves both."""
    out = tmp_path / "ddp"
    args = ["ppo", "--init", files["init"], "--data", files["rl"], "--out", str(out), "--max-steps", "2",
            "--batch-size", "2", "--group-size", "2", "--max-new-tokens", "8", "--seq-len", "64", "--no-progress",
            "--num-samples", "0", "--eval-batches", "0", "--lr", "1e-2", "--device", "cpu",
            "--rewards", "format:1,correct:1,length:1@20"]
    mp.spawn(cli_rank, args=(free_port(), args), nprocs=2, join=True)
    assert "2 process(es)" in capfd.readouterr().out  # really two ranks, not two single-process runs
    recs = train_records(out)
    assert [r["step"] for r in recs] == [1, 2] and recs[1]["value"] != 0.0
    head = load_file(str(out / "checkpoints" / "step-0000002" / "value_head.safetensors"))
    assert head["value_head.weight"].abs().sum() > 0
