"""deploy/k8s validated offline against the Kubernetes schemas.

Built-in kinds go through kubernetes-validate (the OpenAPI schemas of the
newest Kubernetes it ships, strict: unknown fields are errors). The custom
resources, KubeRay's RayJob and the Prometheus operator's ServiceMonitor and
PrometheusRule, have no schema there; they are validated against the schemas shipped in
deploy/crd-schemas/ (the CRDs' fields we use, strict), whose pod templates and
label selectors refer to Kubernetes' own definitions, so a RayJob's pods are
checked as strictly as a Deployment's. Then the wiring: probes on the gRPC
health service, scrape config, the registry volume shared by the training job
and the service, and the `streamcell` commands parsed by the real CLI parser.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from streamcell import cli

kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "deploy" / "crd-schemas"
CUSTOM = {
    ("ray.io/v1", "RayJob"): "rayjob-ray-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}
K8S_VERSION = kv.latest_version()


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def find(kind: str) -> dict[str, Any]:
    matches = [d for _, d in documents() if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def validate_builtin(doc: dict[str, Any]) -> None:
    kv.validate(doc, K8S_VERSION, strict=True)


def validate_custom(doc: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / CUSTOM[doc["apiVersion"], doc["kind"]]).read_text())
    files = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads(
        (files / f"v{K8S_VERSION}-local-strict" / "_definitions.json").read_text()
    )
    registry = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)


def validate(doc: dict[str, Any]) -> None:
    if (doc["apiVersion"], doc["kind"]) in CUSTOM:
        validate_custom(doc)
    else:
        validate_builtin(doc)


@pytest.mark.parametrize(
    ("name", "doc"), documents(), ids=[f"{n}:{d['kind']}" for n, d in documents()]
)
def test_manifest_is_valid(name: str, doc: dict[str, Any]) -> None:
    assert doc["metadata"].get("namespace", "streamcell") == "streamcell"
    validate(doc)


def test_every_kind_needed_is_there() -> None:
    kinds = {d["kind"] for _, d in documents()}
    assert {"Deployment", "Service", "ServiceMonitor", "RayJob", "PersistentVolumeClaim"} <= kinds
    assert {"ConfigMap"} <= kinds


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        ("Deployment", ["spec", "template", "spec", "containers", 0, "readinessProbe"],
         {"grpc": {"port": "grpc"}}),  # grpc probes take a port number only
        ("Deployment", ["spec", "template", "spec", "containers", 0, "imagePullPolicy"], 3),
        ("Service", ["spec", "ports", 0, "protocl"], "TCP"),
        ("RayJob", ["spec", "entrypiont"], "streamcell train"),
        ("RayJob", ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec",
                    "containers", 0, "resources", "request"], {"cpu": "1"}),
        ("RayJob", ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec",
                    "volumes", 0, "persistentVolumeClaim"], {"claim": "x"}),
        ("ServiceMonitor", ["spec", "endpoints", 0, "interval"], "15 seconds"),
        ("ServiceMonitor", ["spec", "selector", "matchLabel"], {"a": "b"}),
        ("PrometheusRule", ["spec", "groups", 1, "rules", 0, "for"], "two minutes"),
        ("PrometheusRule", ["spec", "groups", 1, "rules", 0, "record"], "both:alert_and_record"),
    ],
)  # fmt: skip
def test_validation_catches_mistakes(kind: str, path: list[Any], bad: Any) -> None:
    """Each check can fail: one wrong field in a copy of a manifest is refused."""
    doc = copy.deepcopy(find(kind))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def option(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(name + "=")), None)


def test_service_is_probed_on_grpc_health_and_scraped() -> None:
    deployment = find("Deployment")
    pod = deployment["spec"]["template"]
    app = container(pod["spec"], "streamcell")
    ports = {p["name"]: p["containerPort"] for p in app["ports"]}
    # The kubelet's gRPC probe cannot speak TLS: it asks the plaintext health-only port.
    assert app["readinessProbe"]["grpc"]["port"] == ports["health"]
    assert deployment["spec"]["replicas"] >= 2

    config = find("ConfigMap")["data"]
    env = {**config, "POD_NAME": "streamcell-abc"}
    argv = expand([*app["command"][1:], *app["args"]], env)
    assert app["command"][0] == "streamcell"
    args = cli.build_parser().parse_args(argv)
    assert args.command == "serve"
    assert int(option(argv, "--grpc-port") or 0) == ports["grpc"]
    assert int(option(argv, "--metrics-port") or 0) == ports["metrics"]
    assert int(option(argv, "--grpc-health-port") or 0) == ports["health"]
    assert "KAFKA_BOOTSTRAP_SERVERS" in config  # read by serve from its environment

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]

    service = find("Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    monitor = find("ServiceMonitor")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    # The alert rules and the dashboard select job="streamcell".
    relabel = monitor["spec"]["endpoints"][0]["relabelings"]
    assert {"targetLabel": "job", "replacement": "streamcell", "action": "replace"} in relabel


def test_training_rayjob_writes_where_the_service_reads() -> None:
    job = find("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "streamcell"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "train"
    assert args.workers >= 2

    def claims(pod_spec: dict[str, Any]) -> dict[str, str]:
        """mount path -> PVC name for the pod's first container."""
        by_volume = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = pod_spec["containers"][0]["volumeMounts"]
        return {m["mountPath"]: by_volume[m["name"]] for m in mounts if m["name"] in by_volume}

    cluster = job["spec"]["rayClusterSpec"]
    head = claims(cluster["headGroupSpec"]["template"]["spec"])
    pvc = find("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert head[str(args.registry)] == pvc["metadata"]["name"]
    for group in cluster["workerGroupSpecs"]:
        assert claims(group["template"]["spec"])[str(args.registry)] == pvc["metadata"]["name"]

    serve_pod = find("Deployment")["spec"]["template"]["spec"]
    serve_argv = container(serve_pod, "streamcell")["args"]
    assert claims(serve_pod)[option(serve_argv, "--registry") or ""] == pvc["metadata"]["name"]
    assert expand([option(serve_argv, "--model") or ""], find("ConfigMap")["data"]) == [args.model]


def test_prometheusrule_holds_the_rules_promtool_tested() -> None:
    """deploy/k8s's PrometheusRule is generated from deploy/prometheus/rules: they must agree."""
    rules = yaml.safe_load(
        (ROOT / "deploy" / "prometheus" / "rules" / "streamcell.yml").read_text()
    )
    assert find("PrometheusRule")["spec"]["groups"] == rules["groups"], (
        "deploy/k8s/41-prometheusrule.yaml is stale: run deploy/prometheus/to_prometheusrule.py"
    )


def test_grpc_takes_tls_and_its_token_from_secrets_behind_a_network_policy() -> None:
    pod = find("Deployment")["spec"]["template"]
    app = container(pod["spec"], "streamcell")
    env = {**find("ConfigMap")["data"], "POD_NAME": "streamcell-abc"}
    argv = expand([*app["command"][1:], *app["args"]], env)
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v
    }

    def secret_of(path: str | None) -> str:
        assert path is not None
        return secrets[mounts[str(Path(path).parent)]]

    assert secret_of(option(argv, "--tls-cert")) == secret_of(option(argv, "--tls-key"))
    assert secret_of(option(argv, "--auth-token-file")) != secret_of(option(argv, "--tls-cert"))
    assert option(argv, "--auth-token") is None  # never a token on the command line

    policy = find("NetworkPolicy")
    labels = pod["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    rules = {r["ports"][0]["port"]: r.get("from") for r in policy["spec"]["ingress"]}
    assert set(rules) == {p["name"] for p in app["ports"]}  # every port has its rule
    assert rules["grpc"], "gRPC must not be open to every pod"
    assert rules["metrics"], "metrics must not be open to every pod"
