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
