"""LoRA: only adapters train and are saved; merge == base + adapter; unmerge restores the base."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from _train_support import SyntheticBatches, tiny_config
from minimind.model import MiniMindLM
from minimind.train.lora import (
    adapters, add_lora, adapter_state_dict, freeze_base, load_adapter, lora_target_names, merge_lora, save_adapter,
    unmerge_lora,
)
from minimind.train.stages.lora import LoRAConfig, LoRAStage


def _model_with_random_adapters(seed=0):
    torch.manual_seed(seed)
    model = MiniMindLM(tiny_config())
    add_lora(model, "*_proj", rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora.B"):
                p.normal_(std=0.05)  # B = 0 at init would make the test trivial
    return model.eval()


def test_targets_and_zero_init_keep_base_output():
    torch.manual_seed(0)
    model = MiniMindLM(tiny_config()).eval()
    x = torch.randint(0, 64, (2, 10))
    before = model(x).logits
    names = add_lora(model, "*.q_proj,*.v_proj", rank=2, alpha=4.0)
    assert names == ["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj",
                     "layers.1.self_attn.q_proj", "layers.1.self_attn.v_proj"]
    assert torch.equal(model(x).logits, before)  # B = 0: exactly the base model
    assert "lm_head" not in lora_target_names(model, "*_proj")


def test_adapter_output_is_base_plus_scaled_low_rank_update():
    model = _model_with_random_adapters()
    lin = model.layers[0].self_attn.q_proj
    x = torch.randn(3, lin.in_features)
    expected = x @ lin.weight.t() + (x @ lin.lora.A.t() @ lin.lora.B.t()) * (8.0 / 4)
    torch.testing.assert_close(lin(x), expected)


def test_merge_equals_adapter_and_unmerge_restores_base():
    model = _model_with_random_adapters()
    base = {k: v.clone() for k, v in model.state_dict().items() if ".lora." not in k}
    x = torch.randint(0, 64, (2, 12))
    with_adapter = model(x).logits
    merge_lora(model)
    merged = model(x).logits  # adapters skipped, update folded into W
    torch.testing.assert_close(merged, with_adapter, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.layers[0].self_attn.q_proj.weight, base["layers.0.self_attn.q_proj.weight"])
    # A plain model loaded with the merged weights (no LoRA code at all) gives the same output.
    plain = MiniMindLM(tiny_config()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora." not in k})
    torch.testing.assert_close(plain(x).logits, with_adapter, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x).logits, with_adapter, rtol=1e-5, atol=1e-5)


def test_adapter_save_load_round_trip(tmp_path):
    model = _model_with_random_adapters(seed=1)
    save_adapter(model.state_dict(), tmp_path, {"rank": 4, "alpha": 8.0, "targets": "*_proj", "base": None})
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    assert saved.keys() == adapter_state_dict(model.state_dict()).keys()
    assert all(".lora." in k for k in saved)
    other = _model_with_random_adapters(seed=1)  # same base ...
    with torch.no_grad():
        for name, p in other.named_parameters():
            if ".lora." in name:
                p.uniform_()  # ... different adapters, until loaded
    x = torch.randint(0, 64, (1, 8))
    assert not torch.allclose(other(x).logits, model(x).logits)
    load_adapter(other, tmp_path)
    torch.testing.assert_close(other(x).logits, model(x).logits)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["rank"] == 4


class SyntheticLoRA(LoRAStage):
    config_class = LoRAConfig

    def batches(self, ctx, split="train"):
        return SyntheticBatches(ctx.config.seq_len, ctx.config.batch_size, ctx.config.seed, ctx.rank,
                                ctx.world_size, split, masked=True)


def test_lora_training_updates_only_adapters(tmp_path):
    from minimind.train.trainer import Trainer

    torch.manual_seed(0)
    model = MiniMindLM(tiny_config())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = LoRAConfig(out=str(tmp_path), seq_len=16, batch_size=4, max_steps=5, lr=1e-2, progress=False,
                     eval_batches=1, num_samples=0, lora_rank=4)
    trainer = Trainer(SyntheticLoRA(cfg), model=model, tokenizer=None)
    res = trainer.fit()
    sd = model.state_dict()
    for k, v in base.items():
        assert torch.equal(sd[k], v), f"base weight {k} changed"
    assert any(not torch.equal(sd[k], torch.zeros_like(sd[k])) for k in sd if k.endswith("lora.B"))
    n_adapter = sum(p.numel() for n, p in model.named_parameters() if ".lora." in n)
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == n_adapter
    assert res.losses[-1] < res.losses[0]
    ck = tmp_path / "checkpoints" / "step-0000005"
    files = {p.name for p in ck.iterdir()}
    assert {"adapter.safetensors", "adapter_config.json", "trainer_state.pt"} <= files
    assert "model.safetensors" not in files
    assert set(load_file(str(ck / "adapter.safetensors"))) == set(adapter_state_dict(sd))


def test_freeze_base_leaves_only_adapters():
    model = MiniMindLM(tiny_config())
    add_lora(model, "*_proj", rank=2, alpha=2.0)
    freeze_base(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora." in n for n in trainable)
    with pytest.raises(ValueError, match="match no Linear"):
        add_lora(MiniMindLM(tiny_config()), "*.nothing")


class LambdaDropout(torch.nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def _plain_head_loss(model, ids, labels):
    """The reference: full float32 logits through the hooked head, then plain cross-entropy."""
    logits = model(ids).logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


@pytest.mark.parametrize("dropout", [False, True])
def test_lora_on_lm_head_keeps_the_chunked_loss_with_equal_loss_and_gradients(dropout, monkeypatch):
    torch.manual_seed(0)
    model = MiniMindLM(tiny_config(tie_word_embeddings=False))
    add_lora(model, "lm_head,*.q_proj", rank=4, alpha=8.0)
    if dropout:  # a fixed per-feature "dropout" mask: it must hit the adapter branch only, in both paths
        mask = (torch.rand(model.config.hidden_size) > 0.3) / 0.7
        model.lm_head.lora.dropout = LambdaDropout(mask)
    freeze_base(model)
    for _, adapter in adapters(model):
        torch.nn.init.normal_(adapter.B, std=0.1)  # B = 0 would hide a missing adapter term
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    labels = ids.clone()
    labels[0, :4] = -100
    head = model.lm_head.lora
    params = [head.A, head.B, model.layers[0].self_attn.q_proj.lora.A]

    ref = _plain_head_loss(model, ids, labels)
    ref_grads = torch.autograd.grad(ref, params)
    # The head must not be run on [B, T, V]: a chunked forward never calls lm_head's hook.
    monkeypatch.setattr(model.lm_head, "forward", lambda *a: pytest.fail("lm_head built full logits"))
    out = model(ids, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(torch.autograd.grad(out.loss, params), ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_merged_lora_head_uses_the_base_weight_alone():
    torch.manual_seed(0)
    model = MiniMindLM(tiny_config(tie_word_embeddings=False))
    add_lora(model, "lm_head", rank=2, alpha=2.0)
    torch.nn.init.normal_(model.lm_head.lora.B)
    x = torch.randn(5, model.config.hidden_size)
    unmerged = model.head_operands(x)
    torch.testing.assert_close(unmerged[0] @ unmerged[1].t(), model.lm_head(x))
    merge_lora(model)
    merged = model.head_operands(x)
    assert merged[0] is x and merged[1] is model.lm_head.weight
    torch.testing.assert_close(merged[0] @ merged[1].t(), unmerged[0] @ unmerged[1].t(), atol=1e-5, rtol=1e-5)
