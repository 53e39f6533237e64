"""docs/architecture.md names every module with its docstring's job: stale means a module was
added, removed or re-described without regenerating it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_architecture_doc_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_architecture.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_has_a_docstring() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "(no docstring)" not in text
