"""GPU-path bugs caught on the CPU: compile graph breaks, MoE gradients for starved experts,
the router's precision under autocast (issue: GPU paths correct before anyone runs them)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from minimind.config import get_preset
from minimind.model import MiniMindLM
from minimind.train.step import accumulate, update


def test_compile_has_no_graph_break_over_changing_lengths():
    # SFT/DPO/GRPO batches change length every step; a symbolic `is_causal` used to break the
    # graph in every layer (and deeper models then hit the recompile limit).
    torch.manual_seed(0)
    model = MiniMindLM(get_preset("tiny")).eval()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        for T in (8, 13, 21, 34):
            ids = torch.randint(0, 100, (2, T))
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2  # one static, then one dynamic-shape graph
    torch._dynamo.reset()


def _tiny_moe() -> MiniMindLM:
    cfg = dataclasses.replace(get_preset("tiny"), num_experts=4, num_experts_per_tok=1, num_shared_experts=0)
    torch.manual_seed(0)
    return MiniMindLM(cfg)


def test_starved_expert_still_gets_a_gradient():
    # DDP all-reduces every parameter's gradient; an expert that received no token used to get
    # none (None), and DDP then failed with "Expected to have finished reduction".
    model = _tiny_moe()
    for layer in model.layers:
        with torch.no_grad():  # router logits (s, 0, 0, 0): experts 2 and 3 can never win top-1
            layer.mlp.gate.weight.zero_()
            layer.mlp.gate.weight[0] = 1.0
    ids = torch.randint(0, 100, (2, 16))
    model(ids, labels=ids).loss.backward()
    expert_grads = {n: p.grad for n, p in model.named_parameters() if ".experts." in n}
    assert not [n for n, g in expert_grads.items() if g is None]
    starved = [n for n, g in expert_grads.items() if ".experts.3." in n]
    assert starved and all(expert_grads[n].abs().sum() == 0 for n in starved)


def test_router_stays_float32_under_autocast():
    model = _tiny_moe()
    moe = model.layers[0].mlp
    x = torch.randn(32, model.config.hidden_size)
    ref, _, _ = moe.route(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs, _, _ = moe.route(x)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, ref)


def test_rope_keeps_the_autocast_dtype_of_q_and_k(monkeypatch):
    # Under autocast q/k leave their projections in bf16; fp32 rope tables used to upcast them
    # (and the KV cache behind them) to fp32.
    model = MiniMindLM(get_preset("tiny"))
    dtypes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        dtypes.append((q.dtype, k.dtype))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 100, (1, 8)))
    assert dtypes and all(d == (torch.bfloat16, torch.bfloat16) for d in dtypes), dtypes


# -- item 5: attention kernels --------------------------------------------------------------------


def test_attention_kernel_choice_per_case():
    from minimind.model.attention import native_gqa

    # CUDA: enable_gqa only where flash can take it (no mask, half precision); CPU keeps it.
    assert native_gqa("cuda", torch.bfloat16, masked=False)
    assert not native_gqa("cuda", torch.bfloat16, masked=True)
    assert not native_gqa("cuda", torch.float32, masked=False)
    assert native_gqa("cpu", torch.float32, masked=True)


def test_repeated_kv_attention_equals_native_gqa():
    from minimind.model.attention import attend

    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8, requires_grad=True)
    k = torch.randn(2, 2, 6, 8, requires_grad=True)
    v = torch.randn(2, 2, 6, 8, requires_grad=True)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    mask |= torch.eye(6, dtype=torch.bool)
    for m, causal in ((None, True), (mask, False)):
        outs, grads = [], []
        for native in (True, False):
            out = attend(q, k, v, m, causal, 0.0, native)
            g = torch.autograd.grad(out.square().sum(), (q, k, v))
            outs.append(out)
            grads.append(g)
        torch.testing.assert_close(outs[1], outs[0])
        for a, b in zip(grads[1], grads[0]):
            torch.testing.assert_close(a, b)


# -- item 9: chunked head + cross-entropy -----------------------------------------------------------


def _saved_bytes(fn, params) -> int:
    """Bytes of the distinct activation storages (not weights) autograd saves while `fn` runs."""
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def test_chunked_loss_equals_plain_cross_entropy_and_saves_no_logits(monkeypatch):
    import torch.nn.functional as F

    from minimind.model import lm_loss

    cfg = dataclasses.replace(get_preset("tiny"), vocab_size=4096)
    torch.manual_seed(0)
    model = MiniMindLM(cfg)
    ids = torch.randint(0, 4096, (2, 48))
    labels = ids.clone()
    labels[0, :10] = -100
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 4096 * 16)  # 16 rows per chunk: 6 chunks

    def plain():
        logits = model(ids).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    ref, ref_saved = _saved_bytes(plain, model.parameters())
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    out, saved = _saved_bytes(lambda: model(ids, labels=labels), model.parameters())
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.testing.assert_close(out.loss, ref)
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, r, msg=name)
    logits_bytes = 2 * 47 * 4096 * 4
    # The plain path keeps the float32 log-softmax of all logits for its backward; the chunked
    # one keeps only the hidden states (shared with the rest of the model's activations).
    assert ref_saved - saved >= 0.95 * logits_bytes, (saved, ref_saved)


def test_chunked_distill_loss_equals_the_unchunked_formula(monkeypatch):
    import torch.nn.functional as F

    from minimind.model import lm_loss
    from minimind.train.losses import distill_loss

    torch.manual_seed(0)
    s = torch.randn(2, 40, 512, requires_grad=True)
    t = torch.randn(2, 40, 512)
    labels = torch.randint(0, 512, (2, 40))
    labels[1, :7] = -100
    T, alpha = 1.7, 0.3
    mask = labels[:, 1:] != -100
    ss, tt = s[:, :-1][mask], t[:, :-1][mask]
    log_ps, log_pt = F.log_softmax(ss / T, -1), F.log_softmax(tt / T, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    ref = alpha * T**2 * kl + (1 - alpha) * F.cross_entropy(ss, labels[:, 1:][mask])
    (ref_grad,) = torch.autograd.grad(ref, s)
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 512 * 10)  # 10 rows per chunk
    loss, metrics = distill_loss(s, t, labels, T, alpha)
    (grad,) = torch.autograd.grad(loss, s)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(metrics["kl"], kl.detach())
    torch.testing.assert_close(grad, ref_grad)


# -- item 10 (cache half) --------------------------------------------------------------------------


def test_kv_cache_takes_the_autocast_dtype():
    model = MiniMindLM(get_preset("tiny"))
    assert model.new_kv_cache(1, 16).k.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.new_kv_cache(1, 16).k.dtype == torch.bfloat16


# -- item 7: MoE dispatch on the device -------------------------------------------------------------


def test_grouped_moe_dispatch_equals_the_per_expert_loop(monkeypatch):
    from minimind.model.moe import MoE

    model = _tiny_moe()
    cfg = dataclasses.replace(model.config, num_experts_per_tok=2)
    torch.manual_seed(1)
    moe = MoE(cfg)
    x = torch.randn(2, 9, cfg.hidden_size, requires_grad=True)
    assert moe._grouped_ok(x)
    y, aux = moe(x)
    grads = torch.autograd.grad(y.square().sum() + aux, [x, *moe.parameters()])
    monkeypatch.setattr(MoE, "_grouped_ok", lambda self, x: False)
    y2, aux2 = moe(x)
    grads2 = torch.autograd.grad(y2.square().sum() + aux2, [x, *moe.parameters()])
    torch.testing.assert_close(y, y2)
    torch.testing.assert_close(aux, aux2)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b)


def test_moe_forward_under_compile_has_no_graph_break():
    # bincount(...).tolist() broke the graph in every MoE layer (a data-dependent host read).
    model = _tiny_moe().eval()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    ids = torch.randint(0, 100, (2, 12))
    # bf16 autocast: the grouped matmul's compile-time rules take bf16 only (as on a GPU)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(compiled(ids).logits, model(ids).logits)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch._dynamo.reset()


# -- item 7: host syncs per training step ---------------------------------------------------------


def test_a_training_step_reads_the_device_once(tmp_path):
    # Per step, the only read of a device value is the loss for the NaN check (before the update);
    # the rest (MoE dispatch sizes, the aux-loss metric, the grad norm) used to sync every
    # micro-batch and every layer.
    from _train_support import SyntheticStage, tiny_config, train_config
    from host_reads import HostReads
    from minimind.train.trainer import Trainer

    cfg = train_config(tmp_path, grad_accum=2, grad_clip=1.0, max_steps=2)
    torch.manual_seed(0)
    model = MiniMindLM(tiny_config(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32))
    trainer = Trainer(SyntheticStage(cfg), model=model, tokenizer=None)
    trainer._setup()
    try:
        micro = iter([next(trainer.batches) for _ in range(cfg.grad_accum)])  # made on the host, uncounted
        batch_weights = cfg.grad_accum  # Stage.batch_weight reads the *CPU* labels: no device sync
        with HostReads() as reads:
            loss, metrics, _ = accumulate(trainer, micro)
            update(trainer)
        assert reads.count == batch_weights + 1, reads.calls
        assert isinstance(metrics["aux_loss"], torch.Tensor)  # read when logged, not per micro-batch
    finally:
        trainer.lock.release()


# -- items 2 and 14: MFU, peak table, device selection ----------------------------------------------


def test_peak_table_tells_gpu_variants_apart():
    from minimind.train.metrics import gpu_peak_flops

    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA H100 NVL") == 835e12
    assert gpu_peak_flops("NVIDIA H200") == 989e12
    assert gpu_peak_flops("NVIDIA B200") == 2250e12
    assert gpu_peak_flops("NVIDIA L40") == 181e12
    assert gpu_peak_flops("NVIDIA L40S") == 362e12
    assert gpu_peak_flops("NVIDIA L4") == 121e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("NVIDIA A10G") == 70e12
    assert gpu_peak_flops("NVIDIA GeForce RTX 4090") == 165e12
    assert gpu_peak_flops("Some Future GPU") is None


def test_mfu_divides_by_the_peak_of_every_rank():
    from minimind.train.metrics import model_flops_utilization

    # 8 GPUs together reach 8 x 1000 tokens/s at 1e9 FLOP/token on 1e13 FLOP/s each: 10%.
    assert model_flops_utilization(8000, 1e9, 1e13, world_size=8) == pytest.approx(0.1)
    assert model_flops_utilization(8000, 1e9, None, world_size=8) is None


def test_cuda_index_under_torchrun_is_refused(monkeypatch):
    from minimind.errors import UserError
    from minimind.train import distributed as D

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="cuda:LOCAL_RANK"):
        D.init_distributed("cuda:0")


def test_single_process_sets_the_cuda_device(monkeypatch):
    from minimind.train import distributed as D

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert D.init_distributed("cuda:1").device == torch.device("cuda", 1)
    assert chosen == [torch.device("cuda", 1)]


def test_resume_needs_every_rank_to_see_the_checkpoint(monkeypatch, tmp_path):
    # Multi-node without a shared filesystem: a node that sees no checkpoint must not start over.
    from minimind.errors import UserError
    from minimind.train import distributed as D
    from minimind.train.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.dist, trainer.run_dir, trainer.resume_from = D.Dist(rank=0, world_size=2), tmp_path, tmp_path
    monkeypatch.setattr(D, "all_gather_objects", lambda obj, dist: [obj, False])
    with pytest.raises(UserError, match="shared by every node"):
        trainer._check_same_view()
    monkeypatch.setattr(D, "all_gather_objects", lambda obj, dist: [obj, True])
    trainer._check_same_view()


def test_chunked_loss_under_bf16_autocast_matches_the_plain_path(monkeypatch):
    import torch.nn.functional as F

    from minimind.model import lm_loss

    torch.manual_seed(0)
    model = MiniMindLM(dataclasses.replace(get_preset("tiny"), vocab_size=2048))
    ids = torch.randint(0, 2048, (2, 40))
    monkeypatch.setattr(lm_loss, "CHUNK_ELEMENTS", 2048 * 16)
    params = list(model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids).logits
        ref = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss = model(ids, labels=ids).loss
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    for g, r in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        assert (g - r).norm() <= 2e-2 * r.norm() + 1e-6


def test_lora_on_the_head_still_counts_in_the_loss():
    # The chunked loss folds a LoRA head into one matmul (`head_operands`); the adapter must still count.
    import torch.nn.functional as F

    from minimind.train.lora import add_lora

    torch.manual_seed(0)
    model = MiniMindLM(get_preset("tiny"))
    add_lora(model, "lm_head", rank=4)
    for p in model.lm_head.lora.parameters():
        torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 6400, (2, 12))
    ref = F.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    torch.testing.assert_close(model(ids, labels=ids).loss, ref)
