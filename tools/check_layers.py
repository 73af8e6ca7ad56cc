"""The layering check of docs/architecture.md, run by .ci/run (and by tests/test_layers.py):

    python tools/check_layers.py [PACKAGE_DIR]     # default: ctmtool beside this folder
    python tools/check_layers.py --modules         # the module tables of docs/architecture.md

Reads every module's imports with `ast` (top-level and in-function imports alike) and fails (exit 1, one
line per problem) on
- an import cycle among the package's modules;
- an upward import: a module importing a module of a higher layer (LAYERS below, lowest first);
- a module that belongs to no layer (a new top-level module or package must be placed in LAYERS);
- a forbidden import (FORBIDDEN below): the maths (`core/`) imports nothing from `ctmtool.errors` and names no
  `UserError`: it trusts its inputs and raises `ValueError`/`TypeError`; user settings are checked, and
  `UserError`s raised, by the jobs layer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

# lowest first; a module may import its own layer and the layers below it, never one above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation",
     ("errors", "progress", "config", "checkpoint", "integrity", "limits", "device", "kernels")),
    ("maths", ("core", "nets", "losses", "data", "gctm", "metrics")),
    ("jobs", ("jobs", "train", "importers")),
    ("interface", ("cli", "serve", "__main__")),
]

# (importing package, imported module, why): imports that the layers above allow but this project does not
FORBIDDEN: list[tuple[str, str, str]] = [
    ("core", "errors", "the maths raises ValueError/TypeError; user errors (UserError) are the jobs layer's"),
]


def modules(root: Path) -> dict[str, Path]:
    pkg = root.name
    out = {}
    for f in sorted(root.rglob("*.py")):
        name = ".".join((pkg, *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        out[name] = f
    return out


def imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its file (`from pkg import mod` included)."""
    pkg = name.split(".")[0]
    is_init = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                parts = parts[: len(parts) - node.level + (1 if is_init else 0)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith(pkg) and t != pkg:
                found.add(t)
    return found


def names_used(path: Path) -> set[str]:
    """Every identifier a module's code uses (names, attributes, imported names); strings and comments not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.add(node.name.rpartition(".")[2])
            if node.asname:
                found.add(node.asname)
    return found


def forbidden(m: str, targets: set[str], path: Path) -> list[str]:
    """FORBIDDEN imports of module `m`, and a core module that names UserError however it got it."""
    pkg, _, rest = m.partition(".")
    out = []
    for importer, imported, why in FORBIDDEN:
        if rest.split(".")[0] != importer:
            continue
        out += [f"forbidden import: {m} imports {t} ({why})" for t in sorted(targets)
                if t == f"{pkg}.{imported}" or t.startswith(f"{pkg}.{imported}.")]
        if imported == "errors" and "UserError" in names_used(path):
            out.append(f"forbidden name: {m} uses UserError ({why})")
    return out


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) < 2:
        return -1  # the package's own __init__
    for i, (_, members) in enumerate(LAYERS):
        if parts[1] in members:
            return i
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def problems(root: Path) -> list[str]:
    mods = modules(root)
    graph = {m: imports(m, f, mods) for m, f in mods.items()}
    out = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for m in sorted(graph):
        out += forbidden(m, graph[m], mods[m])
        lm = layer_of(m)
        if lm is None:
            out.append(f"{m} belongs to no layer: place it in tools/check_layers.py LAYERS")
            continue
        for t in sorted(graph[m]):
            lt = layer_of(t)
            if lt is not None and lt > lm:
                out.append(f"upward import: {m} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]})")
    return out


def module_table(root: Path) -> str:
    """Markdown: one table per layer, each module with the first paragraph of its docstring."""
    mods, lines = modules(root), []
    for i, (lname, members) in enumerate(LAYERS):
        names = ", ".join(f"`{m}/`" if (root / m).is_dir() else f"`{m}.py`" for m in members)
        lines += ["", f"### {i}. {lname}: {names}", "", "| module | what it is |", "|---|---|"]
        for m, f in mods.items():
            if layer_of(m) != i:
                continue
            doc = " ".join((ast.get_docstring(ast.parse(f.read_text())) or "").split("\n\n")[0].split())
            if len(doc) > 160:
                doc = doc[: doc.rfind(" ", 0, 157)] + " ..."
            lines.append(f"| `{f.relative_to(root.parent).as_posix()}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def main() -> int:
    args = sys.argv[1:]
    root = Path(__file__).resolve().parents[1] / "ctmtool"
    if args[:1] == ["--modules"]:
        print(module_table(root))
        return 0
    root = Path(args[0]) if args else root
    found = problems(root)
    for p in found:
        print(p)
    n = len(modules(root))
    print(f"{n} modules, {len(LAYERS)} layers: " + ("no cycles, no upward or forbidden imports" if not found
                                                     else f"{len(found)} problems"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
