"""deploy/compose.yaml and its CPU override, as the Compose v2 binary resolves them: what the
deployment promises (placement, networks, health, restarts, replicas, mounts, user) holds in
the resolved JSON, and a broken file is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.compose_runner import BASE_FILE, COMPOSE_BINARY, CPU_FILE, is_ours, resolve

# The contract's table: gRPC port, metrics port.
PORTS = {"gateway": (50051, 9400), "llm": (50052, 9401), "flow": (50053, 9402), "vocoder": (50054, 9403),
         "frontend": (50055, 9404)}
STAGES = ("llm", "flow", "vocoder", "frontend")
DEFAULT_GPUS = {"llm": "0", "flow": "1", "vocoder": "2", "frontend": "2"}
UID = "10001:10001"


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return resolve(BASE_FILE).config["services"]


@pytest.fixture(scope="module")
def cpu() -> dict[str, Any]:
    return resolve(BASE_FILE, CPU_FILE).config["services"]


def env(service: dict[str, Any], name: str) -> str:
    prefix = f"COSYVOICE_{service['command'][-1].upper()}_"
    return service["environment"][prefix + name]


def mount(service: dict[str, Any], target: str) -> dict[str, Any]:
    (found,) = [volume for volume in service.get("volumes", []) if volume["target"] == target]
    return found


def gpu_ids(service: dict[str, Any]) -> list[str]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [i for device in devices if device["driver"] == "nvidia" and "gpu" in device["capabilities"]
            for i in device["device_ids"]]


def test_every_service_listens_on_the_contract_ports(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    for services in (gpu, cpu):
        for name, (port, metrics) in PORTS.items():
            service = services[name]
            assert service["command"] == ["serve", name] and service.get("entrypoint") is None
            assert (env(service, "HOST"), env(service, "PORT"), env(service, "METRICS_PORT")) == (
                "0.0.0.0", str(port), str(metrics))
            assert service["healthcheck"]["test"] == ["CMD", "cosyvoice", "health", f"127.0.0.1:{port}"]


def test_each_stage_reserves_its_gpu_chosen_through_env(gpu: dict[str, Any]) -> None:
    for stage, default in DEFAULT_GPUS.items():
        assert gpu_ids(gpu[stage]) == [default]
        assert env(gpu[stage], "DEVICE") == "cuda"  # the one GPU the container sees
        assert gpu[stage]["image"] == "cosyvoice-serving:gpu"
    assert gpu_ids(gpu["gateway"]) == []
    moved = resolve(BASE_FILE, env={"COSYVOICE_LLM_GPU": "5", "COSYVOICE_FRONTEND_GPU": "3"}).config["services"]
    assert (gpu_ids(moved["llm"]), gpu_ids(moved["frontend"]), gpu_ids(moved["flow"])) == (["5"], ["3"], ["1"])


def test_replicas_per_stage_and_one_gateway() -> None:
    scaled = resolve(BASE_FILE, env={"COSYVOICE_LLM_REPLICAS": "3", "COSYVOICE_VOCODER_REPLICAS": "2"}).config
    replicas = {name: service["deploy"]["replicas"] for name, service in scaled["services"].items()
                if is_ours(service)}
    assert replicas == {"llm": 3, "flow": 1, "vocoder": 2, "frontend": 1, "gateway": 1, "http": 1}


def test_the_gateway_balances_over_every_replica_by_dns(gpu: dict[str, Any]) -> None:
    gateway = gpu["gateway"]
    for stage in STAGES:
        assert env(gateway, f"{stage.upper()}_ADDR") == f"dns:///{stage}:{PORTS[stage][0]}"
        assert set(gpu[stage]["networks"]) <= set(gateway["networks"]), f"the gateway cannot reach {stage}"
    depends = gateway["depends_on"]
    assert {name: spec["condition"] for name, spec in depends.items()} == dict.fromkeys(STAGES, "service_healthy")


def test_only_the_gateway_and_grafana_are_published(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    networks = resolve(BASE_FILE).config["networks"]
    for services in (gpu, cpu):
        published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
        assert set(published) == {"gateway", "grafana", "http"}
        assert [(p["target"], str(p["published"])) for p in published["http"]] == [(8080, "8080")]
        assert [(p["target"], str(p["published"])) for p in published["gateway"]] == [(50051, "50051")]
        assert [p["target"] for p in published["grafana"]] == [3000]
        for name in (*STAGES, "prometheus"):
            assert all(networks[n].get("internal") for n in services[name]["networks"]), name
        for name in ("gateway", "grafana", "http"):
            assert any(not networks[n].get("internal") for n in services[name]["networks"]), name
    assert networks["stages"]["internal"] is True


def test_restart_policies_healthchecks_and_user(gpu: dict[str, Any], cpu: dict[str, Any]) -> None:
    for services in (gpu, cpu):
        for name, service in services.items():
            assert service.get("restart") in ("unless-stopped", "always", "on-failure", "no"), name
            if name == "tiny-model":
                assert service["restart"] == "no"  # a one-shot: it exits 0 when done
                continue
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"][0] == "CMD", name  # exec form: nothing but the image's tools
            if is_ours(service):
                assert service["user"] == UID, name


def test_volumes_models_read_only_cache_and_speakers(gpu: dict[str, Any]) -> None:
    for stage in STAGES:
        models = mount(gpu[stage], "/models")
        assert models["read_only"] is True and models["type"] == "bind"
        assert env(gpu[stage], "MODEL_DIR") == "/models/CosyVoice2-0.5B"
        assert mount(gpu[stage], "/var/cache/cosyvoice")["type"] == "volume"
        assert gpu[stage]["environment"]["COSYVOICE_CACHE"] == "/var/cache/cosyvoice"
    assert mount(gpu["gateway"], "/var/lib/cosyvoice")["type"] == "volume"
    assert env(gpu["gateway"], "SPEAKER_DB") == "/var/lib/cosyvoice/speakers.db"


def test_cpu_variant_serves_the_tiny_model_without_gpus(cpu: dict[str, Any]) -> None:
    init = cpu["tiny-model"]
    assert init["image"] == "cosyvoice-serving:cpu" and init["user"] == UID
    assert "cosyvoice make-tiny-model /models/tiny --force" in " ".join(init["command"])
    assert mount(init, "/models")["source"] == "tiny-model" and not mount(init, "/models").get("read_only")
    for name, service in cpu.items():
        assert gpu_ids(service) == [], name
        if is_ours(service):
            assert service["image"] == "cosyvoice-serving:cpu", name
    for stage in STAGES:
        service = cpu[stage]
        assert (env(service, "DEVICE"), env(service, "MODEL_DIR")) == ("cpu", "/models/tiny")
        models = mount(service, "/models")
        assert (models["type"], models["source"], models["read_only"]) == ("volume", "tiny-model", True)
        assert service["depends_on"]["tiny-model"]["condition"] == "service_completed_successfully"


def test_grafana_password_comes_from_env() -> None:
    missing = resolve(BASE_FILE, env={"GRAFANA_ADMIN_PASSWORD": ""})
    assert missing.code != 0 and "GRAFANA_ADMIN_PASSWORD" in missing.stderr
    chosen = resolve(BASE_FILE, env={"GRAFANA_ADMIN_PASSWORD": "s3cret"}).config["services"]["grafana"]
    assert chosen["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


def test_the_env_file_example_is_enough_for_every_command(tmp_path: Path) -> None:
    """deploy/.env.example copied to deploy/.env is read by every compose command, so the
    password need not be exported in each shell (docs/deploy.md tells operators to do this)."""
    project = tmp_path / "deploy"
    shutil.copytree(BASE_FILE.parent, project, ignore=shutil.ignore_patterns("k8s"))
    shutil.copy(project / ".env.example", project / ".env")
    # Nothing of the file's variables in the environment: an exported empty value would win.
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "COSYVOICE_"))}
    done = subprocess.run([str(COMPOSE_BINARY), "-f", str(project / "compose.yaml"), "config", "--format", "json"],
                          capture_output=True, text=True, env=environ, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    grafana = json.loads(done.stdout)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "change-me"


@pytest.mark.parametrize("broken", [
    "services:\n  llm:\n    deploy:\n      replicas: two\n",
    "services:\n  gateway:\n    depends_on:\n      llm: {condition: service_happy}\n",
    "services:\n  llm:\n    imagez: x\n",
])
def test_a_broken_file_is_refused(tmp_path: Path, broken: str) -> None:
    override = tmp_path / "broken.yaml"
    override.write_text(broken)
    result = resolve(BASE_FILE, override)
    assert result.code != 0 and result.stderr.strip(), result


def test_the_extra_gpu_example_adds_an_llm_on_its_own_gpu_under_the_llm_name() -> None:
    services = resolve(BASE_FILE, BASE_FILE.parent / "compose.llm-gpu3.yaml").config["services"]
    extra = services["llm-gpu3"]
    assert gpu_ids(extra) == ["3"], "one GPU, not the base llm's GPU 0 appended to it"
    assert gpu_ids(services["llm"]) == ["0"]
    assert extra["networks"]["stages"]["aliases"] == ["llm"]  # dns:///llm:50052 finds it too
    assert extra["command"] == ["serve", "llm"] and env(extra, "PORT") == "50052"
    assert mount(extra, "/models")["read_only"] is True
