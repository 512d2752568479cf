"""Recipes: `run_stage` (reuse / resume / refuse), the WSD schedule, streamed mixtures, and
multi-phase pretraining (`minimind pretrain --recipe`): phases switch data and sequence length,
continue weights and optimizer state, name themselves in every metrics line, and resume after a
kill between or inside phases to bit-identical weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimind.cli import main
from minimind.data.mixture import open_mixture, realised_shares, source_kind
from minimind.errors import UserError
from minimind.recipes import read_recipe
from minimind.tokenizer import load_tokenizer
from minimind.train.config import TrainConfig
from minimind.train.optim import lr_at
from minimind.train.phases import resolve_phases
from minimind.train.recipes import run_stage

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang songs of spring".split()
QUIET = dict(seq_len=32, batch_size=2, eval_batches=0, num_samples=0, progress=False, preset="tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Three small sources: plain text (a), numbers text (b), conversations (c)."""
    d = tmp_path_factory.mktemp("mix")
    rng = random.Random(0)
    rows = {"a": [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))} for _ in range(80)],
            "b": [{"text": f"number {i} and number {i + 1} make {2 * i + 1}. " * 3} for i in range(60)],
            "c": [{"conversations": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                     {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(40)]}
    out = {}
    for name, records in rows.items():
        out[name] = d / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


# -- run_stage ---------------------------------------------------------------------------------------


def test_run_stage_reuses_a_finished_run_resumes_an_unfinished_one_and_refuses_another(tmp_path, files, capsys):
    out = tmp_path / "run"
    opts = dict(out=str(out), data=[str(files["a"])], max_steps=4, save_every=2, **QUIET)
    first = run_stage("pretrain", **opts)
    assert (first.step, first.reused, len(first.losses)) == (4, False, 4)
    metrics = (out / "metrics.jsonl").read_bytes()

    # Finished, same options (how it runs may differ: device, logging, evaluation): reused, nothing trains.
    again = run_stage("pretrain", **{**opts, "eval_every": 3, "device": "cpu"})
    assert again.reused and again.step == 4 and again.checkpoint == first.checkpoint and again.losses == []
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert "already done" in capsys.readouterr().out

    # Unfinished (killed after step 2): resumed, the remaining two steps only, the same losses.
    (out / "checkpoints" / "latest").write_text("step-0000002\n")
    resumed = run_stage("pretrain", **opts)
    assert not resumed.reused and resumed.step == 4 and resumed.losses == first.losses[2:]
    assert "(resuming)" in capsys.readouterr().out
    metrics = (out / "metrics.jsonl").read_bytes()

    # Other options, or another stage: one line naming what differs, nothing touched.
    with pytest.raises(UserError, match=r"other options \(lr: 0\.0005 -> 0\.001\)"):
        run_stage("pretrain", **{**opts, "lr": 1e-3})
    with pytest.raises(UserError, match="holds a 'pretrain' run, not 'sft'"):
        run_stage("sft", **{**opts, "init": str(out)})
    assert (out / "metrics.jsonl").read_bytes() == metrics


def test_cli_keeps_explicit_resume(tmp_path, files, capsys):
    """The command line goes through run_stage too, but keeps --resume explicit."""
    args = ["pretrain", "--data", str(files["a"]), "--out", str(tmp_path / "r"), "--max-steps", "1", "--seq-len", "32",
            "--batch-size", "2", "--eval-batches", "0", "--num-samples", "0", "--no-progress"]
    assert main(args) == 0
    assert main(args) == 2 and "add --resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0


# -- the WSD schedule ------------------------------------------------------------------------------


def test_wsd_schedule_equals_hand_computed_values():
    cfg = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=2, schedule="wsd", decay_frac=0.3, max_steps=10)
    # warmup 1/2, 2/2; stable at the peak; the last round(0.3 * 10) = 3 steps step down by 0.9 / 3 to 0.1
    assert [lr_at(s, cfg, 10) for s in range(10)] == pytest.approx([0.5, 1, 1, 1, 1, 1, 1, 0.7, 0.4, 0.1])
    flat = TrainConfig(lr=1.0, schedule="wsd", decay_frac=0.0, max_steps=5)
    assert [lr_at(s, flat, 5) for s in range(5)] == [1.0] * 5  # no decay: a phase a later one anneals
    whole = TrainConfig(lr=2.0, min_lr_ratio=0.5, schedule="wsd", decay_frac=1.0, max_steps=4)
    assert [lr_at(s, whole, 4) for s in range(4)] == pytest.approx([1.75, 1.5, 1.25, 1.0])
    with pytest.raises(UserError, match="--schedule must be one of cosine, wsd"):
        TrainConfig(schedule="linear", max_steps=1).validate()
    with pytest.raises(UserError, match="--decay-frac must be in"):
        TrainConfig(schedule="wsd", decay_frac=1.5, max_steps=1).validate()


# -- mixtures --------------------------------------------------------------------------------------


def _mixture(files, seed=0, weights=(0.6, 0.3, 0.1), **kw):
    sources = [str(files[k]) for k in "abc"]
    return open_mixture(sources, list(weights), load_tokenizer(None), 16, 4, seed=seed, **kw)


def test_mixture_tracks_its_weights_and_is_deterministic_per_seed(files):
    mix = _mixture(files)
    counts_seen = []
    for _ in range(50):  # 200 rows
        batch = next(mix)
        assert batch["input_ids"].shape == (4, 16) and torch.equal(batch["input_ids"], batch["labels"])
        counts_seen.append(list(mix.counts))
    for counts in counts_seen:  # at every prefix, each source within one row of its share
        rows = sum(counts)
        assert all(abs(c - rows * w) < 1 for c, w in zip(counts, (0.6, 0.3, 0.1)))
    shares = realised_shares(mix.state_dict())
    assert list(shares.values()) == pytest.approx([0.6, 0.3, 0.1], abs=0.005)

    def first(m, n=6):
        return [next(m)["input_ids"] for _ in range(n)]

    same = all(torch.equal(x, y) for x, y in zip(first(_mixture(files, seed=1)), first(_mixture(files, seed=1))))
    other = all(torch.equal(x, y) for x, y in zip(first(_mixture(files, seed=1)), first(_mixture(files, seed=2))))
    assert same and not other


def test_mixture_resumes_exactly_and_renders_conversation_sources(files):
    mix = _mixture(files)
    for _ in range(7):
        next(mix)
    state = json.loads(json.dumps(mix.state_dict()))  # what a checkpoint stores
    expected = [next(mix)["input_ids"] for _ in range(5)]
    fresh = _mixture(files)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, next(fresh)["input_ids"]) for a in expected)
    with pytest.raises(UserError, match="not one of this mixture"):
        fresh.load_state_dict({**state, "names": ["x.jsonl"]})

    assert (source_kind(files["a"]), source_kind(files["c"])) == ("pretrain", "sft")
    only_c = open_mixture([str(files["c"])], [1.0], load_tokenizer(None), 64, 2)
    text = load_tokenizer(None).decode(next(only_c)["input_ids"][0].tolist())
    assert "<|im_start|>assistant" in text and " plus " in text  # conversations rendered with the chat template


# -- multi-phase recipes ---------------------------------------------------------------------------


def _recipe(tmp_path: Path, **top) -> Path:
    """Three 2-step phases: general (a+b mixture, seq 32) -> long (a only, seq 64) -> anneal (b+c, seq 48)."""
    recipe = {"preset": "tiny", "seed": 0, "batch_size": 2, "eval_batches": 0, "num_samples": 0, "progress": False,
              "lr": 1e-3, "schedule": "wsd", **top,
              "phases": [{"name": "general", "data": {"a.jsonl": 0.7, "b.jsonl": 0.3}, "seq_len": 32, "max_steps": 2,
                          "warmup_steps": 1, "decay_frac": 0},
                         {"name": "long", "data": ["a.jsonl"], "seq_len": 64, "max_steps": 2, "decay_frac": 0},
                         {"name": "anneal", "data": {"b.jsonl": 0.5, "c.jsonl": 0.5}, "seq_len": 48, "max_steps": 2,
                          "decay_frac": 1.0}]}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))


def test_three_phases_switch_data_and_seq_len_and_continue_weights_and_optimizer(tmp_path, files, capsys):
    recipe = _recipe(tmp_path)
    run = tmp_path / "run"
    assert main(["pretrain", "--recipe", str(recipe), "--data-root", str(files["a"].parent), "--out", str(run),
                 "--save-every", "1", "--keep-last", "10"]) == 0
    records = _records(run)
    assert all("phase" in r for r in records)  # every line names its phase
    train = [r for r in records if r["split"] == "train"]
    assert [(r["step"], r["phase"]) for r in train] == [(1, "general"), (2, "general"), (3, "long"), (4, "long"),
                                                         (5, "anneal"), (6, "anneal")]
    # Tokens per step = batch x the phase's seq_len: 2 x 32, then 2 x 64, then 2 x 48.
    tokens = [0] + [r["tokens"] for r in train]
    assert [b - a for a, b in zip(tokens, tokens[1:])] == [64, 64, 128, 128, 96, 96]
    names = lambda r: sorted(Path(s).name for s in r.get("mix", {}))  # noqa: E731
    assert [names(r) for r in train] == [["a.jsonl", "b.jsonl"]] * 2 + [[]] * 2 + [["b.jsonl", "c.jsonl"]] * 2
    # Each phase's own schedule: warmup then flat; flat; the anneal decays over its 2 steps to 0.1 x lr.
    assert [r["lr"] for r in train] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-3, 5.5e-4, 1e-4])
    # The optimizer continues across phases: Adam's step count reaches 6, not 2.
    state = torch.load(run / "checkpoints" / "step-0000006" / "trainer_state.pt", weights_only=True)
    assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {6.0}
    meta = json.loads((run / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    assert (meta["phase"], meta["phase_start"], meta["train_config"]["seq_len"]) == ("long", 2, 64)
    printed = capsys.readouterr().out
    assert "| general | 32 | 2 | a.jsonl | 0.7000 |" in printed and "| anneal | 48 | 2 | c.jsonl | 0.5000 | 0.5000 |" in printed


def test_a_phase_starts_from_the_previous_phases_weights(tmp_path, files):
    recipe = json.loads(_recipe(tmp_path).read_text())
    recipe["phases"] = recipe["phases"][:2]
    recipe["phases"][1]["lr"] = 1e-30  # a step this small leaves every weight as it was
    path = tmp_path / "two.json"
    path.write_text(json.dumps(recipe))
    run = tmp_path / "two"
    assert main(["pretrain", "--recipe", str(path), "--data-root", str(files["a"].parent), "--out", str(run),
                 "--save-every", "1", "--keep-last", "10"]) == 0
    before, after = _weights(run, 2), _weights(run, 4)
    assert all(torch.allclose(before[k], after[k], rtol=0, atol=1e-20) for k in before)


def test_resume_after_a_kill_between_and_inside_phases_is_bit_identical(tmp_path, files):
    recipe = _recipe(tmp_path)
    args = ["pretrain", "--recipe", str(recipe), "--data-root", str(files["a"].parent), "--save-every", "1",
            "--keep-last", "10"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--out", str(full)]) == 0
    assert main([*args, "--out", str(part)]) == 0
    reference = _weights(full, 6)
    losses = [r["loss"] for r in _records(full) if r["split"] == "train"]
    for killed_after in (2, 3, 5):  # end of phase 1 (between phases), inside phase 2, inside phase 3
        (part / "checkpoints" / "latest").write_text(f"step-{killed_after:07d}\n")  # what a kill -9 leaves
        assert main([*args, "--out", str(part), "--resume"]) == 0
        again = _weights(part, 6)
        assert all(torch.equal(reference[k], again[k]) for k in reference), killed_after
        assert [r["loss"] for r in _records(part) if r["split"] == "train"] == losses  # each step once
    assert main([*args, "--out", str(part)]) == 2  # an existing run still needs --resume


def test_recipe_errors_are_one_line(tmp_path, files, capsys):
    root = ["--data-root", str(files["a"].parent)]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"phases": [{"name": "x", "data": {"a.jsonl": 1}, "max_steps": 1, "sequence": 3}]}))
    assert main(["pretrain", "--recipe", str(bad), *root, "--out", str(tmp_path / "o")]) == 2
    assert "phase 'x': unknown training option(s): sequence" in capsys.readouterr().err
    bad.write_text(json.dumps({"phases": [{"name": "x", "data": {"a.jsonl": 0}, "max_steps": 1}]}))
    assert main(["pretrain", "--recipe", str(bad), *root, "--out", str(tmp_path / "o")]) == 2
    assert "mixture weight of" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "pretrain_3phase", "--out", str(tmp_path / "o")]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "shipped recipes: pretrain_3phase, quickstart" in capsys.readouterr().err
    # A run of this recipe, resumed with its checkpoint's phase changed, is refused.
    run = tmp_path / "r"
    recipe = _recipe(tmp_path)
    assert main(["pretrain", "--recipe", str(recipe), *root, "--out", str(run)]) == 0
    capsys.readouterr()
    changed = json.loads(recipe.read_text())
    changed["phases"][2]["lr"] = 5e-3
    recipe.write_text(json.dumps(changed))
    assert main(["pretrain", "--recipe", str(recipe), *root, "--out", str(run), "--resume"]) == 2
    assert "phase 'anneal' was trained with other options (lr: 0.001 -> 0.005)" in capsys.readouterr().err


def test_shipped_three_phase_recipe_resolves_for_the_demo_data(tmp_path):
    recipe, folder = read_recipe("pretrain_3phase")
    assert folder is None  # shipped: its data paths start at --data-root
    phases = resolve_phases(recipe, "pretrain_3phase", tmp_path, {"out": str(tmp_path / "run")})
    assert [name for name, _ in phases] == ["general", "long_context", "anneal"]
    assert [cfg.seq_len for _, cfg in phases] == [256, 1024, 512]
    assert [(cfg.schedule, cfg.decay_frac) for _, cfg in phases] == [("wsd", 0.0), ("wsd", 0.0), ("wsd", 1.0)]
    assert [Path(p).name for p in phases[2][1].data] == ["pretrain.jsonl", "sft.jsonl", "rl.jsonl"]
    assert all(Path(p).parent == tmp_path for _, cfg in phases for p in cfg.data)


@pytest.mark.slow
def test_kill_9_inside_a_phase_then_resume_is_exact(tmp_path, files):
    """A real kill -9 of `minimind pretrain --recipe`, mid-phase, then --resume: the same weights and losses."""
    recipe = json.loads(_recipe(tmp_path).read_text())
    for phase in recipe["phases"]:
        phase["max_steps"] = 6
    path = tmp_path / "six.json"
    path.write_text(json.dumps(recipe))
    args = ["pretrain", "--recipe", str(path), "--data-root", str(files["a"].parent), "--save-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run([sys.executable, "-m", "minimind", *args, "--out", str(full)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "minimind", *args, "--out", str(part)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, killed = part / "metrics.jsonl", False
    while proc.poll() is None:
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        if len(lines) >= 9:  # inside the second phase, past its first checkpoint
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    assert (part / "checkpoints" / "latest").read_text().strip() != "step-0000018"
    subprocess.run([sys.executable, "-m", "minimind", *args, "--out", str(part), "--resume"], check=True, env=env,
                   capture_output=True)
    losses = lambda run: [r["loss"] for r in _records(run) if r["split"] == "train"]  # noqa: E731
    assert losses(part) == losses(full)
    a, b = _weights(full, 18), _weights(part, 18)
    assert all(torch.equal(a[k], b[k]) for k in a)
