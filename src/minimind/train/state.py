"""Full (unsharded) model and optimizer state dicts for checkpoints, keyed by parameter name.

Contract:
- `full_state(model, optimizer, dist) -> (model_sd, optim_sd)`: the model's state dict and the
  optimizer's, whose per-parameter state and param-group lists name parameters by their FQN
  (`layers.0.mlp.up_proj.weight`) rather than by position, the format of
  `torch.distributed.checkpoint.state_dict.get_optimizer_state_dict(..., full_state_dict=True)`.
- `load_optimizer_state(model, optimizer, optim_sd, dist)` is the inverse.

Several processes (DDP / FSDP2) go through `torch.distributed.checkpoint`, which gathers shards.
One process takes a plain path that returns the same dicts (the same tensors, no copies: a test
compares the two): importing `torch.distributed.checkpoint` pulls in DTensor and sympy, ~0.6 s of
CPU at start-up for nothing. So a checkpoint written by one path loads with the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..locator import CheckpointError
from .distributed import Dist


def _names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> FQN (a tied weight keeps its first name, as in `named_parameters`)."""
    return {id(p): n for n, p in model.named_parameters()}


def _cpu(tree: Any) -> Any:
    """Tensors moved to the CPU (`.cpu()` of a CPU tensor is the tensor itself: no copy)."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cpu(v) for v in tree]
    return tree


def _dcp_options(cpu_offload: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> tuple[dict, dict]:
    """(model state dict, optimizer state dict keyed by FQN); CPU tensors."""
    if dist.enabled:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return (get_model_state_dict(model, options=_dcp_options(True)),
                get_optimizer_state_dict(model, optimizer, options=_dcp_options(True)))
    names = _names(model)
    order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]  # state_dict's integer ids
    sd = optimizer.state_dict()
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    state = {order[i]: s for i, s in sd["state"].items()}
    return _cpu(model.state_dict()), {"state": _cpu(state), "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optim_sd: dict[str, Any],
                         dist: Dist) -> None:
    """Restore what `full_state` returned (or torch.distributed.checkpoint wrote) into `optimizer`."""
    if dist.enabled:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, optim_sd, options=_dcp_options(False))
        return
    names = _names(model)
    saved_group = {fqn: g for g in optim_sd["param_groups"] for fqn in g["params"]}
    groups, state, index = [], {}, 0
    for group in optimizer.param_groups:  # the current groups, in order: positions are ids
        fqns = [names[id(p)] for p in group["params"]]
        missing = [f for f in fqns if f not in saved_group]
        if missing:
            raise CheckpointError(f"the saved optimizer state has no entry for {missing[0]} "
                                  "(was it written for another model or stage?)")
        hyper = {k: v for k, v in saved_group[fqns[0]].items() if k != "params"}
        groups.append({**hyper, "params": list(range(index, index + len(fqns)))})
        for i, fqn in enumerate(fqns, index):
            if fqn in optim_sd["state"]:
                state[i] = optim_sd["state"][fqn]
        index += len(fqns)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
