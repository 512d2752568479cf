"""`minimind pretrain|sft|lora|<any registered stage>`, `minimind quickstart`, `minimind plot`.

Every training stage in `minimind.train.stages` becomes a subcommand whose flags are generated
from its config dataclass: field `max_steps` is `--max-steps`, booleans get `--x/--no-x`, list
fields take several values. `--config FILE` (JSON) supplies options too; explicit flags win.
A new stage therefore needs no CLI code at all. Flags are validated by the config's `validate()`
(quickstart's by `cmd_quickstart`) before anything runs. A stage runs through
`minimind.train.recipes.run_stage` (with the explicit --resume semantics of a command line).

`minimind pretrain --recipe FILE_OR_NAME --out RUN_DIR [--resume] [--data-root DIR] [flags]` runs
the phases of a multi-phase recipe in one run directory (`minimind.train.phases`); flags given
on the command line override the recipe's options in every phase.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

from ..devices import pick_device
from ..errors import UserError
from ..recipes import read_recipe, shipped_recipes
from ..train.config import _unwrap_optional, field_type, flag, load_config
from ..train.phases import run_recipe
from ..train.plot import plot_run
from ..train.quickstart import quickstart
from ..train.recipes import is_main_process, run_stage
from ..train.stages import get_stage, stage_registry


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per dataclass field; defaults are SUPPRESSed so only given flags override."""
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(field_type(cls, f.name))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if default not in (None, "", []):
            help_text += f" (default: {default})"
        name = f"--{flag(f.name)}"
        if tp is bool:
            parser.add_argument(name, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(tp) is list:
            parser.add_argument(name, dest=f.name, nargs="+", metavar="PATH", default=argparse.SUPPRESS, help=help_text)
        else:
            metavar = {int: "N", float: "X"}.get(tp, "VALUE")
            parser.add_argument(name, dest=f.name, metavar=metavar, default=argparse.SUPPRESS, help=help_text)


def register(sub: argparse._SubParsersAction) -> None:
    for name, stage in stage_registry().items():
        p = sub.add_parser(name, help=stage.help, description=stage.help)
        p.add_argument("--config", metavar="FILE", default=None, help="JSON file of options; flags override it")
        if name == "pretrain":
            phased = [r for r in shipped_recipes() if "phases" in read_recipe(r)[0]]
            p.add_argument("--recipe", metavar="FILE", default=None,
                           help="run the phases of a multi-phase pretraining recipe (JSON) in --out; flags override "
                                f"its options. Shipped: {', '.join(phased)}")
            p.add_argument("--data-root", metavar="DIR", default=None,
                           help="--recipe: where its relative data paths start (default: the recipe file's folder)")
        add_config_flags(p, stage.config_class)
        p.set_defaults(func=cmd_train, stage_name=name)
    _register_quickstart(sub)
    p = sub.add_parser("plot", help="write loss and learning-rate curves (PNG) of a run directory")
    p.add_argument("run_dir", help="a training run directory (holds metrics.jsonl)")
    p.set_defaults(func=cmd_plot)


def _register_quickstart(sub: argparse._SubParsersAction) -> None:
    plan = read_recipe("quickstart")[0]
    q = sub.add_parser("quickstart", help="the demo: pretrain `tiny` on the embedded data, SFT it, chat with it")
    q.add_argument("--out", default="runs/quickstart",
                   help="output directory (default: runs/quickstart under the current directory)")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    q.add_argument("--minutes", type=float, default=plan["minutes"],
                   help=f"time budget: step counts are sized from a short speed probe (default: {plan['minutes']:g})")
    q.add_argument("--pretrain-steps", type=int, default=None, help="override the pretraining budget")
    q.add_argument("--sft-steps", type=int, default=None, help="override the SFT budget")
    q.add_argument("--force", action="store_true", help="start over if --out already holds a quickstart run")
    q.add_argument("--full", action="store_true",
                   help="continue after SFT with DPO -> reasoning -> GRPO, each from the previous checkpoint "
                        "(adds about 8 minutes on a laptop CPU)")
    q.add_argument("--posttrain-steps", type=int, default=None,
                   help="with --full: override the step budget of every post-training stage")
    q.add_argument("--eval-limit", type=int, default=None,
                   help="demo eval at the end (with --full: after every stage) on the first N items of each "
                        f"suite and N questions per MCQ subject; 0 skips it (default: {plan['eval_limit']})")
    q.set_defaults(func=cmd_quickstart)


def config_from_args(stage_cls, args: argparse.Namespace):
    return load_config(stage_cls.config_class, args.config, _overrides(stage_cls, args))


def _overrides(stage_cls, args: argparse.Namespace) -> dict:
    """The config options given as flags (unset flags are absent: argparse.SUPPRESS)."""
    names = {f.name for f in dataclasses.fields(stage_cls.config_class)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_train(args: argparse.Namespace) -> int:
    stage_cls = get_stage(args.stage_name)
    overrides = _overrides(stage_cls, args)
    if getattr(args, "recipe", None):
        if args.config or "data" in overrides:
            raise UserError("--recipe names the data and options of every phase; drop --config / --data")
        run_recipe(args.recipe, overrides, data_root=args.data_root)
        return 0
    if getattr(args, "data_root", None):
        raise UserError("--data-root only applies with --recipe")
    result = run_stage(args.stage_name, args.config, reuse=False, **overrides)
    if result is not None and is_main_process():
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        val = f", val loss {result.val_loss:.4f}" if result.val_loss is not None else ""
        print(f"done: {result.step} steps, train loss {loss}{val}; checkpoint {result.checkpoint}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir):
        print(f"wrote {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    pick_device(args.device)  # a bad or absent device fails now, not after the data is prepared
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise UserError(f"--minutes must be a positive number, got {args.minutes}")
    for name in ("pretrain_steps", "sft_steps", "posttrain_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.eval_limit is not None and args.eval_limit < 0:
        raise UserError(f"--eval-limit must be 0 (no demo eval) or more, got {args.eval_limit}")
    quickstart(args.out, device=args.device, pretrain_steps=args.pretrain_steps, sft_steps=args.sft_steps,
               force=args.force, minutes=args.minutes, full=args.full, posttrain_steps=args.posttrain_steps,
               eval_limit=args.eval_limit)
    return 0
