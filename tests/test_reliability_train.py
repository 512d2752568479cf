"""Training never loses finished work and never answers a user mistake with a traceback (issue 16).

Classes tested here, each failing on the code before the fix:
- late errors: a held-out split too small (for the world size) and sample settings are checked
  before step 1; the final checkpoint is written before evaluation, samples and plots;
- the run-directory lock: a second run is refused, a dead holder's lock is no obstacle, a refused
  `--resume` leaves train_config.json and metrics.jsonl as they were;
- flags validated by the config layer for every stage; OS errors (full disk, `--out` a file) as
  one line;
- leftovers of a killed save (`.latest.tmp-PID`, a half-pruned checkpoint) cleaned on the next start;
- `plot` on a damaged metrics file; `--seq-len 1`;
- --max-minutes (quickstart's clock): re-planning from the measured step time, with a fake clock.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from _train_support import SyntheticStage, run, tiny_config, train_config
from minimind import locator
from minimind.cli import main
from minimind.errors import UserError
from minimind.model import MiniMindLM
from minimind.train import checkpointing as ckpt
from minimind.train.quickstart import quickstart_plan, stage_minutes
from minimind.train.recipes import finished
from minimind.train.trainer import Trainer
from support import cli_rank, free_port

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang songs of spring".split()
TINY = ["--preset", "tiny", "--batch-size", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def pretrain_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pretrain.jsonl"
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(120):  # 1% held out: 2 documents, a few dozen tokens
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))}) + "\n")
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "minimind", *args]


# -- 1. late errors ---------------------------------------------------------------------------------

def test_held_out_split_too_small_skips_evaluation_and_keeps_the_run(tmp_path, pretrain_data, capsys):
    # At seq_len 128 the 2 held-out documents make no window: before, the run trained every step,
    # then died in the final evaluation without writing any checkpoint.
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--seq-len", "128", "--data", str(pretrain_data), "--out", str(out),
                 "--max-steps", "2", "--eval-batches", "1", "--num-samples", "0"]) == 0
    printed = capsys.readouterr().out
    assert "warning: no evaluation in this run: too little pretrain data in the 'val' split" in printed
    assert printed.index("warning: no evaluation") < printed.index("pretrain: starting")  # before step 1
    assert locator.latest_checkpoint(out).name == "step-0000002"


def test_loader_refuses_a_split_smaller_than_the_world_when_built(pretrain_data, tok):
    from minimind.data.loader import make_loader

    make_loader("pretrain", pretrain_data, tok, 16, 1, split="val")  # fine for one rank
    with pytest.raises(UserError, match="too little pretrain data in the 'val' split for 64 rank"):
        make_loader("pretrain", pretrain_data, tok, 16, 1, rank=0, world_size=64, split="val")


@pytest.mark.slow
def test_two_process_run_with_one_held_out_window_finishes_with_its_checkpoint(tmp_path, pretrain_data, tok):
    # The case: 2 ranks (gloo), a held-out split of a single window, which one rank can
    # evaluate but not two. Choose seq_len so that the split holds exactly one window.
    from minimind.data.loader import make_loader

    stream = 2 * make_loader("pretrain", pretrain_data, tok, 2, 1, split="val").samples_per_epoch
    seq_len = stream // 2 + 1
    assert make_loader("pretrain", pretrain_data, tok, seq_len, 1, split="val").samples_per_epoch == 1
    out = tmp_path / "ddp"
    argv = ["pretrain", *TINY, "--seq-len", str(seq_len), "--data", str(pretrain_data), "--out", str(out),
            "--max-steps", "2", "--eval-batches", "1", "--num-samples", "0"]
    mp.spawn(cli_rank, args=(free_port(), argv), nprocs=2, join=True)
    final = locator.latest_checkpoint(out)
    assert final.name == "step-0000002" and (final / "model.safetensors").is_file()
    assert json.loads((final / locator.STATE_JSON).read_text())["world_size"] == 2


def test_sample_tokens_zero_is_refused_before_any_work(tmp_path, pretrain_data, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--seq-len", "32", "--data", str(pretrain_data), "--out", str(out),
                 "--max-steps", "1", "--num-samples", "1", "--sample-tokens", "0"]) == 2
    assert "--sample-tokens must be at least 1" in capsys.readouterr().err
    assert not out.exists()  # refused by the config, before the run directory was made
    # With no samples asked for, the value is irrelevant and accepted.
    assert main(["pretrain", *TINY, "--seq-len", "32", "--data", str(pretrain_data), "--out", str(out),
                 "--max-steps", "1", "--num-samples", "0", "--sample-tokens", "0", "--eval-batches", "0"]) == 0


class FinalEvalFails(SyntheticStage):
    """Held-out loss raises at the last step: stands in for anything failing after training."""

    def loss(self, model, batch, ctx):
        if not model.training and ctx.step == ctx.config.max_steps:
            raise RuntimeError("evaluation broke")
        return super().loss(model, batch, ctx)


def test_final_checkpoint_is_written_before_evaluation(tmp_path):
    with pytest.raises(RuntimeError, match="evaluation broke"):
        run(FinalEvalFails, tmp_path, max_steps=3, eval_batches=1)
    assert locator.latest_checkpoint(tmp_path).name == "step-0000003"


def test_val_loss_is_recorded_in_the_checkpoint_after_it_is_saved(tmp_path):
    _, res = run(SyntheticStage, tmp_path, max_steps=4, eval_every=2, save_every=2, keep_last=5)
    last = json.loads((tmp_path / "checkpoints" / "step-0000004" / locator.STATE_JSON).read_text())
    assert last["val_loss"] == res.val_loss
    first = json.loads((tmp_path / "checkpoints" / "step-0000002" / locator.STATE_JSON).read_text())
    best = "step-0000004" if res.val_loss < first["val_loss"] else "step-0000002"
    assert (tmp_path / "checkpoints" / "best").read_text().strip() == best
    assert last["best_val"] == min(first["val_loss"], res.val_loss)


def test_resume_is_exact_with_evaluation_between_save_and_next_step(tmp_path):
    kw = dict(max_steps=8, save_every=4, eval_every=4, eval_batches=2)
    _, full = run(SyntheticStage, tmp_path / "full", **kw)
    run(SyntheticStage, tmp_path / "part", **kw)
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step-0000004\n")
    _, resumed = run(SyntheticStage, tmp_path / "part", resume=True, **kw)
    assert resumed.losses == full.losses[4:]


# -- 4. the run-directory lock ---------------------------------------------------------------------------

def test_a_held_run_directory_is_refused_and_released_after_the_run(tmp_path):
    from minimind.train.runlock import RunLock

    with RunLock(tmp_path):
        with pytest.raises(UserError, match=rf"{tmp_path} is in use by another run \(pid {os.getpid()} on "):
            run(SyntheticStage, tmp_path, max_steps=1, eval_batches=0)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "train_config.json").exists()
    run(SyntheticStage, tmp_path, max_steps=1, eval_batches=0)
    with RunLock(tmp_path):  # the finished run released it
        pass


@pytest.mark.slow
def test_second_cli_run_on_a_busy_directory_is_refused(tmp_path, pretrain_data, capsys):
    out = tmp_path / "run"
    args = ["pretrain", *TINY, "--seq-len", "32", "--data", str(pretrain_data), "--max-steps", "100000",
            "--eval-batches", "0", "--num-samples", "0"]
    first = subprocess.Popen(_cli(*args, "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").is_file():  # the first run is training
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert main([*args, "--out", str(out), "--max-steps", "1"]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another run (pid {first.pid} on" in err and err.count("\n") == 1
    finally:
        first.kill()
        first.wait()
    # kill -9 leaves the lock file, but the kernel dropped the lock with the process
    assert (out / ".lock").is_file()
    assert main([*args, "--out", str(out), "--max-steps", "1"]) == 0


def test_lock_of_a_killed_process_is_not_an_obstacle(tmp_path):
    code = ("import os, signal, sys; from minimind.train.runlock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)])
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / ".lock").read_text())["pid"] != os.getpid()  # the dead process's record
    _, res = run(SyntheticStage, tmp_path, max_steps=1, eval_batches=0)
    assert res.step == 1


def test_refused_resume_leaves_the_run_files_untouched(tmp_path):
    run(SyntheticStage, tmp_path, max_steps=2, eval_batches=0, lr=3e-3)
    before = {n: (tmp_path / n).read_bytes() for n in ("train_config.json", "metrics.jsonl")}
    with pytest.raises(UserError, match="nope"):  # refused after the config check, while loading --init
        run(SyntheticStage, tmp_path, max_steps=4, eval_batches=0, lr=1e-3, resume=True, init=str(tmp_path / "nope"))
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


# -- 11/12. flags, OS errors --------------------------------------------------------------------------

BAD_FLAGS = [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--beta1", "2"], "--beta1 must be in [0, 1), got 2.0"),
    (["--beta2", "-0.5"], "--beta2 must be in [0, 1), got -0.5"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--log-every", "0"], "--log-every must be at least 1, got 0"),
    (["--eval-every", "-2"], "--eval-every must be at least 0, got -2"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    (["--device", "bogus"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'bogus'"),
    (["--seq-len", "1"], "--seq-len must be at least 2 (each token predicts the next one), got 1"),
    (["--max-minutes", "0"], "--max-minutes must be positive, got 0.0"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_training_flags_are_one_line_errors(tmp_path, pretrain_data, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--seq-len", "32", "--data", str(pretrain_data), "--out", str(out),
                 "--max-steps", "1", *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not out.exists()


@pytest.mark.parametrize("stage", ["pretrain", "sft", "lora", "dpo", "distill", "reason", "grpo"])
def test_every_stage_validates_the_common_flags(tmp_path, capsys, stage):
    teacher = ["--teacher", "t"] if stage == "distill" else []
    assert main([stage, *teacher, "--out", str(tmp_path / "r"), "--max-steps", "1", "--beta1", "nan"]) == 2
    assert capsys.readouterr().err == "error: --beta1 must be a finite number, got nan\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(tmp_path, pretrain_data, capsys):
    assert main(["pretrain", "--device", "cuda", "--data", str(pretrain_data), "--out", str(tmp_path / "r"),
                 "--max-steps", "1"]) == 2
    assert capsys.readouterr().err == "error: --device cuda: CUDA is not available on this machine\n"


def test_out_that_is_a_file_is_one_line(tmp_path, pretrain_data, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["pretrain", *TINY, "--seq-len", "32", "--data", str(pretrain_data), "--out", str(afile),
                 "--max-steps", "1"]) == 2
    assert capsys.readouterr().err == f"error: --out {afile} is a file, not a directory; choose another --out\n"
    assert afile.read_text() == "mine"


def _limit_file_size() -> None:
    # A file-size limit makes writes fail like a full disk does (EFBIG instead of ENOSPC; torch's
    # zip writer reports both as "unexpected pos"). Ignore SIGXFSZ so the write returns an error.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))


@pytest.mark.slow
def test_full_disk_during_save_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, pretrain_data):
    # `tiny` weights (11 MB) fit under the limit, the optimizer state (23 MB) does not.
    out = tmp_path / "run"
    proc = subprocess.run(_cli("pretrain", *TINY, "--seq-len", "32", "--data", str(pretrain_data), "--out", str(out),
                               "--max-steps", "1", "--eval-batches", "0", "--num-samples", "0"),
                          preexec_fn=_limit_file_size, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not write checkpoint step-0000001 in {out / 'checkpoints'}: unexpected pos")
    assert "MiB free there" in last and "--resume" in last
    assert not list((out / "checkpoints").iterdir())  # neither the partial folder nor `latest`


# -- 13. leftovers of killed saves; plot on damaged metrics ------------------------------------------------

def test_leftovers_of_a_killed_save_are_cleaned_on_the_next_start(tmp_path):
    run(SyntheticStage, tmp_path, max_steps=2, eval_batches=0)
    ckdir = tmp_path / "checkpoints"
    leftovers = [ckdir / ".latest.tmp-4242", ckdir / ".best.tmp-4242", ckdir / ".tmp-step-0000003-4242",
                 ckdir / ".tmp-del-step-0000001-4242", ckdir / "step-0000002" / ".trainer_state.json.tmp-4242",
                 tmp_path / ".train_config.json.tmp-4242"]
    for p in leftovers:
        if p.name.startswith(".tmp-"):
            p.mkdir()
            (p / "model.safetensors").write_bytes(b"half")
        else:
            p.write_text("half")
    mine = [tmp_path / "notes.txt", ckdir / "notes.txt"]
    for p in mine:
        p.write_text("keep me")
    run(SyntheticStage, tmp_path, max_steps=3, eval_batches=0, resume=True)
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.read_text() == "keep me" for p in mine)


def test_a_kill_during_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    def write(folder):
        for name in ("a", "b", "c"):
            (folder / name).write_text(name)

    ckpt.save_checkpoint(tmp_path, 1, write, {}, keep_last=1)
    real_rmtree = ckpt.shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        path = Path(path)
        if "step-0000001" in path.name and path.is_dir():
            next(path.iterdir()).unlink()  # one file gone, then the process dies
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, write, {}, keep_last=1)
    monkeypatch.undo()
    steps = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [s.name for s in steps] == ["step-0000002"]  # no step folder with missing files
    assert sorted(p.name for p in steps[0].iterdir()) == ["a", "b", "c", locator.STATE_JSON]
    ckpt.clean_partial(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-0000002"]


def test_plot_skips_lines_that_are_not_utf8(tmp_path, capsys):
    lines = [json.dumps({"step": s, "split": "train", "loss": 3.0 / s, "lr": 1e-3}).encode() for s in range(1, 6)]
    lines.insert(2, b'{"step": 9, "split": "train", "loss": \xff\xfe}')
    lines.append(b"\x80\x81 not even json")
    (tmp_path / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").stat().st_size > 1000
    (tmp_path / "metrics.jsonl").write_bytes(b"\xff\xfe\xfd\n")
    assert main(["plot", str(tmp_path)]) == 2
    assert "no training records to plot" in capsys.readouterr().err


# -- 14. --max-minutes: re-planned from the measured step time ------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _slowing_stage(clock: FakeClock):
    class Slowing(SyntheticStage):
        """Each training step takes 1 s of fake time, from step 6 on 3 s: the machine got busier."""

        def loss(self, model, batch, ctx):
            clock.t += 1.0 if ctx.step < 5 else 3.0
            return super().loss(model, batch, ctx)

    return Slowing


def _timed_run(out, **kw):
    clock = FakeClock()
    cfg = train_config(out, max_steps=30, eval_batches=0, warmup_steps=0, min_lr_ratio=0.1, **kw)
    torch.manual_seed(0)
    trainer = Trainer(_slowing_stage(clock)(cfg), model=MiniMindLM(tiny_config()), tokenizer=None, clock=clock)
    return trainer.fit(), clock


def test_max_minutes_replans_when_the_machine_slows_down(tmp_path):
    # 30 s budget; 30 planned steps would take 5 + 25 x 3 = 80 s. After each step the budget
    # becomes step + (time left) // (mean of the last 10 step times): by hand, after step 12
    # (t = 26 s, mean 2.4 s) one more step fits, after step 13 (t = 29, mean 2.6) none: the run ends.
    res, clock = _timed_run(tmp_path / "timed", max_minutes=0.5)
    assert res.step == 13 and clock.t == 29.0
    meta = json.loads((tmp_path / "timed" / "checkpoints" / "step-0000013" / locator.STATE_JSON).read_text())
    assert meta["total_steps"] == 13
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "timed" / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(3e-3 * 0.1)  # the cosine still ends at the minimum LR
    # Without the clock the same run overshoots the budget by far.
    res, clock = _timed_run(tmp_path / "untimed")
    assert res.step == 30 and clock.t == 80.0


def test_quickstart_gives_sft_what_is_left_and_knows_a_clock_shortened_stage_is_done(tmp_path):
    shares = [s["share"] for s in quickstart_plan()["stages"] if "share" in s]  # pretrain, sft
    assert stage_minutes(0, 9.0, elapsed=1.0) == pytest.approx(shares[0] * 9)  # pretraining: its share
    assert stage_minutes(1, 9.0, elapsed=5.4) == pytest.approx(sum(shares) * 9 - 5.4)  # pretraining on time
    assert stage_minutes(1, 9.0, elapsed=8.0) == pytest.approx(0.5 * shares[1] * 9)  # late: at least half its share
    # planned 120, ended by the clock at 13: do not train it again
    assert finished({"step": 13, "total_steps": 13}, 120)
    assert not finished({"step": 10, "total_steps": 13}, 120)