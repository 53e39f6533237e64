"""Install size of each extra: a fresh virtual environment per extra, `pip install -c
constraints.txt '.[EXTRA]'` (torch from the constraints' pin), then the environment's size on
disk less an empty environment's, and the packages it holds.

    python -m benchmarks.install_sizes [--extras client,serve-cpu,serve,train]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.revisions import ROOT

RESULTS = Path(__file__).parent / "results"
PACKAGE_DIRS = ("common", "training", "export", "server", "client", "proto")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def du_bytes(path: Path) -> int:
    """Bytes on disk under `path` (du -sb)."""
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def source_copy(target: Path) -> Path:
    """The files the wheel is built from."""
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def measure(extra: str, src: Path, work: Path) -> dict:
    """Install vaeserve[extra] into a new venv; its size and packages."""
    venv = work / f"venv-{extra}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    empty = du_bytes(venv)
    started = time.perf_counter()
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
         str(ROOT / "constraints.txt"), f"{src}[{extra}]"],
        check=True, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    size = du_bytes(venv) - empty
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    packages = sorted(line for line in freeze.splitlines() if "==" in line)
    shutil.rmtree(venv)
    result = {
        "extra": extra,
        "installed_mb": round(size / 1e6),
        "install_seconds": round(seconds),
        "packages": packages,
    }
    _log(f"{extra}: {result['installed_mb']} MB, {len(packages)} packages")
    return result


def markdown(results: list[dict]) -> str:
    """A BENCHMARKS.md section."""
    names = {p.split("==")[0].lower() for r in results for p in r["packages"]}
    has = ("torch", "onnxruntime", "onnxruntime-gpu", "grpcio", "pyarrow")
    lines = [
        "## Install size of each extra",
        "",
        "A fresh virtual environment per extra, `pip install -c constraints.txt "
        "'.[EXTRA]'`, its size on disk less an empty environment's "
        "(`python -m benchmarks.install_sizes`):",
        "",
        "| extra | installed | packages | " + " | ".join(h for h in has if h in names) + " |",
        "|---|---:|---:|" + "---|" * len([h for h in has if h in names]),
    ]
    for r in results:
        pkgs = {p.split("==")[0].lower(): p.split("==")[1] for p in r["packages"]}
        cells = [pkgs.get(h, "—") for h in has if h in names]
        lines.append(
            f"| `{r['extra']}` | {r['installed_mb']} MB | {len(r['packages'])} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="client,serve-cpu,serve,train")
    parser.add_argument("--output", type=Path, default=RESULTS / "install_sizes.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vae-sizes-") as tmp:
        src = source_copy(Path(tmp) / "src")
        results = [measure(e, src, Path(tmp)) for e in args.extras.split(",") if e]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    args.output.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
