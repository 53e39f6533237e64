"""An older commit of this checkout's server, importable side by side with the current one, so
"before" and "after" are measured in one run on the same interpreter and packages."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unpack_revision(rev: str, into: Path) -> Path:
    """The server, common and proto folders of commit `rev` as INTO/vaeserve/...; returns INTO,
    the folder to put on PYTHONPATH (ahead of the editable install)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = into / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--prefix=vaeserve/", rev, "server", "common",
             "proto"],
            check=True,
            stdout=f,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (into / "vaeserve" / "__init__.py").write_text("")
    archive.unlink()
    return into
