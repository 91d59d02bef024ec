"""The import contracts of pyproject.toml ([tool.importlinter]) hold: rllib_rec's stages are layers (cli >
deploy > tuning > training > offpolicy > agent > config > tables | stats | errors; no cycles between them,
every module placed), envs imports nothing of rllib_rec, Ray, Keras, torch, TensorFlow or MLflow, and
rllib_rec.deploy.serve reaches no torch, TensorFlow, Keras or Ray, and no two modules of one package import each
other, even through others (acyclic_siblings). Static (function-level imports count),
under a second: it runs `lint-imports` and shows its report when a contract is broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _lint_imports() -> list[str]:
    script = Path(sys.executable).with_name("lint-imports")
    if script.is_file():
        return [str(script)]
    # No console script next to the interpreter (e.g. a non-venv install): the same entry point.
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as m; sys.exit(m())"]


def test_import_contracts_are_kept() -> None:
    # cwd = the repo root: lint-imports reads pyproject.toml there and analyses the packages there.
    # --no-cache: nothing written into the tree.
    proc = subprocess.run([*_lint_imports(), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    report = proc.stdout + proc.stderr
    if "No module named" in report:
        pytest.fail(f"import-linter missing? pip install -e '.[dev]'\n{report}", pytrace=False)
    if proc.returncode != 0 or "Contracts: 4 kept, 0 broken." not in report:
        pytest.fail(f"lint-imports: a contract is broken (exit {proc.returncode})\n{report}", pytrace=False)
