"""The `minimind` entry point itself: quiet on a closed pipe, OpenMP threads spin only briefly."""

import io
import os
import subprocess
import sys

from minimind.cli import main


class ClosedPipe(io.TextIOWrapper):
    """stdout whose reader has gone away (`minimind model list | head -1` after head exits)."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_pipe_is_not_a_traceback(tmp_path, monkeypatch):
    with open(tmp_path / "out", "wb") as raw:
        monkeypatch.setattr(sys, "stdout", ClosedPipe(raw))
        assert main(["model", "list"]) == 141  # 128 + SIGPIPE, as a shell reports it


def test_openmp_spins_briefly_unless_the_user_says_otherwise():
    code = ("import os; from minimind.cli import main; main(['model', 'list']); "
            "print(os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def spincount(**extra):
        run = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             check=True)
        return run.stdout.splitlines()[-1]

    assert spincount() == "2000"
    assert spincount(GOMP_SPINCOUNT="50") == "50"
    assert spincount(OMP_WAIT_POLICY="ACTIVE") == "None"  # the user's policy decides


def test_each_command_is_built_from_the_module_that_defines_it():
    # COMMANDS says which module to import for a command line; a stale entry would hide the command.
    from minimind.cli import COMMAND_MODULES, COMMANDS, _parser

    for command, module in COMMANDS.items():
        assert command in _parser([module])[1], (command, module)
    everything = _parser(COMMAND_MODULES)[1]
    assert set(COMMANDS) < everything
    stages = everything - set(COMMANDS)  # every other command comes from the training module
    assert {"pretrain", "sft", "quickstart", "plot"} <= stages == _parser(["train_cmds"])[1]


def test_help_lists_every_command_and_a_typo_is_reported_among_them(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_help:
        main(["--help"])
    listed = capsys.readouterr().out
    assert exit_help.value.code == 0
    assert all(f"    {name} " in listed or f"    {name}\n" in listed for name in ("model", "data", "pretrain", "serve", "bench"))
    with pytest.raises(SystemExit) as exit_typo:
        main(["dta"])
    err = capsys.readouterr().err
    assert exit_typo.value.code == 2 and "invalid choice: 'dta'" in err and "'serve'" in err and "'sft'" in err


def test_data_commands_never_import_torch(tmp_path):
    # `data prepare` workers are forked from this process: torch would cost each run ~1.5 s and
    # the workers ~400 MiB (docs/benchmarks.md). Only the data command's module is imported.
    code = (f"import sys; from minimind.cli import main; assert main(['data', 'demo', '--out', {str(tmp_path)!r}]) == 0; "
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.splitlines()[-1] == "False"
