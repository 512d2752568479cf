"""The `minimind` command line: one entry point, one subcommand per job.

Contract: each `*_cmds` module in this package exposes `register(subparsers)`, which adds its
subcommands and sets `func` on their parsers; `main` dispatches to `func(args)`, whose return
value is the exit status. Command modules import what their commands run at the top, so `main`
imports only the module of the command being run (COMMANDS): `minimind data prepare` never loads
torch. A command line whose first word is not in COMMANDS (`--help`, a training stage, a typo)
gets the parser of every module. A `UserError` (bad flag, file or record) is printed as
`error: ...` with exit status 2, never as a traceback. So is an OS error about the machine or a
path the user gave (a full disk, a forbidden or read-only folder, a file where a folder belongs):
`error: <reason>: <path>`. Any other exception -- a bug -- keeps its traceback, and
MINIMIND_TRACEBACK=1 shows the traceback of OS errors too.
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import os
import sys

from ..errors import UserError

# OS errors that describe the machine or the user's paths, not our code. Whatever was finished
# before them is already on disk (checkpoints and outputs are written by rename), so a one-line
# report loses nothing; other errnos (EBADF, EINVAL, ...) point at bugs and keep their traceback.
USER_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
    errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY, errno.ENAMETOOLONG, errno.ELOOP,
    errno.EMFILE, errno.ENFILE, errno.EIO, errno.EXDEV,
})

# Order = order in `minimind --help`.
COMMAND_MODULES = ("model_cmds", "tokenizer_cmds", "data_cmds", "train_cmds", "infer_cmds", "eval_cmds", "bench_cmds")

# The module that defines each command. Importing a command module imports what its commands
# run: torch for most, but not for the data and tokenizer commands, whose start-up (and the memory
# of every `data prepare` worker) would otherwise carry torch's ~1.5 s and ~400 MiB
# (docs/benchmarks.md). Any other word is a training stage, `quickstart` or `plot` (train_cmds
# generates them from the stage registry), or else a mistake that the full parser reports.
COMMANDS = {
    "model": "model_cmds", "export": "model_cmds", "import": "model_cmds", "tokenizer": "tokenizer_cmds",
    "data": "data_cmds", "generate": "infer_cmds", "chat": "infer_cmds", "serve": "infer_cmds",
    "eval": "eval_cmds", "bench": "bench_cmds",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for a command line that starts with `command`: its module's commands, or all."""
    if command is not None and not command.startswith("-"):
        parser, known = _parser([COMMANDS.get(command, "train_cmds")])
        if command in known:
            return parser
    return _parser(COMMAND_MODULES)[0]  # `--help`, no command, or a mistake: list every command


def _parser(modules: list[str] | tuple[str, ...]) -> tuple[argparse.ArgumentParser, set[str]]:
    parser = argparse.ArgumentParser(
        prog="minimind", description="Train, fine-tune, chat with, serve and export small language models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in modules:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser, set(sub.choices)


def main(argv: list[str] | None = None) -> int:
    # While an OpenMP thread waits for its siblings it spins (libgomp: 300,000 spins) before it
    # sleeps. On a CPU that other processes also use, spinning threads steal the cores the working
    # ones need. A short spin keeps nearly all of the idle-machine speed and most of the shared-
    # machine speed (2 cores, `tiny` training step / `small` batch-16 decoding, tokens/s):
    #   default spin: idle 3,750 / 640-730, one core busy 1,530
    #   2,000 spins:  idle ~3,700 / 620-630, one core busy 2,000
    #   no spinning (OMP_WAIT_POLICY=PASSIVE): idle ~3,600 / 410-440, one core busy 2,150
    # It must be set before torch loads OpenMP, i.e. here; a value the user chose wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "2000")
    from_process = argv is None  # a real `minimind ...` process, not a test calling main([...])
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    if from_process:
        # What the imports created (torch alone: ~170k objects) lives until exit. Freezing it moves it
        # out of the cyclic collector's reach, so the full collections during the run and the one at
        # exit skip it: 0.4-0.9 s CPU of a short training run (docs/benchmarks.md, start-up).
        gc.freeze()
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`minimind model list | head`): nothing to report. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        if err.errno not in USER_ERRNOS or os.environ.get("MINIMIND_TRACEBACK"):
            raise
        two = f" -> {err.filename2}" if err.filename2 is not None else ""
        where = f": {err.filename}{two}" if err.filename is not None else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
