"""`minimind model list|show`, `minimind export hf|gguf` and `minimind import hf|minimind`.

`model show` takes the same shape flags as training (generated from `shapes.ModelOverrides`), so
`minimind model show --preset small --num-layers 12` prints what `minimind pretrain --preset small
--num-layers 12` would build, before anything trains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..config import PRESETS, ModelConfig, count_params, flops_per_token, get_preset, human
from ..errors import UserError
from ..gguf import export_gguf, write_modelfile
from ..interop import export_hf, hf_to_config, import_hf
from ..locator import CONFIG_NAME, HF_CONFIG, hf_config, resolve_checkpoint
from ..shapes import ModelOverrides, base_config
from ..train.config import coerce, field_type, flag
from ..upstream import UpstreamFlags, import_upstream
from .train_cmds import add_config_flags

FORCE_HELP = ("replace a non-empty --out folder of files (never a MiniMind checkpoint or run directory, "
              "never a folder with sub-folders); the new folder replaces it in one rename")


def register(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="inspect model presets")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    model_sub.required = True
    lst = model_sub.add_parser("list", help="print every preset with its size and training FLOPs per token")
    lst.add_argument("--seq-len", type=int, default=512, help="sequence length for the attention FLOPs (default 512)")
    lst.set_defaults(func=cmd_list)
    show = model_sub.add_parser("show", help="print the shape, parameters and FLOPs/token of a preset with shape "
                                              "flags, a --model-config file or a checkpoint")
    show.add_argument("--preset", default="tiny", help="base preset (default: tiny; see `minimind model list`)")
    show.add_argument("--ckpt", default=None, help="checkpoint folder, run directory or Hugging Face folder")
    show.add_argument("--seq-len", type=int, default=None, help="tokens per sequence for the attention FLOPs "
                                                                 "(default: 4096, or max-seq-len if shorter)")
    add_config_flags(show, ModelOverrides)
    show.set_defaults(func=cmd_show)

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
    gg = export_sub.add_parser("gguf", help="write one GGUF file for llama.cpp / Ollama / LM Studio")
    gg.add_argument("--ckpt", required=True, help="checkpoint folder or run directory")
    gg.add_argument("--out", required=True, help="the .gguf file to write (renamed into place when complete)")
    gg.add_argument("--dtype", choices=["f32", "f16", "bf16", "q8_0"], default="f32",
                    help="weight type of the matrices (norms and the MoE router stay f32; default f32)")
    gg.add_argument("--modelfile", action="store_true",
                    help="also write NAME.Modelfile beside it for `ollama create NAME -f NAME.Modelfile`")
    gg.add_argument("--force", action="store_true", help="replace an existing --out file")
    gg.set_defaults(func=cmd_export_gguf)

    imp = sub.add_parser("import", help="import a model from another format")
    imp_sub = imp.add_subparsers(dest="import_format", metavar="FORMAT")
    imp_sub.required = True
    ihf = imp_sub.add_parser("hf", help="convert a Llama/Qwen2/Qwen3/Qwen3-MoE folder into a MiniMind checkpoint")
    ihf.add_argument("hf_dir", help="Hugging Face model folder (config.json + safetensors)")
    ihf.add_argument("--out", required=True, help="output checkpoint folder (new or empty; see --force)")
    ihf.add_argument("--force", action="store_true", help=FORCE_HELP)
    ihf.set_defaults(func=cmd_import_hf)
    _register_import_minimind(imp_sub)


def _register_import_minimind(imp_sub: argparse._SubParsersAction) -> None:
    up = imp_sub.add_parser("minimind", help="convert an upstream MiniMind .pth state dict or Transformers folder")
    up.add_argument("path", help="upstream .pth file (e.g. full_sft_512.pth) or folder with model_type \"minimind\"")
    up.add_argument("--out", required=True, help="output checkpoint folder (new or empty; see --force)")
    up.add_argument("--tokenizer", default=None, help="upstream tokenizer folder to copy in (tokenizer.json ...)")
    up.add_argument("--force", action="store_true", help=FORCE_HELP)
    up.add_argument("--config", default=None,
                    help="upstream config.json to read beside a .pth (its keys as in an upstream folder)")
    up.add_argument("--num-heads", type=int, default=None,
                    help="attention heads (needed without QK-norm: the tensors do not say; minimind2 uses 8)")
    up.add_argument("--experts-per-tok", type=int, default=None,
                    help="experts per token of an MoE .pth (minimind-3 MoE: 1, minimind2-moe: 2)")
    up.add_argument("--rms-norm-eps", type=float, default=None, help="default: 1e-6 with QK-norm, else 1e-5")
    up.add_argument("--rope-theta", type=float, default=None, help="default 1e6")
    up.add_argument("--max-seq-len", type=int, default=None, help="default 32768")
    up.add_argument("--yarn", action="store_true", default=None,
                    help="the model was used with upstream's inference_rope_scaling (YaRN x16 from 2048)")
    up.set_defaults(func=cmd_import_minimind)


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


def _show_config(args: argparse.Namespace) -> ModelConfig:
    """The config `model show` describes: --ckpt's, else --model-config / --preset, with the shape flags."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ModelOverrides) if hasattr(args, f.name)}
    flags = ModelOverrides(**{k: coerce(v, field_type(ModelOverrides, k), f"--{flag(k)}") for k, v in given.items()})
    if args.ckpt is None:
        flags.check_shape_flags(args.preset, None)
        return flags.apply(base_config(args.preset, flags.model_config))
    flags.check_for_init(args.ckpt, source="--ckpt")
    hf = hf_config(args.ckpt)
    if hf is not None:
        return flags.apply(hf_to_config(hf, source=str(Path(args.ckpt) / HF_CONFIG)))
    return flags.apply(ModelConfig.load(resolve_checkpoint(args.ckpt) / CONFIG_NAME))


def cmd_show(args: argparse.Namespace) -> int:
    if args.seq_len is not None and args.seq_len < 1:
        raise UserError(f"--seq-len must be at least 1, got {args.seq_len}")
    cfg = _show_config(args)
    for line in describe(cfg, args.seq_len or min(4096, cfg.max_seq_len)):
        print(line)
    return 0


def describe(cfg: ModelConfig, seq_len: int) -> list[str]:
    """The lines of `model show`: shape, context, MoE, parameters, FLOPs and the fixed training memory."""
    total, active = count_params(cfg)
    embed = cfg.vocab_size * cfg.hidden_size
    flops = flops_per_token(cfg, seq_len)
    attention = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    origin = cfg.extra.get("preset", "custom")
    if cfg.extra.get("overrides"):
        origin += f" with {cfg.extra['overrides']}"
    moe = (f"{cfg.num_experts} routed + {cfg.num_shared_experts} shared experts, top-{cfg.num_experts_per_tok}, "
           f"expert width {cfg.moe_intermediate_size}") if cfg.is_moe else "none (dense SwiGLU MLP)"
    scaling = json.dumps(cfg.rope_scaling) if cfg.rope_scaling else "none"
    return [
        f"model:        {origin}",
        f"shape:        hidden {cfg.hidden_size}, layers {cfg.num_layers}, heads {cfg.num_heads} "
        f"(kv {cfg.num_kv_heads}, head_dim {cfg.head_dim}), intermediate {cfg.intermediate_size}, "
        f"vocab {cfg.vocab_size}, qk_norm {'yes' if cfg.qk_norm else 'no'}, "
        f"tied embeddings {'yes' if cfg.tie_word_embeddings else 'no'}",
        f"context:      max_seq_len {cfg.max_seq_len}, rope_theta {cfg.rope_theta:g}, rope_scaling {scaling}",
        f"MoE:          {moe}",
        f"parameters:   total {human(total)} ({total:,}), active {human(active)} ({active:,}), "
        f"embedding {human(embed)}",
        f"FLOPs/token:  {flops / 1e9:.3f} GFLOP training at seq {seq_len} = 6 x {human((flops - attention) / 6)} "
        f"matmul weights + {attention / 1e9:.3f}G attention (12 x layers x seq x heads x head_dim)",
        f"train memory: {total * 16 / 2**30:.2f} GiB = 16 B/param (fp32 weights 4 + grads 4 + AdamW moments 8), "
        "before activations; see docs/scaling.md",
    ]


def cmd_export_hf(args: argparse.Namespace) -> int:
    out = export_hf(args.ckpt, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {out}")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    out = import_hf(args.hf_dir, args.out, force=args.force)
    print(f"wrote {out}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    out = export_gguf(args.ckpt, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.dtype})")
    if args.modelfile:
        print(f"wrote {write_modelfile(out)}")
    return 0


def cmd_import_minimind(args: argparse.Namespace) -> int:
    flags = UpstreamFlags(num_heads=args.num_heads, experts_per_tok=args.experts_per_tok,
                          rms_norm_eps=args.rms_norm_eps, rope_theta=args.rope_theta,
                          max_seq_len=args.max_seq_len, yarn=args.yarn, config=args.config)
    out = import_upstream(args.path, args.out, tokenizer_dir=args.tokenizer, flags=flags, force=args.force)
    print(f"wrote {out}")
    return 0
