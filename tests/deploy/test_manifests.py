"""deploy/k8s and deploy/kserve: every overlay renders with kustomize and validates offline
against the Kubernetes OpenAPI schemas (strict), and holds what a schema cannot check: probes
on the health-only port, non-root and locked down, resources set, one image tag, references
that resolve, and a server config vae-server itself accepts."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    ROOT,
    kind_name,
    kv_utils,
    render,
    require_validator,
    validate,
    validate_part,
)
from vaeserve.server.settings import ServerSettings, read_config_file

K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
# the oldest Kubernetes the manifests promise (gRPC probes are GA since 1.27), and the newest
MIN_K8S = "1.29"
REGISTRY = "registry.example.com/vaeserve"
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
# overlay -> image flavour
OVERLAYS = {"cpu": "cpu", "cuda": "cuda", "tls": "cpu", "servicemonitor": "cpu"}
# Secrets the user provides (docs/deploy.md); everything else must be in the render
EXTERNAL_SECRETS = {"vaeserve-tls"}
CUSTOM_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}


def _versions() -> list[str]:
    require_validator()
    return [MIN_K8S, kv_utils.latest_version()]


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def kserve_objects() -> list[dict[str, Any]]:
    return render(KSERVE)


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec
    return pod.get("initContainers", []) + pod.get("containers", [])


def _server_config(objects: list[dict[str, Any]], tmp_path: Path) -> ServerSettings:
    """The settings vae-server would load from the Deployment's ConfigMap and its env."""
    deployment = _one(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    config_path = Path(env["VAESERVE_CONFIG"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (volume,) = [n for n, path in mounts.items() if Path(path) == config_path.parent]
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    text = maps[volumes[volume]["configMap"]["name"]]["data"][config_path.name]
    local = tmp_path / config_path.name
    local.write_text(text)
    read_config_file(local)  # unknown keys fail here
    # single keys from the Deployment's env override the file, as in the pod (POD_IP aside)
    env = {k: v for k, v in env.items() if k.startswith("VAESERVE_") and "$(" not in v}
    env.pop("VAESERVE_CONFIG")
    return ServerSettings.load(config=local, env=env)


@pytest.mark.parametrize("version", [MIN_K8S, "latest"])
def test_every_object_validates_against_the_kubernetes_schemas(overlay, version: str) -> None:
    _, objects = overlay
    version = kv_utils.latest_version() if version == "latest" else version
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            for c in _containers(obj) if obj["kind"] != "ServiceMonitor" else []:
                validate_part(c, "container-v1", version, kind_name(obj))
        else:
            validate(obj, version)


def test_kserve_objects_validate(kserve_objects) -> None:
    runtime = _one(kserve_objects, "ServingRuntime")
    for version in _versions():
        for c in _containers(runtime):
            validate_part(c, "container-v1", version, kind_name(runtime))


def test_probes_use_the_health_only_port(overlay, tmp_path: Path) -> None:
    _, objects = overlay
    settings = _server_config(objects, tmp_path)
    assert settings.health_port, "the config must turn the health-only port on"
    assert settings.health_port not in (settings.port, settings.metrics_port)
    (container,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container[probe]
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        port = spec["grpc"]["port"]
        assert isinstance(port, int) and port == settings.health_port, (probe, port)
        assert spec["grpc"].get("service", "") == "", "service '' is the server's overall state"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": settings.port,
        "grpc-health": settings.health_port,
        "metrics": settings.metrics_port,
    }
    env = {e["name"]: e for e in container["env"]}
    # bound to the pod's address
    assert env["VAESERVE_HEALTH_HOST"]["value"] == "$(POD_IP)"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_IP") < names.index("VAESERVE_HEALTH_HOST"), "$(POD_IP) needs it first"


def test_pods_run_non_root_and_locked_down(overlay) -> None:
    _, objects = overlay
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/mnt/models"]["readOnly"] is True
        assert "/tmp" in mounts, "a writable /tmp under a read-only root"


def test_resources_are_set_and_threads_fit(overlay, tmp_path: Path) -> None:
    name, objects = overlay
    settings = _server_config(objects, tmp_path)
    (container,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    for key in ("cpu", "memory"):
        assert key in requests and key in limits, key
    cpu_limit = float(limits["cpu"])
    assert float(requests["cpu"]) <= cpu_limit
    assert 1 <= settings.intra_op_threads <= cpu_limit, "onnxruntime threads beyond the CPU limit"
    if OVERLAYS[name] == "cuda":
        assert limits["nvidia.com/gpu"] == "1" and settings.device == "cuda"


def test_one_image_tag_per_overlay(overlay, kserve_objects) -> None:
    name, objects = overlay
    pods = [o for o in objects if o["kind"] in ("Deployment", "ServingRuntime")]
    images = {c["image"] for o in pods for c in _containers(o)}
    assert images == {f"{REGISTRY}:{VERSION}-{OVERLAYS[name]}"}
    runtime = _one(kserve_objects, "ServingRuntime")
    assert {c["image"] for c in _containers(runtime)} == {f"{REGISTRY}:{VERSION}-cpu"}


def test_references_resolve(overlay) -> None:
    _, objects = overlay
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    deployment = _one(objects, "Deployment")
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = template["spec"]["containers"]
    named_ports = {p["name"] for p in container["ports"]}

    for service in by_kind["Service"].values():
        assert service["spec"]["selector"].items() <= pod_labels.items(), kind_name(service)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named_ports, (kind_name(service), port)
    assert by_kind["Service"]["vaeserve-headless"]["spec"]["clusterIP"] == "None"
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    policy = _one(objects, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert {p["containerPort"] for p in container["ports"] if p["name"] != "grpc-health"} <= (
        allowed
    )

    for volume in template["spec"]["volumes"]:
        if "configMap" in volume:
            assert volume["configMap"]["name"] in by_kind["ConfigMap"], volume
        if "secret" in volume:
            secret = volume["secret"]["secretName"]
            assert secret in by_kind.get("Secret", {}) or secret in EXTERNAL_SECRETS, volume
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]
            assert claim["claimName"] in by_kind["PersistentVolumeClaim"] and claim["readOnly"]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] in by_kind["ServiceAccount"]
    for monitor in by_kind.get("ServiceMonitor", {}).values():
        selected = [
            s
            for s in by_kind["Service"].values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports


def test_shutdown_fits_the_grace_period(overlay, tmp_path: Path) -> None:
    _, objects = overlay
    settings = _server_config(objects, tmp_path)
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pause = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pause + settings.grace_s < pod["terminationGracePeriodSeconds"]
    annotations = _one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)


def test_tls_overlay_turns_on_mutual_tls(tmp_path: Path) -> None:
    objects = render(K8S / "overlays" / "tls")
    settings = _server_config(objects, tmp_path)
    assert settings.tls and settings.tls_client_ca is not None
    (container,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for path in (settings.tls_cert, settings.tls_key, settings.tls_client_ca):
        assert str(path.parent) == mounts["tls"], path


def test_token_placeholder_holds_no_token(overlay, tmp_path: Path) -> None:
    _, objects = overlay
    settings = _server_config(objects, tmp_path)
    assert settings.token_auth and settings.token_file is not None
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    text = base64.b64decode(secret["data"][settings.token_file.name]).decode()
    assert all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines())


def test_kserve_runtime_and_inference_service_fit_together(kserve_objects) -> None:
    runtime = _one(kserve_objects, "ServingRuntime")
    service = _one(kserve_objects, "InferenceService")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert formats == {"vaeserve"}
    assert {"grpc-v2", "v2"} <= set(runtime["spec"]["protocolVersions"])
    (container,) = runtime["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert port["name"] == "h2c" and int(env["VAESERVE_PORT"]) == port["containerPort"]
    assert container["readinessProbe"]["grpc"]["port"] == port["containerPort"]
    assert env["VAESERVE_MODEL_REPO"] == "/mnt/models"
    ServerSettings.load(env=env)  # the runtime's settings are valid
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in formats
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["capabilities"]["drop"] == ["ALL"]
