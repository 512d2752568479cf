"""`minimind model list`, `minimind export hf` and `minimind import hf`."""

from __future__ import annotations

import argparse

from ..config import PRESETS, count_params, flops_per_token, get_preset, human

FORCE_HELP = ("replace a non-empty --out folder of files (never a MiniMind checkpoint or run directory, "
              "never a folder with sub-folders); the new folder replaces it in one rename")


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="inspect model presets")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    lst = model_sub.add_parser("list", help="print every preset with its size and training FLOPs per token")
    lst.add_argument("--seq-len", type=int, default=512, help="sequence length for the attention FLOPs (default 512)")
    lst.set_defaults(func=cmd_list)

    export = sub.add_parser("export", help="export a checkpoint to another format")
    export_sub = export.add_subparsers(dest="export_format", metavar="FORMAT")
    export_sub.required = True
    hf = export_sub.add_parser("hf", help="write a Hugging Face transformers folder (no remote code needed)")
    hf.add_argument("--ckpt", required=True, help="checkpoint folder or run directory")
    hf.add_argument("--out", required=True, help="output folder (new or empty; see --force)")
    hf.add_argument("--force", action="store_true", help=FORCE_HELP)
    hf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help="store weights in this dtype (default: as trained)")
    hf.set_defaults(func=cmd_export_hf)

    imp = sub.add_parser("import", help="import a model from another format")
    imp_sub = imp.add_subparsers(dest="import_format", metavar="FORMAT")
    imp_sub.required = True
    ihf = imp_sub.add_parser("hf", help="convert a Llama/Qwen2/Qwen3/Qwen3-MoE folder into a MiniMind checkpoint")
    ihf.add_argument("hf_dir", help="Hugging Face model folder (config.json + safetensors)")
    ihf.add_argument("--out", required=True, help="output checkpoint folder (new or empty; see --force)")
    ihf.add_argument("--force", action="store_true", help=FORCE_HELP)
    ihf.set_defaults(func=cmd_import_hf)


def cmd_list(args: argparse.Namespace) -> int:
    header = f"{'preset':<12} {'total':>8} {'active':>8} {'layers':>6} {'hidden':>6} {'heads':>7} {'vocab':>7}  GFLOP/token (train, seq {args.seq_len})"
    print(header)
    print("-" * len(header))
    for name in PRESETS:
        cfg = get_preset(name)
        total, active = count_params(cfg)
        heads = f"{cfg.num_heads}/{cfg.num_kv_heads}"
        kind = f"  MoE {cfg.num_experts}+{cfg.num_shared_experts} top-{cfg.num_experts_per_tok}" if cfg.is_moe else ""
        print(f"{name:<12} {human(total):>8} {human(active):>8} {cfg.num_layers:>6} {cfg.hidden_size:>6} "
              f"{heads:>7} {cfg.vocab_size:>7}  {flops_per_token(cfg, args.seq_len) / 1e9:.3f}{kind}")
    return 0


def cmd_export_hf(args: argparse.Namespace) -> int:
    from ..interop import export_hf

    out = export_hf(args.ckpt, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {out}")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from ..interop import import_hf

    out = import_hf(args.hf_dir, args.out, force=args.force)
    print(f"wrote {out}")
    return 0
