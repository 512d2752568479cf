"""oneDNN linear layers for CPU training (model/cpu_linear.py): the same values and gradients as
`F.linear`, used by the trainer for fp32 CPU runs, left alone elsewhere, and safe with hooks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minimind.config import ModelConfig
from minimind.infer.packed_linear import PackedLinears
from minimind.model import MiniMindLM
from minimind.model import cpu_linear as CL

from _train_support import SyntheticStage, run

pytestmark = pytest.mark.skipif(not CL.replaces_mkl(), reason="this PyTorch build has no MKL for oneDNN to replace")


def _grads(fn, *tensors):
    out = fn(*tensors)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), [t.grad.clone() if t.grad is not None else None for t in tensors]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(7, 16), (2, 5, 16)])
def test_linear_equals_f_linear_in_value_and_gradients(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64).float()
    w, b = torch.randn(12, 16), (torch.randn(12) if bias else None)
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    ours = _grads(lambda *t: CL.linear(*t), *leaves)
    leaves_ref = [t.detach().clone().requires_grad_() for t in leaves]
    ref = _grads(lambda *t: F.linear(*t), *leaves_ref)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    for g, g_ref in zip(ours[1], ref[1]):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_frozen_weight_gets_no_gradient_and_strided_input_works():
    torch.manual_seed(0)
    base = torch.randn(16, 9)
    x = base.t().requires_grad_()  # [9, 16], not contiguous
    w = torch.randn(4, 16)  # frozen: no weight-gradient product at all
    y = CL.linear(x, w)
    y.sum().backward()
    torch.testing.assert_close(y, F.linear(x.detach(), w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, torch.ones(9, 4) @ w, rtol=1e-5, atol=1e-5)
    assert w.grad is None


def test_falls_back_to_f_linear_outside_fp32_cpu():
    x, w = torch.randn(3, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    assert not CL.onednn_usable(x, w)
    assert torch.equal(CL.linear(x, w), F.linear(x, w))  # bit for bit: it *is* F.linear
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not CL.onednn_usable(x.float(), w.float())
    a, b = torch.randn(4, 8), torch.randn(6, 8)
    torch.testing.assert_close(CL.matmul_nt(a, b), a @ b.t(), rtol=1e-5, atol=1e-5)
    assert CL.matmul_nt(a[:0], b).shape == (0, 6)


def _tiny() -> MiniMindLM:
    torch.manual_seed(0)
    return MiniMindLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                  intermediate_size=48, max_seq_len=32)).train()


def test_a_model_trains_the_same_with_onednn_linears():
    """Three AdamW steps of a tiny model: losses and weights equal the MKL run to fp32 rounding."""
    runs = []
    for onednn in (False, True):
        model = _tiny()
        if onednn:
            assert CL.use_onednn_linears(model) > 0
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
        losses = []
        for _ in range(3):
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        runs.append((losses, model.state_dict()))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for k, v in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][k], v, rtol=1e-4, atol=1e-5)


def test_hooks_still_fire_through_onednn_linears():
    model = _tiny()
    seen = []
    model.layers[0].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    n = CL.use_onednn_linears(model)
    assert n == sum(type(m) is nn.Linear for m in model.modules()) > 0
    model(torch.randint(0, 64, (1, 5)))
    assert seen == [torch.Size([1, 5, 48])]


def test_deepcopy_keeps_its_own_forward_and_packed_inference_restores_it():
    model = _tiny()
    CL.use_onednn_linears(model)
    clone = copy.deepcopy(model)
    lin = clone.layers[0].self_attn.q_proj
    assert lin.forward.__self__ is lin  # bound to the copy, not to the original layer
    packed = PackedLinears(model)
    with torch.no_grad(), packed.active():
        model(torch.randint(0, 64, (1, 3)))
    # leaving the packed block puts the trainer's oneDNN forward back rather than deleting it
    assert "forward" in vars(model.layers[0].self_attn.q_proj)
    assert vars(model.layers[0].self_attn.q_proj)["forward"].__func__ is CL._linear_forward


def _onednn_layers(model: nn.Module) -> int:
    return sum(vars(m).get("forward") is not None and vars(m)["forward"].__func__ is CL._linear_forward
               for m in model.modules() if type(m) is nn.Linear)


@pytest.mark.parametrize("options, expected", [({}, True), ({"onednn": False}, False), ({"dtype": "bf16"}, False)])
def test_the_trainer_uses_onednn_for_fp32_cpu_runs_only(tmp_path, options, expected):
    trainer, result = run(SyntheticStage, tmp_path / "run", max_steps=2, eval_batches=0, **options)
    n_linear = sum(type(m) is nn.Linear for m in trainer.model.modules())
    assert _onednn_layers(trainer.model) == (n_linear if expected else 0)
    assert result.step == 2


def test_onednn_training_matches_mkl_training(tmp_path):
    """The Trainer's losses with and without --onednn agree to fp32 rounding over 6 steps."""
    losses = {}
    for flag in (True, False):
        _, result = run(SyntheticStage, tmp_path / str(flag), max_steps=6, eval_batches=0, onednn=flag)
        losses[flag] = result.losses
    assert len(losses[True]) == 6
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_builds_without_mkl_keep_their_own_blas(monkeypatch):
    """ARM / Apple builds (no MKL): models are left alone and `linear` is exactly F.linear."""
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    model = _tiny()
    assert CL.use_onednn_linears(model) == 0
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    assert not CL.onednn_usable(x, w)
    assert torch.equal(CL.linear(x, w), F.linear(x, w))
