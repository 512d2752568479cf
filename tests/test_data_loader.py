"""make_loader: packing without padding, SFT/DPO labels, RL prompts, determinism, resume, ranks, split."""

import json

import numpy as np
import pytest
import torch

import minimind.data.store as store_mod
from minimind.chat import render_conversation, render_prompt
from minimind.config import IGNORE_INDEX
from minimind.data.loader import make_loader
from minimind.data.prepare import prepare
from minimind.errors import UserError
from support import write_jsonl


def texts(n):
    words = ["alpha", "beta", "星期", "gamma", "数据", "delta", "模型", "epsilon"]
    return [f"doc {i}: " + " ".join(words[(i + j) % len(words)] for j in range(3 + i % 11)) for i in range(n)]


def conv(i, answer_len=1):
    return [{"role": "user", "content": f"question {i}?"},
            {"role": "assistant", "content": " ".join([f"answer{i}"] * answer_len)}]


@pytest.fixture(scope="module")
def pretrain_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pt") / "pt.jsonl", [{"text": t} for t in texts(60)])


def take(loader, n):
    return [next(loader) for _ in range(n)]


def same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]


def test_pretrain_windows_concatenate_to_the_stream(pretrain_file, tok):
    T = 16
    loader = make_loader("pretrain", pretrain_file, tok, T, 4, val_fraction=0)
    plan = loader._plan_for(0)
    # the epoch's stream, built by hand: shuffled documents, each followed by EOS
    stream = []
    for d in plan["order"]:
        stream += tok.encode(texts(60)[d]) + [tok.eos_id]
    n_windows = len(stream) // T
    windows = [loader.window(plan, k) for k in range(n_windows)]
    assert np.concatenate(windows).tolist() == stream[:n_windows * T]   # no padding, no gaps
    assert sorted(plan["units"].tolist()) == list(range(n_windows))     # every window used once
    batch = next(loader)
    assert batch["input_ids"].shape == (4, T) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"])
    assert torch.equal(batch["input_ids"][0], torch.from_numpy(windows[plan["units"][0]]))


def test_sft_labels_only_on_assistant_tokens_and_packing(tmp_path, tok):
    convs = [conv(i) for i in range(12)] + [conv(99, answer_len=200)]   # the last one is too long
    src = write_jsonl(tmp_path / "s.jsonl", [{"conversations": c} for c in convs])
    T = 64
    loader = make_loader("sft", src, tok, T, 2, val_fraction=0)
    plan = loader._plan_for(0)
    rendered = [render_conversation(tok, c) for c in convs]
    seen = []
    for k in range(len(plan["starts"]) - 1):
        ids, labels = loader.row(plan, k)
        docs = plan["order"][plan["starts"][k]:plan["starts"][k + 1]].tolist()
        seen += docs
        exp_ids = sum((rendered[d][0][:T] for d in docs), [])
        exp_mask = sum((rendered[d][1][:T] for d in docs), [])
        assert ids.tolist() == exp_ids and len(ids) <= T
        assert labels.tolist() == [i if m else IGNORE_INDEX for i, m in zip(exp_ids, exp_mask)]
        if 12 in docs:   # the over-long conversation: truncated to its first T tokens, alone in its row
            assert docs == [12] and len(ids) == T
    assert sorted(seen) == list(range(len(convs)))
    # the supervised tokens of a short conversation decode to exactly its answer + <|im_end|>
    ids, labels = loader.row(plan, 0)
    first = plan["order"][0]
    sup = [i for i, lab in zip(ids.tolist(), labels.tolist()) if lab != IGNORE_INDEX][:len([m for m in rendered[first][1] if m])]
    assert tok.decode(sup) == f"<think>\n\n</think>\n\nanswer{first}<|im_end|>"
    batch = next(loader)
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].shape[1] <= T
    pad = batch["labels"] == IGNORE_INDEX
    assert torch.all((batch["labels"] == batch["input_ids"]) | pad)


def test_dpo_pairs_are_padded_alike(tmp_path, tok):
    pairs = [{"chosen": conv(i), "rejected": conv(i)[:1] + [{"role": "assistant", "content": "no " * (i + 1)}]}
             for i in range(6)]
    src = write_jsonl(tmp_path / "d.jsonl", pairs)
    loader = make_loader("dpo", src, tok, 512, 3, val_fraction=0)
    batch = next(loader)
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert set(shapes) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}
    assert len(set(shapes.values())) == 1 and shapes["chosen_labels"][0] == 3
    order = loader._plan_for(0)["order"]
    for row, pair in enumerate(order[loader._plan_for(0)["units"][:3]]):
        for side in ("chosen", "rejected"):
            ids, mask = render_conversation(tok, pairs[pair][side])
            n = len(ids)
            assert batch[f"{side}_input_ids"][row, :n].tolist() == ids
            assert batch[f"{side}_labels"][row, :n].tolist() == [i if m else IGNORE_INDEX for i, m in zip(ids, mask)]
            assert torch.all(batch[f"{side}_input_ids"][row, n:] == tok.pad_id)
            assert torch.all(batch[f"{side}_labels"][row, n:] == IGNORE_INDEX)


def test_rl_prompts(tmp_path, tok):
    recs = [{"conversations": conv(i)} for i in range(4)] + [{"prompt": "3*3=?", "answer": "9", "gt": ["9"]}]
    src = write_jsonl(tmp_path / "r.jsonl", recs)
    loader = make_loader("rl", src, tok, 256, 5, val_fraction=0)
    batch = next(loader)
    by_answer = dict(zip(batch["answers"], zip(batch["prompt_ids"], batch["messages"], batch["gt"])))
    assert sorted(by_answer) == sorted(["9"] + [f"answer{i}" for i in range(4)])
    ids, msgs, gt = by_answer["answer2"]
    assert msgs == conv(2)[:1] and ids == render_prompt(tok, msgs) and gt is None
    assert by_answer["9"][2] == ["9"]


def test_deterministic_for_a_seed_and_reshuffled_per_epoch(pretrain_file, tok):
    a = take(make_loader("pretrain", pretrain_file, tok, 16, 4, seed=3), 5)
    b = take(make_loader("pretrain", pretrain_file, tok, 16, 4, seed=3), 5)
    c = take(make_loader("pretrain", pretrain_file, tok, 16, 4, seed=4), 5)
    same(a, b)
    assert not torch.equal(a[0]["input_ids"], c[0]["input_ids"])
    loader = make_loader("pretrain", pretrain_file, tok, 16, 4, seed=3)
    assert not np.array_equal(loader._plan_for(0)["order"], loader._plan_for(1)["order"])


@pytest.mark.parametrize("kind", ["pretrain", "sft", "dpo"])
def test_resume_mid_epoch_and_across_epochs(tmp_path, tok, kind, pretrain_file):
    if kind == "pretrain":
        src = pretrain_file
    elif kind == "sft":
        src = write_jsonl(tmp_path / "s.jsonl", [{"conversations": conv(i)} for i in range(20)])
    else:
        src = write_jsonl(tmp_path / "d.jsonl", [{"chosen": conv(i), "rejected": conv(i + 1)} for i in range(20)])
    loader = make_loader(kind, src, tok, 48, 3, seed=7)
    per_epoch = loader.samples_per_epoch
    steps = per_epoch // 3 + 1   # a few steps in, and the next batches cross into epoch 1
    take(loader, steps)
    state = json.loads(json.dumps(loader.state_dict()))   # JSON-able
    expected = take(loader, per_epoch // 3 + 2)
    assert loader.epoch >= 1
    fresh = make_loader(kind, src, tok, 48, 3, seed=7)
    fresh.load_state_dict(state)
    same(take(fresh, len(expected)), expected)


def test_ranks_are_disjoint_and_cover_the_epoch(tmp_path, tok):
    n = 31
    src = write_jsonl(tmp_path / "d.jsonl", [{"chosen": conv(i), "rejected": conv(i + 100)} for i in range(n)])
    world = 3
    seen = []
    for rank in range(world):
        loader = make_loader("dpo", src, tok, 64, 1, seed=1, rank=rank, world_size=world, val_fraction=0)
        assert loader.samples_per_epoch == n // world
        for batch in take(loader, n // world):
            seen.append(tok.decode(batch["chosen_input_ids"][0].tolist()))
    assert len(seen) == len(set(seen)) == world * (n // world)   # disjoint, all but n % world covered
    # pretrain windows: the ranks' window indices split the epoch's windows
    pt = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in texts(40)])
    units = [set(make_loader("pretrain", pt, tok, 8, 2, rank=r, world_size=world, val_fraction=0)
                 ._plan_for(0)["units"].tolist()) for r in range(world)]
    assert not (units[0] & units[1]) and not (units[0] & units[2]) and not (units[1] & units[2])
    assert len(set().union(*units)) == world * len(units[0])


def test_val_split_is_held_out_and_seed_independent(tmp_path, tok):
    src = write_jsonl(tmp_path / "r.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(50)])
    val = make_loader("rl", src, tok, 64, 1, split="val", val_fraction=0.1, seed=0)
    train = make_loader("rl", src, tok, 64, 1, split="train", val_fraction=0.1, seed=0)
    assert len(val.samples) == 5 and len(train.samples) == 45
    assert not set(val.samples.tolist()) & set(train.samples.tolist())
    other_seed = make_loader("rl", src, tok, 64, 1, split="val", val_fraction=0.1, seed=123)
    assert other_seed.samples.tolist() == val.samples.tolist()
    answers = {next(val)["answers"][0] for _ in range(5)}
    assert answers == {str(i) for i in val.samples.tolist()}
    with pytest.raises(UserError, match="unknown split 'test'"):
        make_loader("rl", src, tok, 64, 1, split="test")


def test_prepared_dir_and_raw_files_give_the_same_batches(tmp_path, tok, pretrain_file, monkeypatch):
    prepared = prepare("pretrain", [pretrain_file], tmp_path / "prep", tok, workers=1)
    same(take(make_loader("pretrain", prepared.path, tok, 16, 2), 3),
         take(make_loader("pretrain", pretrain_file, tok, 16, 2), 3))
    # raw input above the in-memory limit is prepared once into the cache, then reused
    monkeypatch.setattr(store_mod, "IN_MEMORY_LIMIT", 0)
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "cache"))
    same(take(make_loader("pretrain", [pretrain_file], tok, 16, 2), 3),
         take(make_loader("pretrain", prepared.path, tok, 16, 2), 3))
    cached = list((tmp_path / "cache" / "prepared").iterdir())
    assert len(cached) == 1 and (cached[0] / "meta.json").is_file()


def test_loader_errors(tmp_path, tok, capsys):
    src = write_jsonl(tmp_path / "p.jsonl", [{"text": "tiny"}, {"text": "docs"}])
    with pytest.raises(UserError, match="too little pretrain data"):
        next(make_loader("pretrain", src, tok, 512, 1, val_fraction=0))
    with pytest.raises(UserError, match="rank 2 is outside world_size 2"):
        make_loader("pretrain", src, tok, 4, 1, rank=2, world_size=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a b c d e f"}\n{"text": ""}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: 'text' is empty"):
        make_loader("pretrain", bad, tok, 4, 1)
    make_loader("pretrain", bad, tok, 4, 1, skip_bad=True, val_fraction=0)
    assert "skipped 1 bad record(s)" in capsys.readouterr().err
