"""The layering of norga's packages and the size of its modules, as docs/architecture.md states them.

The engine (norga/engine) runs any learner through the learner contract: it imports no method, no config
schema, and nothing that imports either, and names no method or backbone. Modules stay small (about 400
lines).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "norga"
LINE_LIMIT = 420  # "about 400": a module past it is split by concern
# What the engine must not reach: the methods, and the schemas that import them.
ABOVE_THE_ENGINE = ("norga.methods", "norga.config", "norga.runner", "norga.preflight", "norga.report")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The norga modules ``name`` imports, anywhere in its body (function-level imports too)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(t for t in targets if t in MODULES)
    return found


def reachable(start: str) -> dict[str, str]:
    """Every norga module ``start`` imports, directly or through others: module -> the module importing it."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        here = todo.pop()
        for other in imports_of(here):
            parents = [".".join(other.split(".")[:i]) for i in range(2, other.count(".") + 1)]
            for target in (*parents, other):  # importing a.b.c runs a.b's __init__ first
                if target in MODULES and target not in seen and target != start:
                    seen[target] = here
                    todo.append(target)
    return seen


def test_the_engine_imports_no_method_and_nothing_that_imports_one():
    engine = [name for name in MODULES if name == "norga.engine" or name.startswith("norga.engine.")]
    assert len(engine) > 10, "the engine's modules were not found"
    problems = []
    for name in engine:
        chain = reachable(name)
        for target, via in chain.items():
            if target.startswith(ABOVE_THE_ENGINE):
                problems.append(f"{name} reaches {target} (imported by {via})")
    assert not problems, "\n".join(problems)


def test_the_import_walk_sees_an_import_that_runs_up_the_layers():
    """The walk itself: a module that imports the schemas reaches the methods through them."""
    assert "norga.methods.schemas" in reachable("norga.config")
    assert "norga.config" in reachable("norga.runner")


def test_the_engine_names_no_method_and_no_backbone():
    names = {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")} | {
        p.stem for p in (ROOT / "conf" / "backbone").glob("*.yaml")}
    names -= {"norga"}  # also the package's name
    names |= {"hide-prompt", "s-prompt", "coda-prompt", "pre_tap"}
    assert {"l2p", "hide", "tiny"} <= names
    word = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(names))) + r")(?![\w-])", re.I)
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in sorted((PACKAGE / "engine").rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if word.search(line)]
    assert not found, "\n".join(found)


def test_no_module_is_over_about_400_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    over = {name: n for name, n in sizes.items() if n > LINE_LIMIT}
    assert not over, f"split these by concern (limit {LINE_LIMIT} lines): {over}"


def test_checking_a_config_imports_no_torch():
    """A refused config must be refused in about a second: the modules that compose, validate and preflight a
    run (and print the help page) load neither torch nor torchvision (a second or more to import)."""
    code = ("import sys, norga.config, norga.preflight, norga.help, norga.protocol_defaults; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
