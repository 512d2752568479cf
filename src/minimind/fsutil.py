"""Writing output folders safely: refuse what is not ours to replace, swap the new one in atomically.

Contract:
- `owned_kind(folder)` says whether a folder is one of MiniMind's own (a model checkpoint, a LoRA
  adapter, a trainer checkpoint, a run directory or its `checkpoints/` folder), by the files that
  only we write there (`OWN_MARKERS`). Such folders hold finished work: tools that *write* a new
  folder (`export hf`, `import hf`) never write into one, not even with --force.
- `replace_dir(target, force=...)` is a context manager that yields an empty temporary folder
  beside `target`; when the block succeeds the temporary folder is renamed to `target` (an
  existing one is moved aside first and deleted only after the rename). If the block raises, or
  the process is killed, `target` is untouched: it holds the old folder or the new one, never a
  half-written mix, and never files of a different model beside ours.
- A non-empty `target` is refused unless `force`; even then only a *flat* folder (no sub-folders)
  is replaced, so a mistyped `--out ~` or `--out runs/` can never wipe a tree of work.
- Temporary folders of killed processes (`.NAME.tmp-PID`, `.NAME.old-PID`) are cleaned on the next
  call; an interrupted swap (target gone, `.old` still there) is undone.
- `pid_alive(pid)` tells stale temporary files of dead processes from those of live ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UserError
from .locator import ADAPTER_CONFIG, CHECKPOINTS, CONFIG_NAME, LATEST, METRICS, STATE_JSON, TRAIN_CONFIG

# A file or folder that only MiniMind writes (the layout `minimind.locator` draws) -> what its
# presence makes the folder.
OWN_MARKERS = {
    CONFIG_NAME: "a MiniMind checkpoint",
    ADAPTER_CONFIG: "a MiniMind LoRA adapter checkpoint",
    STATE_JSON: "a MiniMind trainer checkpoint",
    TRAIN_CONFIG: "a MiniMind run directory",
    METRICS: "a MiniMind run directory",
    CHECKPOINTS: "a MiniMind run directory",
    LATEST: "the checkpoints folder of a MiniMind run",
}


def owned_kind(folder: str | Path) -> str | None:
    """What MiniMind folder this is ("a MiniMind checkpoint", ...), or None for any other folder."""
    folder = Path(folder)
    for name, kind in OWN_MARKERS.items():
        if (folder / name).exists():
            return kind
    return None


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def check_output_dir(target: str | Path, force: bool = False, sources: Iterable[str | Path] = ()) -> None:
    """Raise UserError unless `replace_dir(target, force)` may write there; see the module contract."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: is a file, not a folder; choose a folder for the output")
    resolved = target.resolve()
    for src in sources:
        src_res = Path(src).resolve()
        if resolved == src_res or resolved in src_res.parents:
            raise UserError(f"{target}: the output would replace its own input {src}; choose another folder")
    if not target.is_dir():
        return
    kind = owned_kind(target)
    if kind is not None:
        raise UserError(f"{target} is {kind}; it is never overwritten, not even with --force "
                        f"(choose a new folder)")
    entries = sorted(target.iterdir())
    if not entries:
        return
    if not force:
        raise UserError(f"{target} is not empty; choose a new folder or pass --force to replace it")
    folders = [e.name for e in entries if e.is_dir()]
    if folders:
        raise UserError(f"{target} holds sub-folders ({', '.join(folders[:3])}); --force only replaces a "
                        f"folder of files, remove it yourself if you mean it")


def _clean_stale(target: Path) -> None:
    """Remove temporary folders of dead processes; undo a swap killed between its two renames."""
    for tmp in target.parent.iterdir():
        stem, _, pid = tmp.name.rpartition("-")
        if not pid.isdigit() or stem not in (f".{target.name}.tmp", f".{target.name}.old") or pid_alive(int(pid)):
            continue
        if stem.endswith(".old") and not target.exists():
            os.rename(tmp, target)  # the new folder never arrived: put the old one back
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def replace_dir(target: str | Path, force: bool = False, sources: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes `target` in one rename."""
    absolute = Path(target).absolute()
    if absolute.parent.is_dir():
        _clean_stale(absolute)  # first: an undone swap brings back a folder the check must see
    check_output_dir(target, force, sources)  # messages name the path as the user gave it
    target = absolute
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.is_dir():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
