"""Count the reads of tensor values back to the host (device syncs on a GPU), on the CPU.

`HostReads()` is a context manager: while active, it counts `aten._local_scalar_dense` (what
`.item()`, `float(t)`, `int(t)`, `bool(t)` dispatch to), `aten.nonzero` (its output size must be
read) and `Tensor.tolist()` calls (which read the data without dispatching an op). On CUDA each is
a host-device synchronisation; on the CPU they are free, but counting them here catches a sync
before anyone runs on a GPU.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)


class _Mode(TorchDispatchMode):
    def __init__(self, owner: "HostReads") -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.owner.calls.append(str(func))
        return func(*args, **(kwargs or {}))


class HostReads:
    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    def __enter__(self) -> "HostReads":
        self._tolist = torch.Tensor.tolist
        calls, original = self.calls, self._tolist

        def tolist(t):
            calls.append("tolist")
            return original(t)

        torch.Tensor.tolist = tolist
        self._mode = _Mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        torch.Tensor.tolist = self._tolist
