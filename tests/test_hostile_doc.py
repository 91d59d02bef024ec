"""docs/hostile-inputs.md is the table of every hostile input the tests try (`@pytest.mark.hostile`), rendered
from the tests themselves; this fails when the committed file is out of step with them (`make hostile-doc`
rewrites it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOC = ROOT / "docs" / "hostile-inputs.md"
# The test modules that carry `hostile` marks (the Makefile's hostile-doc target collects the same list).
MARKED = ["test_cli.py", "test_config.py", "test_hostile_files.py", "test_sweep.py", "test_serve_faults.py",
          "test_serve.py", "test_ope.py", "test_export.py", "test_train.py"]


def test_every_module_with_hostile_marks_is_in_the_list() -> None:
    marked = {p.name for p in (ROOT / "tests").glob("test_*.py")
              if "@pytest.mark.hostile(" in p.read_text() and p.name != Path(__file__).name}
    assert marked == set(MARKED)


def test_hostile_inputs_doc_is_current(tmp_path) -> None:
    out = tmp_path / "hostile-inputs.md"
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *[f"tests/{m}" for m in MARKED], "--hostile-table", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rendered = out.read_text(encoding="utf-8")
    assert rendered.count("\n| ") > 150  # config, CLI, file and HTTP cases
    for section in ("## Configuration", "## Command-line options", "## Files", "## HTTP requests"):
        assert section in rendered
    assert DOC.read_text(encoding="utf-8") == rendered, "docs/hostile-inputs.md is stale: run `make hostile-doc`"
