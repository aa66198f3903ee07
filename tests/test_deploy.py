"""deploy/: every overlay rendered with `kubectl kustomize` and validated offline against the
Kubernetes API schemas (kubernetes-validate), then checked for what a reviewer would ask: tagged
images, resources and probes on every container, non-root and read-only containers, the network
policies (only the router takes ingress from outside the namespace), a disruption budget and an
autoscaler per service, secrets only as files. Each checker is also shown to catch a bad manifest."""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import shutil
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml
from llmesh.kit.config import ServerSettings
from llmesh.kit.defaults import DEFAULT_PORTS, EDGE_HTTP_PORT, SERVICES

pytestmark = pytest.mark.timeout(120)

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERLAYS = ("dev", "prod", "region-a", "region-b")
# The Kubernetes version of the schemas (kubectl from Debian is 1.32; kubernetes-validate ships 1.25+).
KUBERNETES_VERSION = "1.32.0"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
# Pods that may take traffic from outside the namespace: the router, and the HTTP edge.
PUBLIC = {"router", "edge"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
NATS_GATEWAY_PORT = 7222
# Services scaled on their load and its forecast (docs/adr/0025); tenancy and edge on CPU only.
PREDICTIVE = ("router", "cache", "classifier", "inference")
ADAPTER_RULES = ROOT / "deploy" / "prometheus" / "adapter-rules.yaml"


def render(overlay: str | pathlib.Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: run `make setup`"
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(ROOT / "deploy" / "overlays" / request.param)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(ROOT / "deploy" / "overlays" / name) for name in OVERLAYS}


# ---- checkers -------------------------------------------------------------------------------


# cert-manager's resources (deploy/components/mtls): kubernetes-validate has no schema for
# custom resources, so the fields the component uses are checked against this minimal one.
_ISSUER_REF = {
    "type": "object",
    "required": ["name", "kind"],
    "properties": {"name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]}},
}
CERT_MANAGER_SCHEMAS = {
    "Certificate": {
        "type": "object",
        "required": ["secretName", "issuerRef"],
        "additionalProperties": False,
        "properties": {
            "secretName": {"type": "string"},
            "commonName": {"type": "string"},
            "isCA": {"type": "boolean"},
            "duration": {"type": "string", "pattern": "^[0-9]+h$"},
            "renewBefore": {"type": "string", "pattern": "^[0-9]+h$"},
            "dnsNames": {"type": "array", "items": {"type": "string"}},
            "ipAddresses": {"type": "array", "items": {"type": "string"}},
            "usages": {
                "type": "array",
                "items": {"enum": ["digital signature", "key encipherment", "server auth", "client auth"]},
            },
            "privateKey": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                    "size": {"type": "integer"},
                    "rotationPolicy": {"enum": ["Always", "Never"]},
                },
            },
            "issuerRef": _ISSUER_REF,
        },
    },
    "Issuer": {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {
            "selfSigned": {"type": "object"},
            "ca": {"type": "object", "required": ["secretName"], "properties": {"secretName": {"type": "string"}}},
        },
    },
}


def _cert_manager_problem(doc: dict) -> str | None:
    schema = CERT_MANAGER_SCHEMAS.get(doc["kind"])
    if schema is None or doc["apiVersion"] != "cert-manager.io/v1":
        return f"no schema for {doc['apiVersion']} {doc['kind']}"
    try:
        jsonschema.validate(doc.get("spec"), schema)
    except jsonschema.ValidationError as exc:
        return exc.message
    return None


def schema_problems(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        if doc["apiVersion"].startswith("cert-manager.io/"):
            problem = _cert_manager_problem(doc)
            if problem:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {problem}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {getattr(exc, 'message', exc)}")
    return problems


def pod_specs(docs: list[dict]):
    """(kind/name, pod template labels, pod spec) of every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            template = doc["spec"]["template"]
            yield f"{doc['kind']}/{doc['metadata']['name']}", template["metadata"].get("labels", {}), template["spec"]
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            yield f"CronJob/{doc['metadata']['name']}", template["metadata"].get("labels", {}), template["spec"]


def image_problems(docs: list[dict]) -> list[str]:
    problems = []
    for where, _, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            image = container.get("image", "")
            name, _, digest = image.partition("@")
            tag = name.rsplit("/", 1)[-1].partition(":")[2]
            if not digest and (not tag or tag == "latest"):
                problems.append(f"{where} {container['name']}: image {image!r} has no explicit tag")
    return problems


def container_problems(docs: list[dict]) -> list[str]:
    """Resources, probes and the security context of every container."""
    problems = []
    for where, _, spec in pod_specs(docs):
        pod_security = spec.get("securityContext", {})
        for container in spec.get("initContainers", []) + spec["containers"]:
            at = f"{where} {container['name']}"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(part, {}))
                if missing:
                    problems.append(f"{at}: no {part} for {', '.join(sorted(missing))}")
            for probe in ("readinessProbe", "livenessProbe"):
                if container in spec["containers"] and probe not in container:
                    problems.append(f"{at}: no {probe}")
            security = container.get("securityContext", {})
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                problems.append(f"{at}: runAsNonRoot is not set")
            if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
                problems.append(f"{at}: runs as user 0")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: the root file system is writable")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{at}: capabilities are not all dropped")
    return problems


def _selects(selector: dict, labels: dict) -> bool:
    if set(selector) - {"matchLabels"}:
        raise NotImplementedError(f"selector {selector}: only matchLabels is understood here")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _app(labels: dict) -> str:
    return labels.get("app.kubernetes.io/name", "")


def network_problems(docs: list[dict]) -> list[str]:
    """A default deny; ingress from outside the namespace only to the router (and the edge), to
    Prometheus from the monitoring namespace, and to the NATS gateway from the peer region's
    address range; tenancy, classifier, cache and inference only from the router (tenancy and
    inference also from the edge, for `/v1/models`)."""
    problems = []
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if not any(
        p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"].get("policyTypes", [])
        and not p["spec"].get("ingress")
        for p in policies
    ):
        problems.append("no default-deny ingress policy (podSelector {} with no ingress rule)")
    pods = [(where, labels) for where, labels, _ in pod_specs(docs)]
    for policy in policies:
        selected = [(w, labels) for w, labels in pods if _selects(policy["spec"]["podSelector"], labels)]
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            ports = {p.get("port") for p in rule.get("ports", [])}
            for where, labels in selected:
                app = _app(labels)
                at = f"NetworkPolicy/{policy['metadata']['name']} → {where}"
                if not peers:
                    if app not in PUBLIC:
                        problems.append(f"{at}: admits everyone")
                    continue
                for peer in peers:
                    if "ipBlock" in peer:
                        if not (app == "nats" and ports == {NATS_GATEWAY_PORT}):
                            problems.append(f"{at}: admits the address range {peer['ipBlock']['cidr']}")
                    elif "namespaceSelector" in peer:
                        if peer["namespaceSelector"].get("matchLabels") != MONITORING and app not in PUBLIC:
                            problems.append(f"{at}: admits the namespaces {peer['namespaceSelector']}")
                    elif app in ("tenancy", "classifier", "cache", "inference"):
                        callers = {"router", "edge"} if app in ("tenancy", "inference") else {"router"}
                        if peer.get("podSelector", {}).get("matchLabels") not in [
                            {"app.kubernetes.io/name": c} for c in callers
                        ]:
                            problems.append(f"{at}: admits {peer} (the {' or '.join(sorted(callers))} only)")
    return problems


def publicly_reachable(docs: list[dict]) -> set[str]:
    """Apps that some policy opens to everyone."""
    apps = set()
    pods = [labels for _, labels, _ in pod_specs(docs)]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        if any(not rule.get("from") for rule in policy["spec"].get("ingress", [])):
            apps |= {_app(labels) for labels in pods if _selects(policy["spec"]["podSelector"], labels)}
    return apps


def availability_problems(docs: list[dict]) -> list[str]:
    """A PodDisruptionBudget and a HorizontalPodAutoscaler for every llmesh service."""
    problems = []
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    for service in SERVICES:
        deployment = deployments.get(service)
        if deployment is None:
            problems.append(f"{service}: no Deployment")
            continue
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if not any(_selects(p["spec"]["selector"], labels) for p in pdbs):
            problems.append(f"{service}: no PodDisruptionBudget")
        targets = {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"]) for h in hpas}
        if ("Deployment", service) not in targets:
            problems.append(f"{service}: no HorizontalPodAutoscaler")
    return problems


def _external_metrics() -> set[str]:
    """The External metric names prometheus-adapter serves (deploy/prometheus/adapter-rules.yaml)."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["externalRules"]
    return {rule["name"]["as"] for rule in rules}


def scaling_problems(docs: list[dict]) -> list[str]:
    """Each predictive service's autoscaler scales on its current requests/s and on the forecast
    of them, both for its own service, at the same requests/s per replica, with metrics the
    adapter serves."""
    problems = []
    served = _external_metrics()
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in docs if h["kind"] == "HorizontalPodAutoscaler"}
    for service in PREDICTIVE:
        hpa = hpas.get(service)
        if hpa is None:
            problems.append(f"{service}: no HorizontalPodAutoscaler")
            continue
        external = {}
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] != "External":
                continue
            m = metric["external"]
            name, labels = m["metric"]["name"], m["metric"].get("selector", {}).get("matchLabels", {})
            if name not in served:
                problems.append(f"{service}: External metric {name} is not served by the adapter rules")
            if labels.get("service") != service:
                problems.append(f"{service}: {name} selects service {labels.get('service')!r}")
            if m["target"]["type"] != "AverageValue":
                problems.append(f"{service}: {name} is not an AverageValue target")
            external[name] = (labels, str(m["target"].get("averageValue")))
        for wanted in ("llmesh_requests_per_second", "llmesh_forecast_requests_per_second"):
            if wanted not in external:
                problems.append(f"{service}: does not scale on {wanted}")
        if len(external) == 2 and len({value for _, value in external.values()}) != 1:
            problems.append(f"{service}: the current load and its forecast have different targets per replica")
        forecast = external.get("llmesh_forecast_requests_per_second")
        if forecast is not None and "horizon" not in forecast[0]:
            problems.append(f"{service}: the forecast metric names no horizon")
    return problems


def _secret_variables() -> set[str]:
    from scripts.config_tables import service_settings

    classes = [ServerSettings, *(service_settings(s) for s in SERVICES)]
    from llmesh.services.cache.semantic.config import SemanticConfig

    classes.append(SemanticConfig)
    return {f.metadata["env"] for c in classes for f in dataclasses.fields(c) if f.metadata.get("secret")}


def secret_problems(docs: list[dict]) -> list[str]:
    """No secret setting's value in a ConfigMap or a plain env value: only its _FILE variant."""
    secrets = _secret_variables()
    problems = []
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            problems += [f"ConfigMap/{doc['metadata']['name']}: {k}" for k in doc.get("data", {}) if k in secrets]
    for where, _, spec in pod_specs(docs):
        for container in spec["containers"]:
            problems += [f"{where}: env {e['name']}" for e in container.get("env", []) if e["name"] in secrets]
    return problems


TLS_HEALTH_PROBE = ["python", "-m", "llmesh.kit.health_probe", "--timeout", "2"]


def uses_mtls(docs: list[dict]) -> bool:
    return any(d["kind"] == "Certificate" for d in docs)


def config(docs: list[dict], prefix: str) -> dict[str, str]:
    """The data of the (hash-suffixed) ConfigMap generated as `prefix`."""
    found = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].rsplit("-", 1)[0] == prefix]
    assert len(found) == 1, f"{prefix}: {len(found)} ConfigMaps"
    return found[0]["data"]


def workload(docs: list[dict], name: str, kind: str = "Deployment") -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


# ---- the overlays ---------------------------------------------------------------------------


def test_overlay_is_valid_against_the_kubernetes_schemas(overlay):
    name, docs = overlay
    assert len(docs) > 40
    assert schema_problems(docs) == []


def test_overlay_images_are_tagged(overlay):
    name, docs = overlay
    assert image_problems(docs) == []


def test_overlay_containers_have_resources_probes_and_locked_down_security(overlay):
    name, docs = overlay
    assert container_problems(docs) == []


def test_overlay_network_policies(overlay):
    name, docs = overlay
    assert network_problems(docs) == []
    assert publicly_reachable(docs) == {"router", "edge"}


def test_overlay_every_service_has_a_disruption_budget_and_an_autoscaler(overlay):
    name, docs = overlay
    assert availability_problems(docs) == []


def test_overlay_scales_on_the_load_and_its_forecast(overlay):
    _, docs = overlay
    assert scaling_problems(docs) == []


def test_the_adapter_serves_the_metrics_the_services_export():
    from llmesh.kit import metrics  # noqa: F401  (registers the gauges)
    from llmesh.kit.forecast import horizon_label
    from prometheus_client import REGISTRY

    exported = {family.name for family in REGISTRY.collect()} | {
        f"{family.name}_total" for family in REGISTRY.collect() if family.type == "counter"
    }
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["externalRules"]
    for rule in rules:
        series = rule["seriesQuery"].split("{", 1)[0].strip("'")
        assert series in exported, series
    # The HPAs ask for the horizon the services export by default (LLMESH_FORECAST_LEAD_S).
    from llmesh.kit.forecast import ForecastSettings

    lead = next(f.default for f in dataclasses.fields(ForecastSettings) if f.name == "forecast_lead_s")
    for service in PREDICTIVE:
        hpa = yaml.safe_load((ROOT / "deploy" / "base" / service / "hpa.yaml").read_text())
        horizons = {
            m["external"]["metric"]["selector"]["matchLabels"].get("horizon")
            for m in hpa["spec"]["metrics"]
            if m["type"] == "External" and m["external"]["metric"]["name"] == "llmesh_forecast_requests_per_second"
        }
        assert horizons == {horizon_label(lead)}, (service, horizons)


def test_overlay_secrets_are_files(overlay):
    name, docs = overlay
    assert secret_problems(docs) == []


def test_services_use_grpc_health_probes_on_their_port_and_expose_metrics(overlay):
    name, docs = overlay
    for service in SERVICES:
        deployment = workload(docs, service)
        template = deployment["spec"]["template"]
        container = template["spec"]["containers"][0]
        port = DEFAULT_PORTS[service]
        expected_ports = {"grpc": port, "metrics": 9090} | ({"http": EDGE_HTTP_PORT} if service == "edge" else {})
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == expected_ports
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if uses_mtls(docs):  # native gRPC probes cannot speak TLS: the kit's probe can
                assert container[probe]["exec"] == {"command": TLS_HEALTH_PROBE}, (service, probe)
                assert "grpc" not in container[probe]
            else:
                assert container[probe]["grpc"] == {"port": port}, (service, probe)
        assert template["metadata"]["annotations"]["prometheus.io/port"] == "9090"
        settings = config(docs, f"{service}-config")
        assert settings["LLMESH_PORT"] == str(port)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/llmesh", "/tmp"} <= mounts  # the writable paths of a read-only container
    common = config(docs, "llmesh-common")
    assert (common["LLMESH_HOST"], common["LLMESH_METRICS_PORT"]) == ("0.0.0.0", "9090")


def test_config_maps_name_only_settings_the_services_read(overlay):
    from scripts.config_tables import service_settings

    name, docs = overlay
    common = {f.metadata["env"] for f in dataclasses.fields(ServerSettings)}
    # Read outside the settings classes: the home folder (kit.defaults.home), the region (no
    # service reads it yet), and the numeric libraries' thread counts.
    extra = {"LLMESH_HOME", "LLMESH_REGION", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}
    extra.add("TOKENIZERS_PARALLELISM")
    assert set(config(docs, "llmesh-common")) <= common | extra
    from llmesh.services.cache.semantic.config import SemanticConfig

    for service in SERVICES:
        classes = [service_settings(service)] + ([SemanticConfig] if service == "cache" else [])
        fields = [f for c in classes for f in dataclasses.fields(c)]
        known = {f.metadata["env"] for f in fields} | {
            f.metadata["env"] + "_FILE" for f in fields if f.metadata["secret"]
        }
        assert set(config(docs, f"{service}-config")) <= known, service


def test_dev_runs_one_replica_of_everything_and_triton_on_cpu(rendered):
    docs = rendered["dev"]
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert doc["spec"].get("replicas", 1) == 1, doc["metadata"]["name"]
        if doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["maxReplicas"] == 1
    triton = workload(docs, "triton")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(triton) and triton["containers"][0]["image"].endswith("-py3")
    inference = workload(docs, "inference")["spec"]["template"]["spec"]["containers"][0]
    assert inference["image"] == "llmesh/inference:0.1.0-gemma"
    dockerfile = (ROOT / "services" / "inference" / "Dockerfile").read_text()
    bundled = config(docs, "inference-config")["LLMESH_INFERENCE_MODEL_PATH"]
    assert f"ENV LLMESH_INFERENCE_MODEL_PATH={bundled}" in dockerfile  # the with-model image's file


def test_prod_scales_out_and_puts_triton_on_gpu_nodes(rendered):
    docs = rendered["prod"]
    assert workload(docs, "router")["spec"]["replicas"] >= 2
    assert workload(docs, "nats", "StatefulSet")["spec"]["replicas"] == 3
    assert "cluster {" in config(docs, "nats-config")["nats.conf"]
    triton = workload(docs, "triton")["spec"]["template"]["spec"]
    resources = triton["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert triton["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    inference = workload(docs, "inference")["spec"]["template"]["spec"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in inference["containers"][0]["volumeMounts"]
    assert config(docs, "inference-config")["LLMESH_INFERENCE_MODEL_PATH"] == "/models/model.gguf"
    assert not [d for d in docs if d["kind"] == "Secret"]  # created from a vault, never from the repository


def test_regions_differ_in_name_nats_and_model_endpoints(rendered):
    a, b = rendered["region-a"], rendered["region-b"]
    for key in ("LLMESH_REGION", "LLMESH_NATS_URL"):
        assert config(a, "llmesh-common")[key] != config(b, "llmesh-common")[key]
    assert config(a, "llmesh-common")["LLMESH_REGION"] == "region-a"
    assert config(a, "triton-config") != config(b, "triton-config")
    assert config(a, "cache-config")["LLMESH_CACHE_TRITON_URL"] != config(b, "cache-config")["LLMESH_CACHE_TRITON_URL"]
    nats_a = config(a, "nats-config")["nats.conf"]
    assert "name: region-a" in nats_a and "{name: region-b," in nats_a
    # Both build on prod: the same workloads, the same images.
    images = lambda docs: sorted(c["image"] for _, _, s in pod_specs(docs) for c in s["containers"])  # noqa: E731
    assert images(a) == images(b) == images(rendered["prod"])


# ---- the checkers catch bad manifests -------------------------------------------------------


def _tenancy(docs: list[dict]) -> dict:
    return copy.deepcopy(workload(docs, "tenancy"))


def test_checkers_report_a_container_without_probes_resources_or_lockdown(rendered):
    bad = _tenancy(rendered["dev"])
    container = bad["spec"]["template"]["spec"]["containers"][0]
    for key in ("readinessProbe", "livenessProbe", "resources"):
        del container[key]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    bad["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")
    container["securityContext"].pop("runAsNonRoot")
    container["image"] = "llmesh/tenancy:latest"
    problems = "\n".join(container_problems([bad]))
    for expected in ("no readinessProbe", "no livenessProbe", "no requests for cpu, memory", "no limits for"):
        assert expected in problems
    assert "runAsNonRoot is not set" in problems and "root file system is writable" in problems
    assert image_problems([bad]) == ["Deployment/tenancy tenancy: image 'llmesh/tenancy:latest' has no explicit tag"]
    container["image"] = "llmesh/tenancy"
    assert "has no explicit tag" in image_problems([bad])[0]


def test_checkers_report_an_open_internal_service_and_a_missing_default_deny(rendered):
    docs = copy.deepcopy(rendered["prod"])
    open_tenancy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "open-tenancy"},
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tenancy"}}, "ingress": [{}]},
    }
    from_cache = copy.deepcopy(open_tenancy)
    from_cache["metadata"]["name"] = "tenancy-from-cache"
    from_cache["spec"]["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "cache"}}}]}]
    problems = network_problems(docs + [open_tenancy, from_cache])
    assert any("open-tenancy → Deployment/tenancy: admits everyone" in p for p in problems)
    assert any("tenancy-from-cache → Deployment/tenancy: admits" in p for p in problems)
    assert publicly_reachable(docs + [open_tenancy]) == {"router", "edge", "tenancy"}
    without_deny = [d for d in docs if d["metadata"]["name"] != "default-deny"]
    assert network_problems(without_deny) == ["no default-deny ingress policy (podSelector {} with no ingress rule)"]


def test_checkers_report_missing_budgets_autoscalers_plain_secrets_and_schema_errors(rendered):
    docs = [
        d for d in rendered["prod"] if not (d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "cache")
    ]
    docs = [d for d in docs if not (d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "router")]
    assert availability_problems(docs) == ["cache: no HorizontalPodAutoscaler", "router: no PodDisruptionBudget"]
    assert scaling_problems(docs) == ["cache: no HorizontalPodAutoscaler"]
    reactive = copy.deepcopy(
        next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "router")
    )
    forecast = next(
        m
        for m in reactive["spec"]["metrics"]
        if m.get("external", {}).get("metric", {}).get("name") == "llmesh_forecast_requests_per_second"
    )
    forecast["external"]["target"]["averageValue"] = "1000"
    current = next(
        m
        for m in reactive["spec"]["metrics"]
        if m.get("external", {}).get("metric", {}).get("name") == "llmesh_requests_per_second"
    )
    current["external"]["metric"]["selector"]["matchLabels"]["service"] = "cache"
    assert scaling_problems([reactive]) == [
        "router: llmesh_requests_per_second selects service 'cache'",
        "router: the current load and its forecast have different targets per replica",
        "cache: no HorizontalPodAutoscaler",
        "classifier: no HorizontalPodAutoscaler",
        "inference: no HorizontalPodAutoscaler",
    ]
    reactive["spec"]["metrics"] = [m for m in reactive["spec"]["metrics"] if m is not forecast]
    assert scaling_problems([reactive])[1] == "router: does not scale on llmesh_forecast_requests_per_second"
    leaky = {"kind": "ConfigMap", "metadata": {"name": "tenancy-config"}, "data": {"LLMESH_ADMIN_TOKEN": "x" * 20}}
    assert secret_problems([leaky]) == ["ConfigMap/tenancy-config: LLMESH_ADMIN_TOKEN"]
    bad = _tenancy(rendered["dev"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"  # must be a number
    bad["spec"]["template"]["spec"]["containers"][0]["unknownField"] = True
    problems = schema_problems([bad])
    assert len(problems) == 1 and problems[0].startswith("Deployment/tenancy:")


def test_production_runs_mutual_tls_with_a_cert_manager_certificate_per_service(rendered):
    for name in ("prod", "region-a", "region-b"):
        docs = rendered[name]
        certificates = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
        issuers = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Issuer"}
        assert certificates["llmesh-ca"]["isCA"] and certificates["llmesh-ca"]["issuerRef"]["name"] in issuers
        assert issuers["llmesh-ca"] == {"ca": {"secretName": certificates["llmesh-ca"]["secretName"]}}
        common = config(docs, "llmesh-common")
        cert_dir = pathlib.PurePosixPath(common["LLMESH_TLS_CERT_FILE"]).parent
        assert {common["LLMESH_TLS_KEY_FILE"], common["LLMESH_TLS_CA_FILE"]} == {
            f"{cert_dir}/tls.key",
            f"{cert_dir}/ca.crt",
        }
        assert common["LLMESH_TLS_CLIENT_AUTH"] == "require"
        # The router's callers authenticate with API keys, not certificates.
        assert config(docs, "router-config")["LLMESH_TLS_CLIENT_AUTH"] == "none"
        router = config(docs, "router-config")
        for service in SERVICES:
            spec = certificates[f"{service}-tls"]
            assert spec["issuerRef"] == {"name": "llmesh-ca", "kind": "Issuer"}
            assert {"server auth", "client auth"} <= set(spec["usages"]), service
            # the name its callers dial, and the address the in-pod health probe dials
            assert service in spec["dnsNames"] and spec["ipAddresses"] == ["127.0.0.1"], service
            dialed = router.get(f"LLMESH_{service.upper()}_ADDR")
            if dialed:
                assert dialed.rsplit(":", 1)[0] in spec["dnsNames"], service
            pod = workload(docs, service)["spec"]["template"]["spec"]
            volume = next(v for v in pod["volumes"] if v["name"] == "tls")
            assert volume["secret"]["secretName"] == spec["secretName"]
            mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tls")
            # a directory, never subPath: the kubelet updates it when cert-manager renews
            assert mount["mountPath"] == str(cert_dir) and "subPath" not in mount, service
    assert not uses_mtls(rendered["dev"])


def test_checkers_report_a_bad_cert_manager_resource(rendered):
    certificate = next(d for d in rendered["prod"] if d["kind"] == "Certificate")
    broken = copy.deepcopy(certificate)
    del broken["spec"]["secretName"]
    broken["spec"]["usages"] = ["server auth", "serverauth"]
    problems = schema_problems([broken])
    assert len(problems) == 1 and problems[0].startswith(f"Certificate/{certificate['metadata']['name']}: ")
    unknown = copy.deepcopy(certificate) | {"kind": "ClusterIssuer"}
    assert schema_problems([unknown]) == [
        f"ClusterIssuer/{certificate['metadata']['name']}: no schema for cert-manager.io/v1 ClusterIssuer"
    ]
