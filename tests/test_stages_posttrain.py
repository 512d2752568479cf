"""Post-training stages (dpo, distill, grpo) as plug-ins of the one Trainer, run through the CLI.

Each CLI run is 3 steps of a 2-layer, hidden-32 model on a handful of hand-written records. The
checks are invariants of the first step, where the policy still equals its reference/teacher:
DPO's loss is exactly log 2, distillation's KL is 0, GRPO's KL is 0.
"""

import json
import math

import pytest
import torch

from minimind.checkpoint import save_model
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.model import MiniMindLM
from support import write_jsonl


def _user(c):
    return {"role": "user", "content": c}


def _assistant(c):
    return {"role": "assistant", "content": c}


def _tiny_ckpt(path, tok, vocab=None, seed=0):
    cfg = ModelConfig(vocab_size=vocab or tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=256)
    torch.manual_seed(seed)
    save_model(MiniMindLM(cfg), path, tokenizer_dir=tok.path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("posttrain")
    qa = [(f"What is {i} + 2?", str(i + 2)) for i in range(12)]
    return {
        "init": _tiny_ckpt(d / "init", tok),
        "sft": str(write_jsonl(d / "sft.jsonl", [{"conversations": [_user(q), _assistant(f"The answer is {a}.")]} for q, a in qa])),
        "dpo": str(write_jsonl(d / "dpo.jsonl", [{"chosen": [_user(q), _assistant(f"The answer is {a}.")],
                                               "rejected": [_user(q), _assistant("No idea, sorry.")]} for q, a in qa])),
        "rl": str(write_jsonl(d / "rl.jsonl", [{"conversations": [_user(q), _assistant(f"The answer is {a}.")], "answer": a}
                                            for q, a in qa])),
    }


COMMON = ["--max-steps", "3", "--batch-size", "2", "--seq-len", "64", "--no-progress", "--num-samples", "0",
          "--eval-batches", "1"]


def _train_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("split") == "train"]


def _run(args):
    rc = main(args)
    assert rc == 0
    return rc


def _assert_run_dir(run_dir):
    assert (run_dir / "checkpoints" / "latest").is_file()
    assert [r["step"] for r in _train_records(run_dir)] == [1, 2, 3]


def test_dpo_cli(files, tmp_path):
    out = tmp_path / "dpo"
    _run(["dpo", "--init", files["init"], "--data", files["dpo"], "--out", str(out), "--lr", "1e-3", *COMMON])
    _assert_run_dir(out)
    recs = _train_records(out)
    # Step 1: the policy is its reference, so every implicit reward is 0 and the loss is log 2.
    assert recs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert recs[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    # After two updates the policy prefers the chosen answers on the training pairs.
    assert recs[2]["rewards/margin"] > 0 and recs[2]["loss"] < math.log(2)
    assert (out / "loss.png").is_file() and not (out / "reward.png").exists()  # no per-step RL reward here


def test_distill_cli_student_equal_to_teacher_has_zero_kl(files, tmp_path):
    out = tmp_path / "distill"
    _run(["distill", "--teacher", files["init"], "--init", files["init"], "--data", files["sft"], "--out", str(out),
          "--alpha", "1.0", "--temperature", "2.0", *COMMON])
    _assert_run_dir(out)
    recs = _train_records(out)
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6) and recs[0]["loss"] == pytest.approx(0.0, abs=1e-6)
    assert recs[0]["ce"] > 0  # reported even with alpha = 1


def test_distill_cli_wider_teacher_never_builds_full_logits(files, tmp_path, tok, monkeypatch):
    # A teacher of another width and depth; neither model may be run without labels (that is the
    # path that returns [B, T, V] logits): the loss comes from hidden states, chunk by chunk.
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
                      max_seq_len=256)
    torch.manual_seed(1)
    teacher = tmp_path / "wide_teacher"
    save_model(MiniMindLM(cfg), teacher, tokenizer_dir=tok.path)
    forward, widths = MiniMindLM.forward, []

    def labelled_only(self, input_ids, labels=None, **kw):
        assert labels is not None, "a training forward without labels builds [B, T, V] logits"
        widths.append(self.config.hidden_size)
        return forward(self, input_ids, labels=labels, **kw)

    monkeypatch.setattr(MiniMindLM, "forward", labelled_only)
    out = tmp_path / "distill"
    _run(["distill", "--teacher", str(teacher), "--init", files["init"], "--data", files["sft"], "--out", str(out),
          *COMMON])
    recs = _train_records(out)
    assert {32, 48} <= set(widths)
    assert len(recs) == 3 and all(r["kl"] > 0 and math.isfinite(r["loss"]) for r in recs)


def test_distill_init_preset_starts_fresh_with_teacher_tokenizer(files):
    from minimind.train.stages.distill import DistillConfig

    cfg = DistillConfig(init="tiny", teacher=files["init"], data=[files["sft"]], out="x", max_steps=1)
    assert (cfg.init, cfg.preset, cfg.tokenizer) == (None, "tiny", files["init"])


def test_distill_vocab_mismatch_is_a_clear_error(files, tmp_path, tok, capsys):
    teacher = _tiny_ckpt(tmp_path / "big_vocab", tok, vocab=tok.vocab_size + 64)
    rc = main(["distill", "--teacher", teacher, "--init", files["init"], "--data", files["sft"],
               "--out", str(tmp_path / "d"), *COMMON])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"vocabulary of {tok.vocab_size + 64} tokens" in err and f"has {tok.vocab_size}" in err


def test_grpo_cli(files, tmp_path):
    out = tmp_path / "grpo"
    _run(["grpo", "--init", files["init"], "--data", files["rl"], "--out", str(out), "--group-size", "3",
          "--max-new-tokens", "12", "--rewards", "format:1,correct:1,length:1@20", *COMMON])
    _assert_run_dir(out)
    recs = _train_records(out)
    for r in recs:
        assert {"reward", "reward/format", "reward/correct", "reward/length", "kl", "clip_fraction"} <= set(r)
        assert r["completion_len"] <= 12
    # Step 1 samples from the reference itself: zero KL, ratio 1, nothing clipped.
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert recs[0]["clip_fraction"] == 0.0
    assert (out / "reward.png").stat().st_size > 0  # `minimind plot` draws the reward curve of RL runs


def _grpo_stage_and_ctx(files, tok, **kw):
    from minimind.checkpoint import load_model
    from minimind.train.stages.base import TrainContext
    from minimind.train.stages.grpo import GRPOConfig, GRPOStage

    cfg = GRPOConfig(**{"init": files["init"], "data": [files["rl"]], "out": "unused", "max_steps": 1, "group_size": 2,
                        "max_new_tokens": 6, "batch_size": 2, **kw})
    model = load_model(files["init"]).train()
    ctx = TrainContext(config=cfg, device=torch.device("cpu"), tokenizer=tok, model=model,
                       autocast=lambda: torch.autocast("cpu", enabled=False))
    return GRPOStage(cfg), ctx


def test_grpo_rollout_tensors(files, tok):
    from minimind.chat import render_prompt

    stage, ctx = _grpo_stage_and_ctx(files, tok)
    msgs = [[_user("What is 1 + 2?")], [_user("What is 5 + 2?")]]
    raw = {"prompt_ids": [render_prompt(tok, m) for m in msgs], "answers": ["3", "7"], "messages": msgs}
    b = stage.rollout(raw, ctx, count=0)
    assert ctx.model.training  # generation switched to eval and back
    ids, labels = b["input_ids"], b["labels"]
    assert ids.shape[0] == labels.shape[0] == 4 and b["advantages"].shape == (4,)
    for i in range(4):
        p = raw["prompt_ids"][i // 2]  # G copies of each prompt, next to each other
        assert ids[i, : len(p)].tolist() == p
        assert (labels[i, : len(p)] == -100).all()  # no loss on the prompt
        n = int((labels[i] != -100).sum())
        assert 1 <= n <= 6 and (labels[i, len(p) : len(p) + n] == ids[i, len(p) : len(p) + n]).all()
        assert b["texts"][i].startswith("<think>\n")  # the prompt's open think tag is put back for the rewards
    # Same rollout counter -> same samples (exact resume); the next counter samples afresh.
    again = stage.rollout(raw, ctx, count=0)
    assert torch.equal(again["input_ids"], ids) and again["texts"] == b["texts"]
    # Rewards: advantages are normalised within each group of G = 2.
    assert torch.allclose(b["advantages"].view(2, 2).sum(1), torch.zeros(2), atol=1e-5)


def test_grpo_no_thinking_rolls_out_from_the_thinking_off_prompt(files, tok):
    from minimind.chat import render_prompt

    stage, ctx = _grpo_stage_and_ctx(files, tok, thinking=False)
    msgs = [[_user("What is 1 + 2?")], [_user("What is 5 + 2?")]]
    raw = {"prompt_ids": [render_prompt(tok, m) for m in msgs], "answers": ["3", "7"], "messages": msgs}  # loader: thinking on
    b = stage.rollout(raw, ctx, count=0)
    for i in range(4):
        p = render_prompt(tok, msgs[i // 2], thinking=False)  # "...assistant\n<think>\n\n</think>\n\n"
        assert b["input_ids"][i, : len(p)].tolist() == p
        assert (b["labels"][i, : len(p)] == -100).all() and b["labels"][i, len(p)] != -100
        assert b["texts"][i].startswith("<think>\n\n</think>\n\n")  # rewards see the empty block


def test_grpo_loss_on_kept_logits_equals_the_full_forward(files, tok):
    """The stage runs the LM head only from the shortest prompt's end on; that must not change the loss."""
    from minimind.chat import render_prompt
    from minimind.train.losses import grpo_loss, sequence_logprobs

    stage, ctx = _grpo_stage_and_ctx(files, tok, group_size=3, beta_kl=0.0)
    msgs = [[_user("What is 1 + 2?")], [_user("Name three colours of the rainbow, please.")]]  # unequal prompt lengths
    b = stage.rollout({"prompt_ids": [render_prompt(tok, m) for m in msgs], "answers": ["3", None], "messages": msgs},
                      ctx, count=0)
    b["advantages"] = torch.tensor([1.0, -0.5, 0.25, -1.0, 2.0, 0.5])  # any non-zero weights
    loss, _ = stage.loss(ctx.model, b, ctx)
    full = sequence_logprobs(ctx.model(b["input_ids"]).logits, b["labels"])
    want, _ = grpo_loss(full.token_logps, full.token_logps.detach(), None, b["advantages"], full.mask, 0.2, 0.0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7)
    g1 = torch.autograd.grad(loss, ctx.model.layers[0].mlp.down_proj.weight)[0]
    g2 = torch.autograd.grad(want, ctx.model.layers[0].mlp.down_proj.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-7, rtol=1e-4) and g1.abs().sum() > 0


def test_grpo_gradient_estimates_the_expected_reward_gradient(files, tok):
    """Rollouts -> rewards -> advantages -> loss, end to end, give the policy gradient.

    With one new token per completion the expected reward of a prompt is exact: E[r] =
    sum_v p(v) r(v) over the vocabulary. With Dr. GRPO advantages (r - group mean) the loss
    gradient is an unbiased estimate of -(G-1)/G * grad E[r] (averaged over prompts): the
    group mean includes the sample itself, which shrinks it by (G-1)/G. A wrong sign, a label
    off by one position or stale rollout weights would make the two gradients disagree.
    """
    from minimind.chat import render_prompt
    from minimind.train.rewards import WeightedRewards

    G = 512
    stage, ctx = _grpo_stage_and_ctx(files, tok, group_size=G, max_new_tokens=1, scale_advantages=False, beta_kl=0.0)
    prefix_len = len("<think>\n")  # the stage puts the prompt's open think tag back in front of the text

    def parity(text, answer, messages):  # any deterministic function of the sampled token will do
        tail = text[prefix_len:]
        return float(bool(tail) and ord(tail[-1]) % 2 == 0)

    stage.reward_fn = WeightedRewards([("parity", parity, 1.0)])
    msgs = [[_user("What is 1 + 2?")], [_user("Name a colour.")]]
    prompts = [render_prompt(tok, m) for m in msgs]
    with torch.no_grad():  # a sharper policy than the random init, so E[r] has a clear gradient
        for p in ctx.model.parameters():
            p.mul_(4.0)
    # The tied embedding/output matrix is left out of the comparison: there the sampled gradient
    # touches only the few rows that were sampled, while the exact one touches all 6400.
    params = [p for n, p in ctx.model.named_parameters() if not n.endswith("embed_tokens.weight")]
    raw = {"prompt_ids": prompts, "answers": [None, None], "messages": msgs}
    rounds = 8  # independent rollouts (the counter reseeds the sampler); their mean has 1/8 the variance
    sampled = [torch.zeros_like(p) for p in params]
    for count in range(rounds):
        loss, _ = stage.loss(ctx.model, stage.rollout(raw, ctx, count=count), ctx)
        for acc, g in zip(sampled, torch.autograd.grad(loss, params)):
            acc += g / rounds

    stops = {tok.eos_id, tok.pad_id}
    r = torch.tensor([0.0 if v in stops else parity("<think>\n" + tok.decode([v]), None, None)
                      for v in range(tok.vocab_size)])
    expected = 0.0
    for p in prompts:
        probs = ctx.model(torch.tensor([p])).logits[0, -1].float().softmax(-1)
        expected = expected + probs @ r / len(prompts)
    exact = torch.autograd.grad(-(G - 1) / G * expected, params)

    flat = lambda g: torch.cat([x.reshape(-1) for x in g])  # noqa: E731
    a, e = flat(sampled), flat(exact)
    # Measured: cosine 0.92, norm ratio 1.02 (one round alone: 0.70, 1.33); a flipped sign gives -0.92.
    assert torch.nn.functional.cosine_similarity(a, e, dim=0) > 0.8
    assert 0.8 < float(a.norm() / e.norm()) < 1.3


def test_grpo_freeze_embeddings_trains_everything_else(files, tok):
    stage, ctx = _grpo_stage_and_ctx(files, tok)
    every = [n for n, _ in stage.trainable_parameters(ctx.model)]
    frozen, _ = _grpo_stage_and_ctx(files, tok, freeze_embeddings=True)
    assert "embed_tokens.weight" in every
    assert [n for n, _ in frozen.trainable_parameters(ctx.model)] == [n for n in every if n != "embed_tokens.weight"]


def test_grpo_bad_options_are_user_errors(files, tmp_path, capsys):
    for extra, msg in ((["--group-size", "1"], "--group-size"), (["--rewards", "fromat:1"], "unknown reward"),
                       (["--fsdp"], "does not support --fsdp")):
        rc = main(["grpo", "--init", files["init"], "--data", files["rl"], "--out", str(tmp_path / "g"), *COMMON, *extra])
        assert rc == 2 and msg in capsys.readouterr().err


# ----------------------------------------------------------------------------- reasoning


def _reasoning_conv(i):
    return [_user(f"What is {i} + 2?"),
            {"role": "assistant", "content": f"The answer is {i + 2}.", "reasoning_content": f"{i} plus 2 makes {i + 2}."}]


def test_emptied_think_block_equals_the_thinking_off_rendering(tok):
    from minimind.chat import render_conversation
    from minimind.train.stages.reason import empty_think_blocks

    conv = _reasoning_conv(7)
    conv = conv + [_user("And 3 + 3?"), {"role": "assistant", "content": "6", "reasoning_content": "three and three"}]
    ids, mask = render_conversation(tok, conv)
    labels = [t if m else -100 for t, m in zip(ids, mask)]
    off = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in conv]
    ids_off, mask_off = render_conversation(tok, off)
    got_ids, got_labels = empty_think_blocks(ids, labels, tok.token_to_id("<think>"), tok.token_to_id("</think>"),
                                             tok.encode("\n\n"))
    assert got_ids == ids_off
    assert got_labels == [t if m else -100 for t, m in zip(ids_off, mask_off)]
    # A block cut off by truncation stays as it is.
    cut = ids[: ids.index(tok.token_to_id("</think>"))]
    assert empty_think_blocks(cut, cut, tok.token_to_id("<think>"), tok.token_to_id("</think>"), [9]) == (cut, cut)


def test_mixed_thinking_ratio_and_determinism(tok):
    from minimind.train.stages.reason import MixedThinking

    ids = torch.tensor([[5, 3, 320, 99, 98, 320, 4, 320, 7, 2]] * 8)
    batch = {"input_ids": ids, "labels": ids.clone()}

    class Endless:
        def __next__(self):
            return batch

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    all_off = next(MixedThinking(Endless(), tok, 1.0, seed=0))
    assert all_off["input_ids"][0].tolist() == [5, 3, 320, 4, 320, 7, 2, 0, 0, 0]
    assert all_off["labels"][0].tolist() == [5, 3, 320, 4, 320, 7, 2, -100, -100, -100]
    assert next(MixedThinking(Endless(), tok, 0.0, seed=0)) is batch
    a, b = MixedThinking(Endless(), tok, 0.5, seed=3), MixedThinking(Endless(), tok, 0.5, seed=3)
    first = [next(a)["input_ids"] for _ in range(3)]
    for _ in range(5):
        next(b)
    b.load_state_dict({"loader": {}, "count": 0})
    assert all(torch.equal(x, next(b)["input_ids"]) for x in first)
    lens = (torch.cat(first) != 0).sum(1)
    assert 0 < (lens == 7).sum() < 24  # a mix of thinking-off (7 tokens) and untouched (10) rows


def test_tag_weight_loss_hand_check(files, tok):
    import torch.nn.functional as F

    from minimind.checkpoint import load_model
    from minimind.train.stages.base import TrainContext
    from minimind.train.stages.reason import ReasonConfig, ReasonStage

    model = load_model(files["init"])
    ids = torch.tensor([[5, 3, 320, 99, 4, 320, 7, 2]])
    labels = ids.clone()
    labels[0, :2] = -100
    batch = {"input_ids": ids, "labels": labels}
    ctx = TrainContext(config=None, device=torch.device("cpu"), tokenizer=tok, model=model)
    with torch.no_grad():
        ce = F.cross_entropy(model(ids).logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")
    counted = labels[0, 1:] != -100  # 6 label tokens, of which </think> (id 4) is a tag
    for w in (1.0, 5.0):
        stage = ReasonStage(ReasonConfig(init="x", data=["x"], out="x", max_steps=1, tag_weight=w))
        with torch.no_grad():
            loss, _ = stage.loss(model, batch, ctx)
        weights = torch.where(labels[0, 1:] == 4, w, 1.0) * counted
        assert loss.item() == pytest.approx(float((ce * weights).sum() / counted.sum()), rel=1e-5)


def test_reason_cli(files, tmp_path):
    data = str(write_jsonl(tmp_path / "r.jsonl", [{"conversations": _reasoning_conv(i)} for i in range(12)]))
    out = tmp_path / "reason"
    _run(["reason", "--init", files["init"], "--data", data, "--out", str(out), "--no-think-ratio", "0.5",
          "--tag-weight", "3", *COMMON])
    _assert_run_dir(out)
    assert all(r["ce"] > 0 for r in _train_records(out))


def test_generate_teacher_answers_writes_valid_sft_data(files, tmp_path):
    from minimind.data.formats import check_payload
    from minimind.train.stages.distill import generate_teacher_answers

    out = tmp_path / "teacher_sft.jsonl"
    n = generate_teacher_answers(files["init"], [files["rl"]], out, max_new_tokens=4, thinking=True, batch_size=4)
    lines = out.read_text().splitlines()
    assert n == len(lines) == 12
    for line, q in zip(lines, range(12)):
        conv = check_payload("sft", line)["messages"]
        assert conv[0] == {"role": "user", "content": f"What is {q} + 2?"}
        assert conv[-1]["role"] == "assistant" and conv[-1]["content"] != f"The answer is {q + 2}."


def test_distill_generate_cli_writes_teacher_answers_then_sft_trains_on_them(files, tmp_path, capsys):
    out = tmp_path / "teacher.jsonl"
    _run(["distill", "--teacher", files["init"], "--data", files["rl"], "--generate", str(out),
          "--max-new-tokens", "4", "--batch-size", "4"])
    assert "wrote 12 teacher-answered conversations" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(r["conversations"][-1]["role"] == "assistant" for r in rows)
    assert not (tmp_path / "checkpoints").exists()  # generating is not training
    run = tmp_path / "student"
    _run(["sft", "--init", files["init"], "--data", str(out), "--out", str(run), *COMMON])
    _assert_run_dir(run)
    assert main(["distill", "--teacher", files["init"], "--generate", str(out)]) == 2  # no --data


@pytest.mark.parametrize("name", ["sft", "reason", "dpo", "distill", "grpo"])
def test_stage_loss_reads_nothing_back_from_the_device(name, tok):
    """A stage's loss keeps its metrics as tensors and decides shapes on the CPU batch: on a GPU,
    every `float(t)`, `.item()`, `.tolist()` or `.nonzero()` of a device tensor stalls the host
    until the GPU catches up, once per micro-batch (issue 17, item 7)."""
    import copy

    from host_reads import HostReads
    from minimind.train.stages import get_stage
    from minimind.train.stages.base import TrainContext

    cfg_cls = get_stage(name).config_class
    kw = {"out": "unused", "data": ["unused"], "max_steps": 1}
    if name == "reason":
        kw["tag_weight"] = 2.0
    if name == "distill":
        kw["teacher"] = "unused"
    stage = get_stage(name)(cfg_cls(**kw))
    moe = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    torch.manual_seed(0)
    model = MiniMindLM(moe).train()
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    ctx = TrainContext(config=stage.config, device=torch.device("cpu"), tokenizer=tok, model=model,
                       extra={"ref": frozen, "teacher": frozen})
    ids = torch.randint(0, tok.vocab_size, (4, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    labels[0, 6] = tok.token_to_id("<think>")
    if name == "dpo":
        batch = {"chosen_input_ids": ids[:2], "chosen_labels": labels[:2], "rejected_input_ids": ids[2:],
                 "rejected_labels": labels[2:]}
    else:
        batch = {"input_ids": ids, "labels": labels}
    if name == "grpo":
        batch.update(advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]), metrics={"reward": 0.5})
    with HostReads() as reads:
        loss, metrics = stage.loss(model, batch, ctx)
    assert reads.count == 0, reads.calls
    assert torch.isfinite(loss)
    assert all(not isinstance(v, torch.Tensor) or v.dim() == 0 for v in metrics.values())
