"""The package's folders are the stages a tick travels, and imports point down them only; the tests'
folders mirror them."""

import ast
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PACKAGE = ROOT / "agent" / "flopwatch"

# Lowest first: a module may import its own stage and those before it, never one after.
STAGES = ("shared", "sources", "judge", "history", "outputs", "daemon", "commands")
SHARED = {"flopwatch", "flopwatch.model", "flopwatch.config", "flopwatch.thresholds", "flopwatch.httpbase",
          "flopwatch.client"}


def stage(module: str) -> str:
    if module in SHARED:
        return "shared"
    if module == "flopwatch.daemon":
        return "daemon"
    if module == "flopwatch.__main__":
        return "commands"  # `python -m flopwatch` is the CLI
    return module.split(".")[1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "podresources_v1" in parts or "versions" in parts:
            continue  # generated stubs and migration scripts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("flopwatch")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("flopwatch"):
                out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return out


MODULES = modules()


def test_every_module_belongs_to_a_stage():
    assert {stage(m) for m in MODULES} <= set(STAGES)


def test_imports_point_down_the_stages_only():
    upward = []
    for name, path in MODULES.items():
        for target in imports(name, path):
            if target not in MODULES:
                continue
            if STAGES.index(stage(target)) > STAGES.index(stage(name)):
                upward.append(f"{name} ({stage(name)}) imports {target} ({stage(target)})")
    assert upward == []


def test_the_top_level_holds_only_what_every_stage_shares():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "model", "config", "thresholds", "httpbase", "client", "daemon"}


def test_each_stage_says_what_it_owns_and_may_import():
    for folder in ("sources", "judge", "history", "outputs", "commands"):
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert doc and "import" in doc, folder


def test_the_tests_folders_are_the_stages_then_the_suites_of_the_whole_product():
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    # faults/ and gpu/ run the whole agent; servers/ and stacks/ are what tests start and read.
    assert folders == {"sources", "judge", "history", "outputs", "commands", "faults", "gpu", "servers", "stacks"}


def test_the_servers_that_benchmarks_start_import_without_pytest():
    probe = ("import sys, common, tests.servers.kubelet, tests.servers.postgres, tests.servers.prometheus; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "bench")})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"
