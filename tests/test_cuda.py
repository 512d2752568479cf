"""CUDA variants of the key GPU-path checks (issue 17); every test skips without a GPU.

`benchmarks/gpu_check.sh` runs this file on a GPU machine. Each test states
what only a GPU can show: kernels that exist only there (flash / memory-efficient attention,
fused AdamW, grouped GEMM, GradScaler), real host-device syncs, and inductor compilation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch

from _train_support import SyntheticStage, tiny_config, train_config
from minimind.config import get_preset
from minimind.model import MiniMindLM
from minimind.train.step import accumulate, update

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def _trainer(out, model_config=None, **kw):
    from minimind.train.trainer import Trainer

    cfg = train_config(out, device="cuda", eval_batches=0, **kw)
    torch.manual_seed(cfg.seed)
    return Trainer(SyntheticStage(cfg), model=MiniMindLM(model_config or tiny_config()), tokenizer=None)


def test_bf16_autocast_forward_agrees_with_fp32_on_cpu():
    torch.manual_seed(0)
    model = MiniMindLM(get_preset("tiny")).eval()
    ids = torch.randint(0, 6400, (2, 64))
    with torch.no_grad():
        ref = model(ids).logits
        model.to(CUDA)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(ids.to(CUDA)).logits.float().cpu()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.95


def test_fp16_with_grad_scaler_30_steps_finite_and_scaler_resumes(tmp_path):
    from minimind.train import checkpointing as ckpt

    full = _trainer(tmp_path / "full", dtype="fp16", max_steps=30, save_every=15)
    result = full.fit()
    assert full.scaler is not None and len(result.losses) == 30
    assert all(math.isfinite(x) for x in result.losses)
    tensors, _ = ckpt.load_trainer_state(tmp_path / "full" / "checkpoints" / "step-0000015")
    assert tensors["scaler"]["scale"] > 0  # the scaler's state is in the checkpoint
    part = _trainer(tmp_path / "full", dtype="fp16", max_steps=30, save_every=15, resume=True)
    (tmp_path / "full" / "checkpoints" / "latest").write_text("step-0000015\n")
    resumed = part.fit()
    assert resumed.losses == pytest.approx(result.losses[15:], rel=1e-3)
    assert part.scaler.get_scale() == full.scaler.get_scale()


def test_compiled_training_step_has_no_graph_break_over_lengths():
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = MiniMindLM(get_preset("tiny")).to(CUDA).train()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model)
    for T in (64, 96, 160):
        ids = torch.randint(0, 6400, (4, T), device=CUDA)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = compiled(ids, labels=ids)
        out.loss.backward()
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] <= 2
    torch._dynamo.reset()


def test_fused_adamw_on_cuda(tmp_path):
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit()
    assert trainer.optimizer.defaults["fused"] is True


ATTENTION_CASES = {  # case -> (dtype, masked, the backend that must be able to run it)
    "bf16 unmasked": (torch.bfloat16, False, "FLASH_ATTENTION"),
    "bf16 masked (left padding)": (torch.bfloat16, True, "EFFICIENT_ATTENTION"),
    "fp32 unmasked": (torch.float32, False, "EFFICIENT_ATTENTION"),
}


def attention_backends() -> dict[str, list[str]]:
    """For each case, the SDPA backends that accept our call (each tried alone)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = MiniMindLM(get_preset("tiny")).to(CUDA).eval()
    ids = torch.randint(0, 6400, (2, 128), device=CUDA)
    out = {}
    for case, (dtype, masked, _) in ATTENTION_CASES.items():
        mask = torch.ones_like(ids)
        if masked:
            mask[0, :17] = 0
        ok = []
        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            try:
                with torch.no_grad(), sdpa_kernel([getattr(SDPBackend, backend)]), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                        model(ids, attention_mask=mask if masked else None)
                ok.append(backend)
            except RuntimeError:
                pass
        out[case] = ok
    return out


def test_attention_avoids_the_math_kernel():
    found = attention_backends()
    print(json.dumps(found))
    for case, (_, _, backend) in ATTENTION_CASES.items():
        assert backend in found[case], (case, found[case])


def test_moe_grouped_dispatch_matches_the_expert_loop(monkeypatch):
    from minimind.model.moe import MoE

    cfg = dataclasses.replace(get_preset("moe"), num_layers=2)
    torch.manual_seed(0)
    moe = MoE(cfg).to(CUDA)
    x = torch.randn(4, 64, cfg.hidden_size, device=CUDA, dtype=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        grouped = moe._grouped_ok(x)
        y, _ = moe(x)
        monkeypatch.setattr(MoE, "_grouped_ok", lambda self, x: False)
        y2, _ = moe(x)
    print(f"grouped GEMM path used: {grouped}")
    torch.testing.assert_close(y.float(), y2.float(), rtol=2e-2, atol=2e-2)


def sync_warnings(model_config, tmp_path, seq_len: int = 16) -> list[str]:
    """Messages of the synchronising CUDA calls in one training step (2 micro-batches of 4 rows).

    The synthetic data's vocabulary is 64 tokens: any preset (vocab >= 64) accepts its ids."""
    trainer = _trainer(tmp_path, model_config, grad_accum=2, dtype="bf16", max_steps=3, seq_len=seq_len)
    trainer._setup()
    try:
        it = iter(trainer.batches)
        accumulate(trainer, it)  # warm-up: first-call allocations and lazy inits
        update(trainer)
        micro = iter([next(it) for _ in range(2)])
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                accumulate(trainer, micro)
                update(trainer)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    finally:
        trainer.lock.release()


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_a_training_step_syncs_once(kind, tmp_path):
    kw = {} if kind == "dense" else {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64}
    found = sync_warnings(tiny_config(hidden_size=64, **kw), tmp_path)
    print(f"{kind}: {len(found)} sync(s): {found}")
    assert len(found) == 1, found  # the loss, read for the NaN check before the optimizer step
