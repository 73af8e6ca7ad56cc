"""Show that a re-wrapping changed no behaviour: the AST of every changed .py file against a base ref.

    python tools/ast_same.py [BASE]        # BASE defaults to main; run from the repository root

For each .py file that differs from BASE (in the working tree), `ast.dump` of the old and new text is
compared. Adjacent string literals are folded by the parser and parentheses leave no trace, so pure
re-wrapping gives an identical AST. A file that differs is classed, from the narrowest difference up:
docstring whitespace only; docstring whitespace plus '#' or '\\' (a continued example comment or shell line
inside a docstring); whitespace inside other string literals (code held in a string, run in a subprocess or
a browser); otherwise DIFFERENT. Exit status 1 when any file is DIFFERENT.
"""

from __future__ import annotations

import ast
import subprocess
import sys

DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _squash(text: str, marks: bool) -> str:
    if marks:
        text = text.replace("#", " ").replace("\\", " ")
    return " ".join(text.split())


def _dump(src: str, docs: bool = False, marks: bool = False, strings: bool = False) -> str:
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if strings and isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = _squash(node.value, True)
        if docs and isinstance(node, DOC_OWNERS) and node.body and isinstance(node.body[0], ast.Expr):
            doc = node.body[0].value
            if isinstance(doc, ast.Constant) and isinstance(doc.value, str):
                doc.value = _squash(doc.value, marks)
    return ast.dump(tree)


LEVELS = [("identical AST", {}),
          ("docstring whitespace only", {"docs": True}),
          ("docstring whitespace plus '#'/'\\'", {"docs": True, "marks": True}),
          ("whitespace inside string literals", {"strings": True})]


def main() -> int:
    base = sys.argv[1] if len(sys.argv) > 1 else "main"
    files = subprocess.run(["git", "diff", "--name-only", "--diff-filter=M", base, "--", "*.py"],
                           capture_output=True, text=True, check=True).stdout.split()
    classes: dict[str, list[str]] = {name: [] for name, _ in LEVELS}
    classes["DIFFERENT"] = []
    for f in files:
        old = subprocess.run(["git", "show", f"{base}:{f}"], capture_output=True, text=True,
                             check=True).stdout
        with open(f) as fh:
            new = fh.read()
        name = next((n for n, kw in LEVELS if _dump(old, **kw) == _dump(new, **kw)), "DIFFERENT")
        classes[name].append(f)
    print(f"{len(files)} changed .py files against {base}: "
          + ", ".join(f"{len(v)} {k}" for k, v in classes.items()))
    for name, fs in list(classes.items())[1:]:
        for f in fs:
            print(f"  {name}: {f}")
    return 1 if classes["DIFFERENT"] else 0


if __name__ == "__main__":
    sys.exit(main())
