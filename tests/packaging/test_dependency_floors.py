"""pyproject.toml's gRPC and protobuf floors are what the committed stubs need: the versions
they were generated with. A regenerated stub (or a lowered floor) that drifts fails here,
before an install with an older protobuf or grpcio fails at import with VersionError."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(==|>=)\s*([0-9][0-9.]*)")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def stub_versions() -> dict[str, set[str]]:
    """The protobuf and grpcio versions each committed stub was generated with."""
    found: dict[str, set[str]] = {"protobuf": set(), "grpcio": set()}
    for path in sorted(PROTO.rglob("*_pb2.py")):
        m = re.search(r"^# Protobuf Python Version: ([0-9.]+)$", path.read_text(), re.M)
        assert m, f"{path.name} names no protobuf version"
        found["protobuf"].add(m.group(1))
    for path in sorted(PROTO.rglob("*_pb2_grpc.py")):
        m = re.search(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", path.read_text(), re.M)
        assert m, f"{path.name} names no grpcio version"
        found["grpcio"].add(m.group(1))
    return found


def pyproject_pins() -> dict[str, dict[str, tuple[str, str]]]:
    """extra -> {package: (operator, version)} for the extras' pinned requirements."""
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for extra, reqs in extras.items():
        for req in reqs:
            m = REQUIREMENT.match(req)
            if m:
                out.setdefault(extra, {})[m.group(1).lower()] = (m.group(2), m.group(3))
    return out


def test_stubs_come_from_one_generator() -> None:
    found = stub_versions()
    assert len(found["protobuf"]) == 1 and len(found["grpcio"]) == 1, found


def test_floors_are_what_the_stubs_need() -> None:
    found = stub_versions()
    protobuf, grpcio = found["protobuf"].pop(), found["grpcio"].pop()
    need = {
        "protobuf": protobuf,
        "grpcio": grpcio,
        # their own stubs need the same grpcio; a lower floor only slows the resolver down
        "grpcio-health-checking": grpcio,
        "grpcio-reflection": grpcio,
    }
    pins = pyproject_pins()
    checked = 0
    for extra in ("serve", "serve-cpu", "client"):
        for package, version in need.items():
            if package not in pins[extra]:
                continue
            op, floor = pins[extra][package]
            assert op == ">=" and _version(floor) == _version(version), (
                f"[{extra}] says {package}{op}{floor} but the stubs in proto/ were generated "
                f"for {package} {version}: set the floor to >={version}"
            )
            checked += 1
    assert checked >= 9  # protobuf and grpcio in all three, health and reflection in serve*
    # the generator itself: gen_protos.py --check must reproduce the committed stubs
    assert pins["dev"]["grpcio-tools"] == ("==", grpcio)


def test_serve_extras_differ_only_in_onnxruntime() -> None:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    gpu, cpu = set(extras["serve"]), set(extras["serve-cpu"])
    assert {r.split(">")[0] for r in gpu - cpu} == {"onnxruntime-gpu"}
    assert {r.split(">")[0] for r in cpu - gpu} == {"onnxruntime"}
