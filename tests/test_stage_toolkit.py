"""The stage toolkit (train/stages/base.py): one forward with the MoE balance loss for every stage,
one seed formula, config defaults without redeclared fields, one ignore label, one set of think
tags and one reasoning splitter."""

import copy
import dataclasses
import io
import json
import tokenize
from pathlib import Path

import pytest
import torch

import minimind
from minimind.chat import split_reasoning
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.model import MiniMindLM
from minimind.train import rewards
from minimind.train.config import TrainConfig
from minimind.train.losses import dpo_loss, grpo_loss
from minimind.train.stages import get_stage, stage_registry
from minimind.train.stages.base import TrainContext, step_seed, with_defaults
from minimind.train.stages.sft import SFTConfig

SRC = Path(minimind.__file__).parent
COEF = 0.5  # a large balance weight, so a missing aux term cannot hide in the tolerance


def _moe_model_and_ctx(stage, vocab: int):
    moe = ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, max_seq_len=64,
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, aux_loss_coef=COEF)
    torch.manual_seed(0)
    model = MiniMindLM(moe).train()
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = TrainContext(config=stage.config, device=torch.device("cpu"), model=model,
                       extra={"ref": frozen, "teacher": frozen})
    return model, ctx


def _ids_and_labels(vocab: int, prompt: int = 5):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (4, 12), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, labels


def test_grpo_loss_includes_the_moe_balance_loss():
    """GRPO's loss is the clipped policy term + COEF * the policy forward's balance loss."""
    stage = get_stage("grpo")(get_stage("grpo").config_class(out="o", data=["d"], max_steps=1, beta_kl=0.0))
    model, ctx = _moe_model_and_ctx(stage, 64)
    ids, labels = _ids_and_labels(64)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    batch = {"input_ids": ids, "labels": labels, "advantages": adv, "metrics": {"reward": 0.5}}
    loss, metrics = stage.loss(model, batch, ctx)

    keep = 12 - 5 + 1  # the LM head runs from the last prompt token on
    out = model(ids, labels=labels[:, -keep:], logits_to_keep=keep)
    policy, _ = grpo_loss(out.token_logps, out.token_logps.detach(), None, adv, labels[:, -keep + 1:] != -100,
                          (0.2, 0.2), 0.0)
    assert out.aux_loss.item() > 0.1  # the term under test is far above the tolerance
    assert loss.item() == pytest.approx((policy + COEF * out.aux_loss).item(), rel=1e-6, abs=1e-7)
    assert metrics["aux_loss"].item() == pytest.approx(out.aux_loss.item(), rel=1e-6)


def test_dpo_loss_includes_the_moe_balance_loss():
    stage = get_stage("dpo")(get_stage("dpo").config_class(out="o", data=["d"], max_steps=1))
    model, ctx = _moe_model_and_ctx(stage, 64)
    ids, labels = _ids_and_labels(64)
    batch = {"chosen_input_ids": ids[:2], "chosen_labels": labels[:2], "rejected_input_ids": ids[2:],
             "rejected_labels": labels[2:]}
    loss, _ = stage.loss(model, batch, ctx)

    out = model(ids, labels=labels)  # [chosen; rejected] in one forward, as the stage does
    ref = ctx.extra["ref"](ids, labels=labels).token_logps.sum(-1)
    pol = out.token_logps.sum(-1)
    want, _ = dpo_loss(pol[:2], pol[2:], ref[:2], ref[2:], 0.1, 0.0, "sigmoid")
    assert loss.item() == pytest.approx((want + COEF * out.aux_loss).item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", ["pretrain", "sft", "reason", "dpo", "distill", "grpo", "ppo", "agent-rl"])
def test_every_stage_loss_adds_exactly_coef_times_the_balance_loss(name, tok):
    """Same weights, same batch: the loss with the balance weight COEF minus the loss with 0 is
    COEF * the logged aux_loss, for every stage whose loss trains a MoE policy."""
    cls = get_stage(name)
    kw = {"out": "o", "data": ["d"], "max_steps": 1, **({"teacher": "t"} if name == "distill" else {}),
          **({"tag_weight": 2.0} if name == "reason" else {})}
    stage = cls(cls.config_class(**kw))
    model, ctx = _moe_model_and_ctx(stage, tok.vocab_size)
    ctx.tokenizer = tok
    ids, labels = _ids_and_labels(tok.vocab_size)
    if name == "dpo":
        batch = {"chosen_input_ids": ids[:2], "chosen_labels": labels[:2], "rejected_input_ids": ids[2:],
                 "rejected_labels": labels[2:]}
    else:
        batch = {"input_ids": ids, "labels": labels, "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5]),
                 "metrics": {}}
    if name == "ppo":  # per-token rollout tensors [B, T - 1] and the value head on the policy
        stage.prepare_model(model, ctx)
        g = torch.Generator().manual_seed(2)
        batch.update({k: torch.randn(4, 11, generator=g) for k in ("advantages", "old_logps", "old_values", "returns")})
    with_aux, metrics = stage.loss(model, batch, ctx)
    model.config.aux_loss_coef = 0.0
    without, _ = stage.loss(model, batch, ctx)
    assert (with_aux - without).item() == pytest.approx(COEF * metrics["aux_loss"].item(), rel=1e-5, abs=1e-7)
    assert metrics["aux_loss"].item() > 0.1


@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1])
def test_step_seed_equals_the_formulas_it_replaced(seed):
    """Bit-identical to the literals it replaced (train/evaluation.py, reason.py, distill.py: one
    counter; grpo.py: + the sample; agent_rl.py: + the turn), so sampling did not change."""
    for n in (0, 1, 999, 123_456):
        assert step_seed(seed, n) == seed * 1_000_003 + n
        for i in (0, 5, 4095):
            assert step_seed(seed, n, i) == (seed * 1_000_003 + n) * 4096 + i
            for turn in (0, 3, 63):
                assert step_seed(seed, n, i, turn) == ((seed * 1_000_003 + n) * 4096 + i) * 64 + turn
    with pytest.raises(ValueError):
        step_seed(seed)
    with pytest.raises(ValueError):
        step_seed(seed, 1, 2, 3, 4)


def _help(stage: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize(("stage", "lr"), [("pretrain", "0.0005"), ("sft", "5e-05"), ("dpo", "1e-06"),
                                           ("lora", "0.0001"), ("distill", "0.0001"), ("grpo", "5e-06")])
def test_help_shows_each_stage_s_own_default_with_the_inherited_help(stage, lr, capsys):
    text = _help(stage, capsys)
    assert f"--lr X peak learning rate (default: {lr})" in text


def test_with_defaults_keeps_the_field_its_place_and_an_explicit_value():
    names = [f.name for f in dataclasses.fields(SFTConfig)]
    base = [f.name for f in dataclasses.fields(TrainConfig)]
    assert names[: len(base)] == base  # inherited flags keep their order; new ones follow
    assert SFTConfig().lr == 5e-5 and TrainConfig().lr == 5e-4
    assert SFTConfig(lr=5e-4).lr == 5e-4  # an explicit value equal to the parent's default is kept
    lr = {f.name: f for f in dataclasses.fields(SFTConfig)}["lr"]
    assert lr.metadata["help"] == {f.name: f for f in dataclasses.fields(TrainConfig)}["lr"].metadata["help"]
    with pytest.raises(TypeError, match="not an inherited field"):
        @dataclasses.dataclass
        @with_defaults(no_such_field=1)
        class Bad(TrainConfig):
            pass


@pytest.mark.parametrize("name", list(stage_registry()))
def test_every_stage_config_round_trips_through_json(name):
    cls = get_stage(name).config_class
    kw = {"out": "o", "data": ["d"], "max_steps": 3, "lr": 0.25, **({"teacher": "t"} if name == "distill" else {})}
    cfg = cls(**kw)
    again = cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.lr == 0.25


@pytest.mark.parametrize(("text", "expected"), [
    ("just an answer\n", (None, "just an answer")),  # no tag: all answer
    ("<think>r</think>a </think> b", ("r", "a </think> b")),  # two closing tags: the first ends the reasoning
    ("<think>\nstill thinking when cut off", (None, "<think>\nstill thinking when cut off")),  # open tag only
    ("r1\n</think>\n\nanswer", ("r1", "answer")),  # the prompt held the opening tag
])
def test_split_reasoning_edge_cases(text, expected):
    assert split_reasoning(text) == expected


def test_rewards_use_chat_s_splitter_and_the_tokenizer_s_tags():
    assert rewards.split_reasoning is split_reasoning
    assert not hasattr(rewards, "split_think") and not hasattr(rewards, "THINK_OPEN")
    assert rewards.format_reward("<think>r</think>a </think> b") == 0.0  # a second tag is malformed
    assert rewards.format_reward("<think>r</think> a") == 1.0


# The files that follow the one-owner rule today (the ignore label is model.lm_loss.IGNORE_INDEX,
# the seed formula is stages.base.step_seed, the tags are the tokenizer's constants).
ONE_OWNER_FILES = [*(f"train/stages/{p.name}" for p in sorted((SRC / "train" / "stages").glob("*.py"))),
                   "train/rewards.py", "train/losses.py", "train/step.py", "train/evaluation.py", "chat.py",
                   "data/formats.py"]


@pytest.mark.parametrize("path", ONE_OWNER_FILES)
def test_no_second_spelling_of_a_shared_convention(path):
    """No -100 literal, no seed multiplier outside step_seed, no think tag written as a string."""
    toks = list(tokenize.generate_tokens(io.StringIO((SRC / path).read_text()).readline))
    found = []
    for prev, t in zip(toks, toks[1:]):
        if t.type == tokenize.NUMBER and t.string == "100" and prev.string == "-":
            found.append(f"line {t.start[0]}: -100")
        if t.type == tokenize.NUMBER and t.string.replace("_", "") == "1000003" and path != "train/stages/base.py":
            found.append(f"line {t.start[0]}: 1_000_003")
        if t.type == tokenize.STRING and t.string.strip("\"'") in ("<think>", "</think>", "<think>\\n"):
            found.append(f"line {t.start[0]}: {t.string}")
    assert not found, found
