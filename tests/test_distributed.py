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


def _worker(rank: int, world: int, port: int, out: str, fsdp: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as td

    try:
        # Same global batch as the single-process run: 2 ranks x batch 4 == 1 process x 4 x accum 2.
        run(SyntheticStage, out, batch_size=4, max_steps=3, eval_batches=1, fsdp=fsdp)
    finally:
        if td.is_initialized():
            td.destroy_process_group()


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "step-0000003" / "model.safetensors"))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    trainer, res = run(SyntheticStage, out, batch_size=4, grad_accum=2, max_steps=3, eval_batches=1)
    return out, res


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_match_one(tmp_path, single, fsdp):
    ref_dir, ref = single
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), fsdp), nprocs=2, join=True)
    a, b = _weights(ref_dir), _weights(tmp_path)
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
