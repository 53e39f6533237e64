"""The Containerfile and its wheel sets, checked without building: both targets have the same
shape (offline install from their own wheels, non-root), the build context holds what it
copies, the ports match the image's settings, and each pinned wheel set is complete, right
for its flavour, and resolves for the image's Python and platform (the CUDA image is not
built in CI: too large; this is what stands in for it there)."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vaeserve.server.settings import read_config_file

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "deploy" / "image"
FLAVOURS = ("cpu", "cuda")


def _stages() -> dict[str, list[tuple[str, str]]]:
    """{stage name: [(INSTRUCTION, arguments)]} with continuation lines joined; "" holds what
    comes before the first FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        if op.upper() == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            stages[current] = []
        stages[current].append((op.upper(), args.strip()))
    return stages


def _args(stage: list[tuple[str, str]], op: str) -> list[str]:
    return [a for o, a in stage if o == op]


def _requirements(flavour: str) -> dict[str, str]:
    """{normalised name: full requirement line} of requirements-FLAVOUR.txt."""
    out = {}
    for line in (IMAGE / f"requirements-{flavour}.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[\[=<>~! ]", line)[0]
            out[re.sub(r"[-_.]+", "-", name).lower()] = line
    return out


def test_targets_share_one_shape() -> None:
    stages = _stages()
    assert list(stages)[-1] == "cpu", "cpu is the default target (the last stage)"
    (base_arg,) = _args(stages[""], "ARG")
    assert base_arg.startswith("BASE=docker.io/library/python:3.11-")
    for flavour in FLAVOURS:
        wheels = stages[f"wheels-{flavour}"]
        assert wheels[0] == ("FROM", f"source AS wheels-{flavour}")
        assert "PIP_INDEX_URL" in _args(wheels, "ARG"), "a mirror for builds with network"
        assert f"deploy/wheelhouse/{flavour}/ /wheelhouse/" in _args(wheels, "COPY")
        assert _args(wheels, "RUN") == [f"sh /src/deploy/image/build-wheels.sh {flavour}"]
        venv = stages[f"venv-{flavour}"]
        assert venv[0] == ("FROM", f"${{BASE}} AS venv-{flavour}")
        assert _args(venv, "COPY") == [f"--from=wheels-{flavour} /wheels/ /wheels/"]
        assert _args(venv, "RUN") == ["sh /wheels/install.sh"]
        final = stages[flavour]
        assert final[0] == ("FROM", f"runtime AS {flavour}")
        assert _args(final, "RUN") == [], "the image takes the installed environment only"
        assert _args(final, "COPY") == [f"--from=venv-{flavour} /opt/vaeserve /opt/vaeserve"]
        assert final[-1] == ("USER", "1000:0"), "the image ends as uid 1000, group 0"
        # labels that change with every commit come after the copy (its cache survives)
        ops = [op for op, _ in final]
        assert ops.index("COPY") < min(i for i, op in enumerate(ops) if op == "ARG")
        labels = " ".join(_args(final, "LABEL") + _args(stages["runtime"], "LABEL"))
        assert f'io.vaeserve.flavour="{flavour}"' in labels
        for key in ("title", "version", "revision", "licenses", "base.name"):
            assert f"org.opencontainers.image.{key}=" in labels, key
    for name in ("source", "runtime"):
        assert stages[name][0] == ("FROM", f"${{BASE}} AS {name}")


def test_runtime_settings_and_ports_agree() -> None:
    runtime = _stages()["runtime"]
    (entrypoint,) = _args(runtime, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["/opt/vaeserve/bin/vae-server"]
    env = " ".join(_args(runtime, "ENV"))
    config = re.search(r"VAESERVE_CONFIG=(\S+)", env)[1]
    assert f"deploy/image/server.toml {config}" in _args(runtime, "COPY")
    assert "ORT_DISABLE_TELEMETRY=1" in env
    settings = read_config_file(IMAGE / "server.toml")
    assert settings["model_repo"] == "/mnt/models"
    (expose,) = _args(runtime, "EXPOSE")
    ports = {settings["port"], settings["health_port"], settings["metrics_port"]}
    assert {int(p) for p in expose.split()} == ports


def test_build_context_holds_what_the_containerfile_copies() -> None:
    patterns = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    sources = []
    for stage in _stages().values():
        for args in _args(stage, "COPY"):
            if not args.startswith("--from"):
                sources.extend(args.split()[:-1])
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), source
        assert included(path), f"{source} is excluded by .dockerignore"
    assert not included(".venv") and not included(".git") and not included("tests")


def test_wheel_sets_are_pinned_complete_and_flavoured() -> None:
    cpu, cuda = _requirements("cpu"), _requirements("cuda")
    for reqs in (cpu, cuda):
        for line in reqs.values():
            assert re.search(r"==[\w.]+$", line), f"{line}: pin an exact version"
        assert "torch" not in reqs
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    assert "onnxruntime-gpu" in cuda and "onnxruntime" not in cuda
    assert "[cuda,cudnn]" in cuda["onnxruntime-gpu"]
    assert cpu["onnxruntime"].split("==")[1] == cuda["onnxruntime-gpu"].split("==")[1]
    for name in set(cpu) & set(cuda):
        assert cpu[name] == cuda[name], name
    assert not any(n.startswith("nvidia-") for n in cpu)
    # every dependency of vaeserve's [serve] extra is in both images
    pyproject = (ROOT / "pyproject.toml").read_text()
    serve = re.search(r"^serve = \[(.*?)\]", pyproject, re.S | re.M)[1]
    for dep in re.findall(r'"([A-Za-z0-9_.-]+)', serve):
        name = re.sub(r"[-_.]+", "-", dep).lower()
        wanted = "onnxruntime" if name == "onnxruntime-gpu" else name
        assert wanted in cpu, f"[serve] needs {dep}; requirements-cpu.txt lacks it"
        assert name in cuda, f"[serve] needs {dep}; requirements-cuda.txt lacks it"


@pytest.mark.slow
def test_cuda_wheel_set_resolves_for_the_image(tmp_path: Path) -> None:
    """pip resolves the CUDA image's pinned set for cp311 on manylinux (metadata only, nothing
    downloaded but that), and every package it would install is pinned in the file. The CPU set
    gets the same proof from the image test, which downloads and installs it."""
    flavour = "cuda"
    platforms = [f"--platform=manylinux_2_{g}_x86_64" for g in range(17, 37)]
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--only-binary=:all:", "--implementation=cp",
         "--python-version=3.11", "--abi=cp311", "--platform=manylinux2014_x86_64", *platforms,
         "--target", str(tmp_path / "target"), "--report", str(report),
         "-r", str(IMAGE / f"requirements-{flavour}.txt")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    resolved = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    pinned = {name: line.split("==")[1] for name, line in _requirements(flavour).items()}
    assert resolved == pinned
