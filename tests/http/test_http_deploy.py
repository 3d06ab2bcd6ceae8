"""The HTTP front in the deploy files: compose and Kubernetes run it as a client of the
gateway's Service, with settings its own config loader accepts and probes on /healthz and
/readyz. (Both files' general contracts are in tests/deploy.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.common.config import load_config
from services.http.config import HttpConfig
from tests.deploy import test_k8s as k8s
from tests.deploy.compose_runner import BASE_FILE, COMPOSE_BINARY, CPU_FILE, resolve

PROMETHEUS = Path(BASE_FILE).parent / "prometheus" / "prometheus.yml"


@pytest.mark.skipif(not COMPOSE_BINARY.exists(), reason="the docker compose binary comes with the test extras")
def test_compose_runs_the_front_against_the_gateway_service():
    for files in ((BASE_FILE,), (BASE_FILE, CPU_FILE)):
        services = resolve(*files).config["services"]
        http = services["http"]
        assert http["command"] == ["serve", "http"]
        settings = {k: v for k, v in http["environment"].items() if v is not None}
        config = load_config(HttpConfig, [], environ=settings)
        assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 8080, 9405)
        host, port = config.gateway_addr.rsplit(":", 1)
        assert host == "gateway" and set(http["networks"]) & set(services["gateway"]["networks"])
        assert http["depends_on"]["gateway"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(http["healthcheck"]["test"])
        assert "stages" not in http["networks"]  # the front never reaches the stages
        assert set(http["networks"]) & set(services["prometheus"]["networks"])  # scraped
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    assert jobs["http"]["dns_sd_configs"][0]["port"] == 9405


@pytest.mark.skipif(not (k8s.KUBECTL.exists() and k8s.VALIDATE.exists()), reason="kubectl comes with the test extras")
@pytest.mark.parametrize("name", k8s.OVERLAYS)
def test_kubernetes_probes_the_front_over_http_and_points_it_at_the_gateway(name):
    objects = k8s.docs(name)
    container = k8s.server(k8s.deployment(objects, "http"))
    settings = k8s.env(container)
    config = load_config(HttpConfig, [], environ=settings)
    gateway = k8s.named(objects, "Service", "gateway")
    host, port = config.gateway_addr.rsplit(":", 1)
    assert host == "gateway" and int(port) in {p["port"] for p in gateway["spec"]["ports"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.port, "metrics": config.metrics_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = k8s.named(objects, "Service", "http")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
