"""What the wheel ships stands on its own: it never imports the test suite, and importing
it has no side effects that a caller would have to undo or race against."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# pyproject.toml's [tool.setuptools] packages (tomllib is 3.11+; the project supports 3.10).
PACKAGES: list[str] = re.findall(
    r'"([^"]+)"',
    re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)[1],
)
MAX_LINES = 300


def shipped_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_shipped_packages_are_found():
    assert {"rabbit_serve", "ingress", "consumer", "deployments", "bench"} <= set(PACKAGES)
    assert len(shipped_files()) > len(PACKAGES)


@pytest.mark.parametrize("path", shipped_files(), ids=module_name)
def test_shipped_module_does_not_import_tests(path):
    wrong = {name for name in imported_modules(path) if name.split(".")[0] == "tests"}
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


@pytest.mark.parametrize("path", shipped_files(), ids=module_name)
def test_shipped_module_is_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


def test_shipped_modules_import_with_the_test_suite_unimportable():
    # A dynamic import of tests (importlib, __import__) would pass the AST check above.
    modules = [module_name(path) for path in shipped_files()]
    script = (
        "import importlib, sys\n"
        "sys.modules['tests'] = None\n"  # `import tests...` now raises ImportError
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]


# Ray reads part of its environment at import, so these must leave Ray unimported for
# apply_ray_env_defaults() to take effect in the importing process.
RAY_FREE_AT_IMPORT = ["rabbit_serve.local_cluster", "bench.run", "bench.scale"]


def test_importing_the_cluster_and_bench_entry_points_has_no_side_effects():
    script = (
        "import importlib, os, sys, threading\n"
        "env, threads = dict(os.environ), threading.active_count()\n"
        f"for name in {RAY_FREE_AT_IMPORT!r}:\n"
        "    importlib.import_module(name)\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "assert threading.active_count() == threads, threading.enumerate()\n"
        "assert 'ray' not in sys.modules, 'imported ray'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
    )
    assert result.returncode == 0, result.stderr[-4000:]
