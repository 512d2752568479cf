"""DDP and FSDP2 on CPU (gloo, 2 processes): same weights as one process with the same global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from _train_support import SyntheticStage, run

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as td

    try:
        # Same global batch as the single-process run: 2 ranks x batch 4 == 1 process x 4 x accum 2.
        # Both wrappers run in the same two processes (one process group) to save start-up time.
        for kind in ("ddp", "fsdp2"):
            run(SyntheticStage, f"{out}/{kind}", batch_size=4, max_steps=3, eval_batches=1, fsdp=kind == "fsdp2")
    finally:
        if td.is_initialized():
            td.destroy_process_group()


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "step-0000003" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    torch.set_num_threads(1)
    _, ref = run(SyntheticStage, out / "single", batch_size=4, grad_accum=2, max_steps=3, eval_batches=1)
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out, ref


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_processes_match_one(runs, kind):
    out, ref = runs
    tmp_path = out / kind
    a, b = _weights(out / "single"), _weights(tmp_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-5, msg=k)
    # Only rank 0 wrote: one metrics file whose losses are the global-batch losses.
    import json

    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["split"] == "train"]
    assert losses == pytest.approx(ref.losses, rel=1e-5)
    # The checkpoint is a full state dict that one process loads.
    from minimind.checkpoint import load_model

    model = load_model(tmp_path)
    assert model.embed_tokens.weight.shape == (64, 32)
