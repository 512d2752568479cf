"""How fast could decoding be if attention cost nothing? `minimind bench infer`, twice in one process:
once as shipped, once with our decode attention replaced by zeros (wrong tokens, right amount of
every other computation), each next to transformers on the same weights.

    .venv/bin/python benchmarks/decode_floor.py                      # small, batch 16, 5 repeats
    .venv/bin/python benchmarks/decode_floor.py --batch-sizes 1,16 --compile

The second table bounds what any faster attention kernel can give: on the 2-core development CPU it
stayed under 3x transformers at batch 16 (docs/benchmarks.md, "Batch-16 decode: where the time goes").
Only our engine is changed: transformers keeps its own attention.
"""

from __future__ import annotations

import argparse
import sys
from unittest import mock

import torch

from minimind.bench import infer as bench_infer
from minimind.model import attention


def _no_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """Stands in for `attention.decode_attend`: the output shape, none of the work."""
    return q.new_zeros(q.shape)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_infer.add_arguments(p)
    p.set_defaults(batch_sizes="16", repeats=5, no_server=True)
    args = p.parse_args(argv)
    print("## decode attention as shipped")
    bench_infer.run(args)
    print("\n## decode attention deleted (returns zeros): an upper bound, not a result")
    with mock.patch.object(attention, "decode_attend", _no_attention):
        bench_infer.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
