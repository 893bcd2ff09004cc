"""The package's layout keeps its promises: phases import only the phases before them, and every DVC
stage depends on exactly the modules its script runs, so moving or adding an import cannot leave a
stage stale (nor rerun it for a module it never touches).

Imports are read statically (ast), function-level ones included, and `importlib.import_module` with a
literal or f-string name. `python tests/test_layout.py` prints each stage's required source deps.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "cxrgen"
# Each phase may import the ones before it (and the shared modules at the package root), never after.
PHASES = ("data", "features", "modeling", "evaluation", "assistant")
# Modules that shape only error messages, exit codes and log noise, never an output: a stage need not rerun when
# they change, so dvc.yaml does not list them (and must not: the check below is exact).
PLUMBING = {"src/cxrgen/errors.py", "src/cxrgen/stage.py", "src/cxrgen/quiet.py"}


def module_file(name: str) -> Path | None:
    """The file of module `name` (cxrgen.x.y), or None when it is not a module of the package."""
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_modules(package: str) -> set[str]:
    folder = SRC.joinpath(*package.split("."))
    return {module_name(p) for p in folder.rglob("*.py") if p.name != "__init__.py"}


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """cxrgen modules `path` imports, anywhere in the file (module level or inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    own = module_name(path) if PACKAGE in path.parents or path.parent == PACKAGE else None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "cxrgen")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: resolve against this module's package
                assert own is not None, f"{path}: relative import outside the package"
                anchor = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "cxrgen":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                # `from cxrgen.pkg import module` imports the module; `from cxrgen.mod import name` the module
                found.add(sub if module_file(sub) else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and str(arg.value).startswith("cxrgen"):
                found.add(arg.value)
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                prefix = str(arg.values[0].value)
                if prefix.startswith("cxrgen."):   # f"cxrgen.pkg.{name}": any module of that package
                    found.update(_package_modules(prefix.rsplit(".", 1)[0]))
    return frozenset(found)


def closure(script: Path) -> set[Path]:
    """Every package file `script` runs: its cxrgen imports, theirs, and so on.

    A sub-package's __init__.py holds only its docstring and is not counted; the package root's is,
    when code imports a name from it (e.g. `from cxrgen import __version__`).
    """
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in direct_imports(todo.pop()):
            path = module_file(name)
            assert path is not None, f"{name} is imported but is not a module of the package"
            if path not in seen:
                seen.add(path)
                todo.append(path)
    return {p for p in seen if p.name != "__init__.py" or p.parent == PACKAGE}


def stages() -> dict[str, dict]:
    """dvc.yaml's stages, foreach stages expanded (name@item)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        if "foreach" in stage:
            for item in stage["foreach"]:
                text = yaml.safe_dump(stage["do"]).replace("${item}", str(item))
                out[f"{name}@{item}"] = yaml.safe_load(text)
        else:
            out[name] = stage
    return out


def stage_script(stage: dict) -> Path:
    match = re.search(r"stages/\w+\.py", stage["cmd"])
    assert match, f"no stages/*.py in {stage['cmd']!r}"
    return ROOT / match.group(0)


def required_deps(stage: dict) -> set[str]:
    script = stage_script(stage)
    files = {str(script.relative_to(ROOT))} | {str(p.relative_to(ROOT)) for p in closure(script)}
    return files - PLUMBING


def _covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_are_the_modules_it_imports(name: str):
    stage = stages()[name]
    code_deps = [d for d in stage.get("deps", []) if d.startswith(("src/", "stages/"))]
    needed = required_deps(stage)
    missing = sorted(p for p in needed if not any(_covers(d, p) for d in code_deps))
    unused = sorted(d for d in code_deps if not any(_covers(d, p) for p in needed))
    assert not missing, f"stage {name} runs these files but dvc.yaml does not list them as deps: {missing}"
    assert not unused, f"stage {name} lists deps its script never imports: {unused}"


def _phase(name: str) -> int | None:
    """Index of the phase a module belongs to; None for the shared modules at the package root."""
    parts = name.split(".")
    return PHASES.index(parts[1]) if len(parts) > 2 and parts[1] in PHASES else None


def test_every_module_belongs_to_a_phase_or_is_shared():
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        assert len(parts) == 1 or parts[0] in PHASES, f"{path}: not in a phase sub-package ({PHASES})"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_imports_a_later_phase(path: Path):
    own = _phase(module_name(path))
    for name in direct_imports(path):
        other = _phase(name)
        if own is None:
            assert other is None, f"{module_name(path)} is shared (package root) but imports the phase module {name}"
        elif other is not None:
            assert other <= own, (f"{module_name(path)} ({PHASES[own]}) imports {name} ({PHASES[other]}), "
                                  f"a later phase")


def test_phase_packages_say_what_they_hold():
    for phase in PHASES:
        init = PACKAGE / phase / "__init__.py"
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init}: no docstring"
        assert all(isinstance(n, ast.Expr) for n in tree.body), f"{init}: only a docstring belongs here"


def test_the_checker_sees_lazy_and_dynamic_imports(tmp_path: Path):
    """The deps check must not pass for the wrong reason: function-level and importlib imports count."""
    script = tmp_path / "stage.py"
    script.write_text("import importlib\n\ndef main():\n    from cxrgen.modeling.decode import greedy\n"
                      "    importlib.import_module(f'cxrgen.data.sources.{name}')\n")
    found = {str(p.relative_to(ROOT)) for p in closure(script)}
    assert "src/cxrgen/modeling/decode.py" in found
    assert "src/cxrgen/modeling/models.py" in found          # decode imports models
    assert "src/cxrgen/data/sources/torrent.py" in found


if __name__ == "__main__":
    for stage_name, stage_spec in stages().items():
        print(stage_name)
        for dep in sorted(required_deps(stage_spec)):
            print("  -", dep)
    sys.exit(0)
