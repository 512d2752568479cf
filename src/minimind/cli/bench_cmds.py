"""`minimind bench train|infer`: throughput benchmarks (tokens/s, MFU, memory).

Each benchmark lives in `minimind.bench.<name>` and exposes `add_arguments(parser)` and
`run(args) -> int`; this module only wires them into the CLI.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "train": "training step throughput: eager/compiled, fp32/bf16, packed vs padded",
    "infer": "generation latency and throughput, side by side with transformers",
}


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="throughput benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_name", metavar="BENCHMARK")
    bench_sub.required = True
    for name, help_text in BENCHMARKS.items():
        try:
            module = importlib.import_module(f"minimind.bench.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"minimind.bench.{name}":
                continue  # that benchmark is not part of this build
            raise
        parser = bench_sub.add_parser(name, help=help_text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)
