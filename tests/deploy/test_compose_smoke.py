"""Compose smoke test without an engine: the CPU variant's services as local processes.

`tests/deploy/compose_runner.py` starts what the resolved file says (commands, environment,
ports, healthchecks, depends_on), so a wrong port, setting or command fails here. Prometheus
and Grafana are not our processes: their files are checked instead (promtool; the Grafana
provisioning against the compose mounts and the dashboard's structure).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import wave
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.deploy.compose_runner import BASE_FILE, CPU_FILE, LOOPBACK, LocalCompose, resolve, service_ports

STAGES = ("llm", "flow", "vocoder", "frontend")


def metrics_port(service: dict[str, Any]) -> int:
    ports = [port for name, port in service_ports(service).items() if name.endswith("_METRICS_PORT")]
    assert len(ports) == 1, service.get("environment")
    return ports[0]


def scrape(port: int) -> dict[str, list]:
    """The samples of every family a /metrics endpoint serves, by family name."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def published_gateway_address(gateway: dict[str, Any]) -> str:
    # Locally the process binds the container port; it is the host port too only when the file
    # publishes it unchanged, which test_compose_config asserts for the defaults.
    (port,) = gateway["ports"]
    assert str(port["published"]) == str(port["target"]), port
    return f"{LOOPBACK}:{port['target']}"


@pytest.mark.slow  # five processes importing torch, a tiny model written, one synthesis: about a minute
def test_cpu_variant_serves_as_local_processes(tmp_path: Path) -> None:
    config = resolve(BASE_FILE, CPU_FILE).config
    services = config["services"]
    with LocalCompose(config, tmp_path) as stack:
        stack.up()  # every healthcheck command passed, in depends_on order
        assert set(stack.skipped) == {"prometheus", "grafana"}
        assert set(stack.processes) == {"tiny-model", *STAGES, "gateway", "http"}
        assert stack.processes["tiny-model"].process.returncode == 0

        model = tmp_path / "volumes" / "tiny-model" / "tiny"
        out = tmp_path / "hello.wav"
        synth = subprocess.run(
            [sys.executable, "-m", "services.cli.main", "synth", "Hello from compose.", "-o", str(out),
             "--prompt-audio", str(model / "prompt_sample.wav"),
             "--prompt-text", (model / "prompt_sample.txt").read_text().strip(),
             "--address", published_gateway_address(services["gateway"])],
            cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        )
        assert synth.returncode == 0, synth.stderr
        with wave.open(str(out)) as wav:
            assert wav.getframerate() == 24000 and wav.getnframes() > 0

        (http_port,) = services["http"]["ports"]  # the HTTP front, through the gateway
        request = urllib.request.Request(f"http://{LOOPBACK}:{http_port['target']}/v1/audio/speech", method="POST",
                                         data=json.dumps({"input": "Hi.", "response_format": "pcm"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as reply:
            assert reply.status == 200 and len(reply.read()) > 0

        for name in (*STAGES, "gateway", "http"):
            families = scrape(metrics_port(services[name]))
            assert any(family.startswith(f"cosyvoice_{name}_") for family in families), (name, sorted(families))
        requests = scrape(metrics_port(services["gateway"]))["cosyvoice_gateway_requests"]
        assert any(s.name.endswith("_total") and s.labels.get("code") == "OK" and s.value >= 1 for s in requests)

        # The init service again, as every `up` reruns it: the model is there, nothing rewritten.
        written = (model / "llm.pt").stat().st_mtime_ns
        assert stack.run_again("tiny-model") == 0
        assert (model / "llm.pt").stat().st_mtime_ns == written
    for local in stack.processes.values():
        assert local.process.poll() is not None, f"{local.name} still running after stop"


def _mount_source(service: dict[str, Any], target: str) -> Path:
    (source,) = [Path(v["source"]) for v in service["volumes"] if v["target"] == target]
    return source


def test_prometheus_config_is_valid() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    prometheus = resolve(BASE_FILE, CPU_FILE).config["services"]["prometheus"]
    path = _mount_source(prometheus, "/etc/prometheus/prometheus.yml")
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_prometheus_scrapes_every_service_of_ours_on_its_metrics_port() -> None:
    services = resolve(BASE_FILE).config["services"]
    path = _mount_source(services["prometheus"], "/etc/prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert set(jobs) == {*STAGES, "gateway", "http"}
    for name, job in jobs.items():
        (sd,) = job["dns_sd_configs"]  # one target per replica: Docker's DNS answers with each one's address
        assert (sd["names"], sd["type"], sd["port"]) == ([name], "A", metrics_port(services[name]))


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    services = resolve(BASE_FILE).config["services"]
    grafana = services["grafana"]
    provisioning = _mount_source(grafana, "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert set(services["prometheus"]["networks"]) & set(grafana["networks"]), "Grafana cannot reach Prometheus"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "cosyvoice.yaml").read_text())["providers"]
    dashboards = _mount_source(grafana, provider["options"]["path"])
    files = sorted(dashboards.glob("*.json"))
    assert files, f"no dashboard in {dashboards}"
    for path in files:
        problems = dashboard_problems(json.loads(path.read_text()), datasource["uid"])
        assert not problems, f"{path.name}: {problems}"


def dashboard_problems(dashboard: dict[str, Any], datasource_uid: str) -> list[str]:
    """What would make Grafana refuse or misdraw the dashboard: structure, ids, layout, queries."""
    problems = [f"missing {key}" for key in ("uid", "title", "panels", "schemaVersion") if key not in dashboard]
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("current", {}).get("value") != datasource_uid:
        problems.append(f"the datasource variable does not default to the provisioned uid {datasource_uid!r}")
    ids = [panel.get("id") for panel in dashboard.get("panels", [])]
    if len(set(ids)) != len(ids) or None in ids:
        problems.append("panel ids are missing or repeated")
    for panel in dashboard.get("panels", []):
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
            problems.append(f"panel {panel.get('title')!r} has a bad gridPos {grid}")
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"panel {panel.get('title')!r} has no query")
        refs = [target.get("refId") for target in targets]
        if len(set(refs)) != len(refs) or not all(target.get("expr") for target in targets):
            problems.append(f"panel {panel.get('title')!r} has a query without expr or a repeated refId")
    return problems
