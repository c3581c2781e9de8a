"""Types are checked: mypy passes on the package (strict for the public API), CI runs it, and the
workflow machinery is typed (no ``self: Any``, which turns checking off where determinism matters)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `-p perdure` would recurse into tests/ and bench/: the package's parts are named instead.
MYPY_TARGETS = ["-p", "perdure.actors", "-p", "perdure.runtime", "-p", "perdure.client", "-m", "perdure"]


def test_mypy_passes_on_the_package(tmp_path: Path) -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed (it is in the [test] extra)")
    # package-dir maps `perdure` from the repository root, which mypy cannot follow through the
    # editable install: it reads the package through a symlink named `perdure`.
    (tmp_path / "perdure").symlink_to(ROOT, target_is_directory=True)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *MYPY_TARGETS],
        cwd=ROOT,  # the [tool.mypy] config in pyproject.toml
        env={**os.environ, "MYPYPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout


def test_ci_runs_lint_and_mypy_before_the_tests() -> None:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    *before, last = lines
    assert "pytest" in last
    assert ".venv/bin/ruff check ." in before
    assert ".venv/bin/ruff format --check ." in before
    mypy = next(ln for ln in before if ln.startswith("MYPYPATH=") and "mypy" in ln)
    assert mypy.endswith(" ".join(MYPY_TARGETS))


def _self_annotated_any(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.args.args:
            first = node.args.args[0]
            annotation = ast.unparse(first.annotation) if first.annotation is not None else ""
            if first.arg == "self" and annotation in ("Any", "typing.Any"):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return found


def test_no_self_typed_any_in_the_actors() -> None:
    found = [hit for path in sorted((ROOT / "actors").glob("*.py")) for hit in _self_annotated_any(path)]
    assert found == [], found
