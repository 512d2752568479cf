"""train/state.py: on one process, the plain state-dict path equals torch.distributed.checkpoint's
(the format every checkpoint has had), both ways, and never imports torch.distributed.checkpoint."""

import json
import subprocess
import sys

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from minimind.config import get_preset
from minimind.model import MiniMindLM
from minimind.train.distributed import Dist
from minimind.train.optim import param_groups
from minimind.train.state import full_state, load_optimizer_state


def _model_and_optimizer(seed: int, skip_first: bool = False):
    torch.manual_seed(seed)
    model = MiniMindLM(get_preset("tiny"))  # tied embeddings: one parameter, two names
    named = list(model.named_parameters())[1 if skip_first else 0:]  # a frozen one, as with LoRA
    opt = torch.optim.AdamW(param_groups(named, 0.1), lr=1e-3, fused=True)
    for _, p in named:
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt


def _same(a, b) -> None:
    """Equal values, keys in the same order (a tuple equals a list: torch.distributed.checkpoint
    turns the betas tuple into a list on load; AdamW reads either)."""
    assert type(a) is type(b) or {type(a), type(b)} == {list, tuple}
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype
    else:
        assert a == b


def test_one_process_state_equals_distributed_checkpoint_format():
    for skip in (False, True):
        model, opt = _model_and_optimizer(0, skip)
        model_sd, optim_sd = full_state(model, opt, Dist())
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        _same(model_sd, get_model_state_dict(model, options=opts))
        _same(optim_sd, get_optimizer_state_dict(model, opt, options=opts))
        assert ("embed_tokens.weight" in optim_sd["state"]) != skip
        # no copies: the saved tensors are the live ones
        assert model_sd["embed_tokens.weight"].data_ptr() == model.embed_tokens.weight.data_ptr()


def test_restore_both_ways_gives_the_same_optimizer():
    src_model, src_opt = _model_and_optimizer(0, skip_first=True)
    _, saved = full_state(src_model, src_opt, Dist())
    model_a, opt_a = _model_and_optimizer(1, skip_first=True)
    model_b, opt_b = _model_and_optimizer(1, skip_first=True)
    model_a.load_state_dict(src_model.state_dict())
    model_b.load_state_dict(src_model.state_dict())
    load_optimizer_state(model_a, opt_a, saved, Dist())
    set_optimizer_state_dict(model_b, opt_b, saved, options=StateDictOptions(full_state_dict=True))
    _same(opt_a.state_dict(), opt_b.state_dict())
    _same(opt_a.state_dict()["state"], src_opt.state_dict()["state"])


def test_a_one_process_run_never_imports_torch_distributed_checkpoint(tmp_path):
    data = tmp_path / "pretrain.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on mat number {i} and the dog ran"}) + "\n"
                            for i in range(60)))
    args = ["pretrain", "--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "2",
            "--seq-len", "16", "--batch-size", "2", "--eval-batches", "0", "--num-samples", "0", "--no-progress"]
    code = (f"import sys; from minimind.cli import main; assert main({args!r}) == 0; "
            "print('dcp' if 'torch.distributed.checkpoint' in sys.modules else 'plain')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "plain"
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
