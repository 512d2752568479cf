"""The `minimind` entry point itself: quiet on a closed pipe, OpenMP told to wait passively."""

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


def test_openmp_waits_passively_unless_the_user_says_otherwise():
    code = "import os; from minimind.cli import main; main(['model', 'list']); print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "ACTIVE"
