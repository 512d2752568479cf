"""Recipe files: training plans as data, not code. The shipped ones live beside this module.

    quickstart.json        the `minimind quickstart` plan: stages, options, budget shares, step bounds
    pretrain_3phase.json   `minimind pretrain --recipe pretrain_3phase`: general -> long context ->
                           anneal on a high-quality mixture, sized for the demo data

Contract: `read_recipe(name_or_path) -> (recipe, folder)` reads a JSON recipe file, or the name of a
shipped one (no suffix, no such file in the working directory); `folder` is where the recipe's
relative paths start: the file's own folder, or None for a shipped recipe (whose data paths the
user places with `--data-root`). Only the standard library is imported: the CLI reads recipes
while it builds its parser. What the keys mean is up to the runner: `train/phases.py` (phases of
one pretraining run) and `train/quickstart.py` (a chain of stages).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError

SHIPPED = Path(__file__).resolve().parent


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.json"))


def read_recipe(name_or_path: str | Path) -> tuple[dict[str, Any], Path | None]:
    """A recipe as a dict and the folder its relative paths start from (see the module docstring)."""
    path, folder = Path(name_or_path), None
    if path.is_file() or path.suffix:
        folder = path.resolve().parent
    else:
        path = SHIPPED / f"{name_or_path}.json"
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--recipe {name_or_path}: no such file (shipped recipes: {', '.join(shipped_recipes())})") from None
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise UserError(f"--recipe {path}: not a readable JSON file ({err})") from None
    if not isinstance(recipe, dict):
        raise UserError(f"--recipe {path}: must be a JSON object, got {type(recipe).__name__}")
    return recipe, folder
