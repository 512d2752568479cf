"""The prefetching loader (issue 17, item 13): batches made ahead on a thread, pinned on CUDA.

Same batches in the same order as the plain loader, and a state_dict taken at any point resumes
exactly where the *consumer* stands (not where the thread got to)."""

from __future__ import annotations

import json

import pytest
import torch

from _train_support import SyntheticStage, tiny_config, train_config
from minimind.data.loader import Prefetcher, make_loader
from minimind.model import MiniMindLM
from minimind.train.trainer import Trainer


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": f"document {i}: " + " ".join(f"word{j * i % 97}" for j in range(40))} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _loader(corpus, tok):
    return make_loader("pretrain", corpus, tok, seq_len=32, batch_size=3, seed=1)


def test_prefetcher_yields_the_same_batches_and_resumes_exactly(corpus, tok):
    plain = _loader(corpus, tok)
    want = [next(plain)["input_ids"] for _ in range(12)]
    pre = Prefetcher(_loader(corpus, tok), depth=3)
    got = [next(pre)["input_ids"] for _ in range(5)]
    state = pre.state_dict()  # the thread is ahead by up to 3 batches; the state must not be
    got += [next(pre)["input_ids"] for _ in range(7)]
    pre.close()
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and len(got) == 12
    resumed = Prefetcher(_loader(corpus, tok), depth=3)
    resumed.load_state_dict(state)
    again = [next(resumed)["input_ids"] for _ in range(7)]
    resumed.close()
    assert all(torch.equal(a, b) for a, b in zip(again, want[5:]))


def test_prefetcher_reraises_the_source_error():
    class Broken:
        def __init__(self):
            self.n = 0

        def __iter__(self):
            return self

        def __next__(self):
            self.n += 1
            if self.n == 3:
                raise ValueError("bad record 3")
            return {"x": torch.tensor([self.n])}

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, s):
            self.n = s["n"]

    pre = Prefetcher(Broken())
    assert [int(next(pre)["x"]) for _ in range(2)] == [1, 2]
    with pytest.raises(ValueError, match="bad record 3"):
        next(pre)


def _train(out, prefetch, **kw):
    cfg = train_config(out, eval_batches=0, **kw)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(SyntheticStage(cfg), model=MiniMindLM(tiny_config()), tokenizer=None, prefetch=prefetch)
    return trainer.fit()


def test_trainer_with_prefetch_repeats_the_plain_run_and_resumes_exactly(tmp_path):
    full = _train(tmp_path / "plain", False, max_steps=6, save_every=3)
    pre = _train(tmp_path / "pre", True, max_steps=6, save_every=3)
    assert pre.losses == full.losses
    (tmp_path / "pre" / "checkpoints" / "latest").write_text("step-0000003\n")  # as if killed after step 3
    resumed = _train(tmp_path / "pre", True, max_steps=6, save_every=3, resume=True)
    assert resumed.losses == full.losses[3:]
