"""The import graph of `minimind`: no cycles, the layering of docs/architecture.md, imports at the top.

A small AST walk over src/minimind (no import is executed, so nothing is hidden by laziness):
- (a) no cycle between modules through the imports that run when a module is imported (its
  module-level ones; those under `if TYPE_CHECKING:` never run: they name a type for annotations);
- (b) every import -- module-level or not -- goes from a layer to one that LAYERS allows it; the
  same table is the "Layers" table of docs/architecture.md, and a test keeps the two equal;
- (c) no import inside a function, except of a heavy optional dependency (OPTIONAL) and in the
  few lazy facades (LAZY_MODULES), each with its reason. KNOWN_LATE_IMPORTS lists the remaining
  offenders: it may only shrink, and an entry that no longer occurs must be removed.
The checker itself is tested on a synthetic package that has a cycle, a layering violation and a
late import, so these tests can fail.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# The shared base: modules every layer above them may use.
BASE = {"errors", "config", "devices", "fsutil", "locator"}

# layer -> the layers it may import. A layer is a top-level module or subpackage of minimind;
# "minimind" is the package facade (src/minimind/__init__.py). Mirrors docs/architecture.md.
LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "fast_bpe": set(),
    "tools": set(),
    "config": {"errors"},
    "devices": {"errors"},
    "tokenizer": {"errors", "fast_bpe"},
    "locator": {"errors", "tokenizer"},
    "fsutil": {"errors", "locator"},
    "shapes": {"errors", "config"},
    "recipes": {"errors"},
    "model": {"errors", "config"},
    "chat": {"errors", "tokenizer"},
    "tokenizer_train": {"errors", "tokenizer", "chat"},
    "checkpoint": BASE | {"tokenizer", "model"},
    "interop": BASE | {"tokenizer", "model", "checkpoint"},
    "upstream": BASE | {"tokenizer", "model", "checkpoint"},
    "gguf": BASE | {"tokenizer", "model", "checkpoint", "interop"},
    "minimind": BASE | {"model", "checkpoint", "interop", "upstream"},
    "data": BASE | {"tokenizer", "chat", "tools"},
    "infer": BASE | {"tokenizer", "chat", "model", "checkpoint", "minimind"},
    "agent": BASE | {"tokenizer", "chat", "tools", "infer"},
    "eval": BASE | {"tokenizer", "chat", "tools", "checkpoint", "data", "infer", "agent"},
    "train": BASE | {"shapes", "recipes", "tokenizer", "chat", "tools", "model", "checkpoint", "minimind", "data",
                     "infer", "agent", "eval"},
    "serve": BASE | {"tokenizer", "chat", "tools", "infer", "agent"},
    "bench": BASE | {"tokenizer", "chat", "model", "checkpoint", "interop", "data", "infer", "train"},
    "cli": BASE | {"shapes", "recipes", "tokenizer", "tokenizer_train", "chat", "tools", "model", "checkpoint",
                   "interop", "upstream", "gguf", "data", "infer", "agent", "eval", "train", "serve", "bench"},
    "__main__": {"cli"},
}

# Heavy optional dependencies (or heavy, rarely needed parts of torch) that a function may import
# when it needs them: a prefix of the imported module's dotted name, and why it waits.
OPTIONAL = {
    "transformers": "optional (hf extra); seconds to import",
    "matplotlib": "plots only",
    "tensorboard": "optional (logging extra)",
    "torch.utils.tensorboard": "optional (logging extra)",
    "wandb": "optional (logging extra)",
    "lm_eval": "optional evaluation harness",
    "gguf": "optional (gguf extra), export only",
    "llama_cpp": "optional, GGUF checks only",
    "openai": "optional client",
    "uvicorn": "only `minimind serve` runs a server",
    "datasketch": "near-duplicate search of `data clean` only",
    "pyarrow": "optional (parquet extra)",
    "httpx": "benchmark client only",
    "tqdm": "progress bars only",
    "tiktoken": "optional fast BPE path",
    "torch.distributed.checkpoint": "multi-process runs only; ~0.6 s of start-up otherwise",
    "torch.distributed.fsdp": "multi-process runs only",
}

# Modules whose functions may import (or importlib.import_module) modules of minimind: lazy
# facades that keep a cheap entry point cheap.
LAZY_MODULES = {
    "minimind": "`import minimind` stays torch-free: every data worker process imports it",
    "minimind.cli": "imports only the module of the command that runs: `data prepare` never loads torch",
    "minimind.eval": "PEP 562 attributes: `minimind.eval.answers` (GRPO rewards) imports no torch",
    "minimind.train.stages": "the stage registry imports every stage module of its package (plugins)",
}

# (module, imported module) pairs still imported inside a function that should not be, in files
# being reworked at the time of writing. This list only shrinks: a new late import fails
# test_imports_are_at_the_top, and an entry that no longer occurs fails
# test_known_late_imports_are_current (delete it).
KNOWN_LATE_IMPORTS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "minimind.serve.app"
    target: str  # the imported module (a module of the tree when it is one), e.g. "minimind.infer"
    line: int
    in_function: bool
    type_only: bool = False  # under `if TYPE_CHECKING:`


def find_modules(src: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__), for every .py file of `package`."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


class _Walker(ast.NodeVisitor):
    """Collects imports, noting whether each one sits inside a function."""

    def __init__(self, module: str, is_pkg: bool, modules: dict) -> None:
        self.module, self.is_pkg, self.modules = module, is_pkg, modules
        self.depth, self.found, self.type_only = 0, [], False

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)) != "TYPE_CHECKING":
            self.generic_visit(node)
            return
        self.type_only = True
        for child in node.body:
            self.visit(child)
        self.type_only = False
        for child in node.orelse:
            self.visit(child)

    def _add(self, target: str, node: ast.AST) -> None:
        self.found.append(Import(self.module, target, node.lineno, self.depth > 0, self.type_only))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the package of this module, `level - 1` packages up
            pkg = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            pkg = pkg[:len(pkg) - node.level + 1]
            base = ".".join(pkg + ([node.module] if node.module else []))
        for alias in node.names:  # `from pkg import sub` imports the submodule when there is one
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module(...) and __import__(...): an import whose target is computed.
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__"):
            self._add("<dynamic>", node)
        self.generic_visit(node)


def find_imports(src: Path, package: str) -> list[Import]:
    modules = find_modules(src, package)
    out = []
    for name, (path, is_pkg) in modules.items():
        walker = _Walker(name, is_pkg, modules)
        walker.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        out += walker.found
    return out


def cycles(imports: list[Import], package: str) -> list[list[str]]:
    """Strongly connected groups (of two or more modules) of the graph of imports that run at import."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        runs = not (imp.in_function or imp.type_only)
        if runs and imp.target.split(".")[0] == package and imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layering_violations(imports: list[Import], package: str, layers: dict[str, set[str]]) -> list[str]:
    out = []
    for imp in imports:
        if imp.target.split(".")[0] != package:
            continue
        src, dst = layer_of(imp.source), layer_of(imp.target)
        if src not in layers:
            out.append(f"{imp.source}: layer {src!r} is not in the layering table")
        elif src != dst and dst not in layers[src]:
            out.append(f"{imp.source}:{imp.line} imports {imp.target} ({src} may not import {dst})")
    return sorted(set(out))


def late_imports(imports: list[Import], package: str, optional=OPTIONAL, lazy=LAZY_MODULES) -> set[tuple[str, str]]:
    """(module, target) of every import inside a function that no rule allows."""
    def allowed(imp: Import) -> bool:
        if any(imp.target == p or imp.target.startswith(p + ".") for p in optional):
            return True
        return imp.source in lazy and (imp.target == "<dynamic>" or imp.target.split(".")[0] == package)

    return {(imp.source, imp.target) for imp in imports if imp.in_function and not allowed(imp)}


# -- the package --------------------------------------------------------------------------------------

IMPORTS = find_imports(SRC, "minimind")


def test_no_import_cycles():
    assert cycles(IMPORTS, "minimind") == []


def test_every_import_follows_the_layering():
    assert layering_violations(IMPORTS, "minimind", LAYERS) == []


def test_imports_are_at_the_top():
    new = late_imports(IMPORTS, "minimind") - KNOWN_LATE_IMPORTS
    assert not new, ("import inside a function (move it to the top of the module, or add a heavy optional "
                     f"dependency to OPTIONAL with its reason): {sorted(new)}")


def test_known_late_imports_are_current():
    gone = KNOWN_LATE_IMPORTS - late_imports(IMPORTS, "minimind")
    assert not gone, f"fixed, remove from KNOWN_LATE_IMPORTS: {sorted(gone)}"


def doc_layers(text: str) -> dict[str, set[str]]:
    """The "| `layer` | `a`, `b` | ... |" rows of the layering table in docs/architecture.md."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`[\w.]+`", cells[0]):
            out[cells[0].strip("`")] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return out


def test_architecture_doc_states_the_same_layers():
    doc = doc_layers((REPO / "docs" / "architecture.md").read_text(encoding="utf-8"))
    assert doc == LAYERS


# -- the checker can fail -----------------------------------------------------------------------------

def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_checker_finds_a_cycle_a_layering_violation_and_late_imports(tmp_path):
    write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",                       # a -> b -> c -> a: one cycle
        "pkg/b.py": "from .c import thing\n",
        "pkg/c.py": "import pkg.a\n",
        "pkg/d.py": "def f():\n    from . import a\n",        # late, so not part of a cycle
        "pkg/e.py": "from . import f\n",                       # e <-> f only for annotations: no cycle
        "pkg/f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import e\n",
        "pkg/model/__init__.py": "",
        "pkg/model/core.py": ("from ..serve.app import run\n"  # the model reaching up into serving
                              "\n\ndef g():\n    from .. import a\n"),  # late, but still against the layering
        "pkg/serve/__init__.py": "",
        "pkg/serve/app.py": ("import json\n\n\ndef run():\n"
                             "    import tqdm\n    import json\n    from ..model.core import x\n"
                             "    import importlib; importlib.import_module('pkg.a')\n"),
    })
    imports = find_imports(tmp_path, "pkg")
    assert cycles(imports, "pkg") == [["pkg.a", "pkg.b", "pkg.c"]]
    layers = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "model": set(),
              "serve": {"model"}}
    assert layering_violations(imports, "pkg", layers) == [
        "pkg.model.core:1 imports pkg.serve.app (model may not import serve)",
        "pkg.model.core:5 imports pkg.a (model may not import a)"]
    assert late_imports(imports, "pkg", optional={"tqdm": ""}, lazy={}) == {
        ("pkg.d", "pkg.a"), ("pkg.model.core", "pkg.a"), ("pkg.serve.app", "json"), ("pkg.serve.app", "pkg.model.core"),
        ("pkg.serve.app", "<dynamic>"), ("pkg.serve.app", "importlib")}
    assert late_imports(imports, "pkg", optional={"tqdm": ""}, lazy={"pkg.serve.app": ""}) == {
        ("pkg.serve.app", "json"), ("pkg.serve.app", "importlib"), ("pkg.d", "pkg.a"), ("pkg.model.core", "pkg.a")}


def test_checker_flags_a_layer_missing_from_the_table(tmp_path):
    write(tmp_path, {"pkg/__init__.py": "", "pkg/new.py": "from . import old\n", "pkg/old.py": ""})
    assert layering_violations(find_imports(tmp_path, "pkg"), "pkg", {"old": set()}) == [
        "pkg.new: layer 'new' is not in the layering table"]


def test_doc_table_parser_reads_rows():
    text = "| layer | may import | what |\n|---|---|---|\n| `model` | `config`, `errors` | the net |\n| `errors` | — | x |\n"
    assert doc_layers(text) == {"model": {"config", "errors"}, "errors": set()}


def real_layers(imports: list[Import], package: str) -> dict[str, set[str]]:
    """layer -> the layers it imports today (module-level or not): the arrows of docs/architecture.md."""
    out: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target.split(".")[0] == package and layer_of(imp.source) != layer_of(imp.target):
            out.setdefault(layer_of(imp.source), set()).add(layer_of(imp.target))
    return out


if __name__ == "__main__":  # print today's arrows, to check docs/architecture.md by hand
    real = real_layers(IMPORTS, "minimind")
    for name in LAYERS:
        print(f"{name:<16} <- {', '.join(sorted(real.get(name, ()))) or '-'}"
              f"{'   (may also: ' + ', '.join(sorted(LAYERS[name] - real.get(name, set()))) + ')' if LAYERS[name] - real.get(name, set()) else ''}")
