"""LoRA: only adapters train and are saved; merge == base + adapter; unmerge restores the base."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from _train_support import SyntheticBatches, tiny_config
from minimind.model import MiniMindLM
from minimind.train.lora import (
    add_lora, adapter_state_dict, freeze_base, load_adapter, lora_target_names, merge_lora, save_adapter,
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
