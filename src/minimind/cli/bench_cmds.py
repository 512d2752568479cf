"""`minimind bench train|infer`: throughput benchmarks (tokens/s, MFU, memory).

Each benchmark lives in `minimind.bench.<name>` and exposes `add_arguments(parser)` and
`run(args) -> int`; this module only wires them into the CLI.
"""

from __future__ import annotations

import argparse

from ..bench import infer, train

BENCHMARKS = {
    "train": (train, "training step throughput: eager/compiled, fp32/bf16, packed vs padded"),
    "infer": (infer, "generation latency and throughput, side by side with transformers"),
}


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="throughput benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_name", metavar="BENCHMARK")
    bench_sub.required = True
    for name, (module, help_text) in BENCHMARKS.items():
        parser = bench_sub.add_parser(name, help=help_text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
