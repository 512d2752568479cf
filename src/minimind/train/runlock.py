"""An exclusive lock on a run directory: two runs never write into the same `--out`.

Contract:
- `RunLock(run_dir)` (a context manager, or `acquire()` / `release()`) creates the directory if
  needed and takes an exclusive, non-blocking `flock` on `RUN_DIR/.lock`. If another process
  holds it, `acquire` raises `RunInUse` (a `UserError`) naming that process: pid, host, start
  time and command line, read from the lock file.
- The lock is the kernel's, not the file's: the kernel drops it when the holding process exits,
  however it exits (kill -9 included). A lock left by a dead process is therefore recognised as
  stale by construction, without guessing from pids (which get reused). The file itself stays in
  the run directory; its text only describes the last holder.
- Locks belong to open files, not processes: a second `RunLock` on a held directory is refused
  within one process too. POSIX only (`fcntl`); on Linux, NFS clients share `flock` locks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from ..errors import UserError

LOCK_NAME = ".lock"


class RunInUse(UserError):
    """Another live process holds the run directory's lock."""


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"--out {self.run_dir} is a file, not a directory; choose another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(self.path)
            os.close(fd)
            raise RunInUse(f"{self.run_dir} is in use by another run ({holder}); wait for it to finish, "
                           "or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                 "command": " ".join(sys.argv)}).encode() + b"\n")
        self._fd = fd
        return self

    def release(self) -> None:
        """Closing the file drops the lock; the file stays (deleting it would race a new holder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _describe(path: Path) -> str:
    """'pid 123 on host h since ..., `minimind pretrain ...`' from the lock file, as far as readable."""
    try:
        info = json.loads(path.read_text())
        text = f"pid {info['pid']} on {info['host']} since {info['since']}"
        return text + (f": `{info['command']}`" if info.get("command") else "")
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written its details yet
        return f"see {path}"
