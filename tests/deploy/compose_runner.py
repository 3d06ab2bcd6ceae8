"""Run a Compose file's own services as local processes: a smoke test without a container engine.

The file is resolved by the Compose v2 binary (`config --format json`), exactly as `docker
compose up` would read it. Each of our services (image `cosyvoice-serving:*`) then runs its
entrypoint + command with its environment, in depends_on order, each dependency's condition
waited for with the means Compose has: an init service's exit code, the service's own
healthcheck command. Only what cannot exist outside a container is rewritten, in one place
(`ContainerRewrites`): service hostnames, volume mount targets, and the image's `cosyvoice`
executable. Everything else (ports, settings, commands) is taken from the file as it is, so a
wrong port or a misspelt variable fails here as it would in a container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import compose

from services.common import die_with_parent
from tests.conftest import ROOT

COMPOSE_BINARY = Path(compose.__file__).resolve().parent / "docker-compose"
DEPLOY = ROOT / "deploy"
BASE_FILE = DEPLOY / "compose.yaml"
CPU_FILE = DEPLOY / "compose.cpu.yaml"
# Variables the files require (`${VAR:?}`); a smoke test needs some value, not a secret.
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "smoke-test-only"}
FILE_VARIABLE_PREFIXES = ("COSYVOICE_", "GRAFANA_", "PROMETHEUS_")
OUR_IMAGE = "cosyvoice-serving"
IMAGE_ENTRYPOINT = ["cosyvoice"]  # the Dockerfile's ENTRYPOINT, used when a service sets none
LOOPBACK = "127.0.0.1"


class ComposeError(RuntimeError):
    """A service that did not start, become healthy, or finish as its dependents require."""


@dataclass
class Resolved:
    code: int
    stdout: str
    stderr: str

    @property
    def config(self) -> dict[str, Any]:
        if self.code != 0:
            raise ComposeError(f"docker-compose config failed ({self.code}): {self.stderr.strip()}")
        return json.loads(self.stdout)


def resolve(*files: Path, env: dict[str, str] | None = None) -> Resolved:
    """`docker-compose -f ... config --format json` with the binary itself: the `docker-compose`
    console script pip installs beside it exits 0 even when the file is invalid."""
    command = [str(COMPOSE_BINARY)]
    for path in files:
        command += ["-f", str(path)]
    # The file's own defaults are under test: the host's settings for it are left out.
    host = {key: value for key, value in os.environ.items() if not key.startswith(FILE_VARIABLE_PREFIXES)}
    environ = {**host, **REQUIRED_ENV, **(env or {})}
    done = subprocess.run([*command, "config", "--format", "json"], capture_output=True, text=True, env=environ,
                          timeout=60, check=False)
    return Resolved(done.returncode, done.stdout, done.stderr)


def is_ours(service: dict[str, Any]) -> bool:
    """Services built from this repository's image; Prometheus and Grafana are not."""
    image = service.get("image", "").rsplit("/", 1)[-1]
    return image.split(":", 1)[0] == OUR_IMAGE


def start_order(services: dict[str, dict[str, Any]]) -> list[str]:
    """Every service after the services it depends on (ties by name); raises on a cycle."""
    waiting = {name: set(spec.get("depends_on") or {}) for name, spec in services.items()}
    order: list[str] = []
    while waiting:
        ready = sorted(name for name, needs in waiting.items() if needs <= set(order))
        if not ready:
            raise ComposeError(f"depends_on has a cycle among {sorted(waiting)}")
        order.append(ready[0])
        del waiting[ready[0]]
    return order


@dataclass
class ContainerRewrites:
    """What cannot exist outside a container, and what stands in for it on this machine.

    - Service hostnames (Docker's DNS) -> 127.0.0.1: every service listens on its own ports
      (the contract's table), so they can share the loopback interface.
    - Volume targets (/models, /var/cache/cosyvoice, /var/lib/cosyvoice) -> a directory per
      named volume (shared by the services that mount the same volume, as in Docker), or the
      bind mount's host path.
    - The image's `cosyvoice` executable -> this virtualenv's interpreter running the CLI module.
    """

    hostnames: list[str]
    volumes_dir: Path
    python: str = sys.executable

    def mounts(self, service: dict[str, Any]) -> dict[str, Path]:
        mounts = {}
        for volume in service.get("volumes") or []:
            if volume["type"] == "volume":
                source = self.volumes_dir / volume["source"]
                source.mkdir(parents=True, exist_ok=True)
            else:
                source = Path(volume["source"])
            mounts[volume["target"]] = source
        return mounts

    def text(self, value: str, mounts: dict[str, Path]) -> str:
        """A word or a shell script: the command word first, so no rewritten path is touched."""
        cli = f"{shlex.quote(self.python)} -m services.cli.main"
        value = re.sub(r"(?<![\w/.-])cosyvoice(?![\w/.-])", lambda _: cli, value)
        for name in self.hostnames:
            value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?=:\d)", LOOPBACK, value)
        # Longest target first: /models/x must not be cut at /models when both are mounted.
        for target in sorted(mounts, key=len, reverse=True):
            value = re.sub(rf"(?<![\w.-]){re.escape(target)}(?=/|$|[^\w.-])", lambda _: str(mounts[target]), value)
        return value

    def argv(self, words: list[str], mounts: dict[str, Path]) -> list[str]:
        out: list[str] = []
        for word in words:
            if word == "cosyvoice":
                out += [self.python, "-m", "services.cli.main"]
            else:
                out.append(self.text(word, mounts))
        return out

    def environment(self, service: dict[str, Any], mounts: dict[str, Path]) -> dict[str, str]:
        # The host's own COSYVOICE_* settings must not leak into a service: the file is the test.
        environ = {key: value for key, value in os.environ.items() if not key.startswith("COSYVOICE_")}
        for key, value in (service.get("environment") or {}).items():
            if value is not None:  # a bare name passes the host's value through; none here
                environ[key] = self.text(str(value), mounts)
        return environ


def healthcheck_argv(test: list[str] | None) -> list[str] | None:
    """The healthcheck as a command line, before rewriting; None when the service has none."""
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD":
        return list(test[1:])
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    return ["sh", "-c", " ".join(test)]


def service_ports(service: dict[str, Any]) -> dict[str, int]:
    """The ports a service's settings bind, by variable name (`*_PORT`, `*_METRICS_PORT`)."""
    ports = {}
    for key, value in (service.get("environment") or {}).items():
        if key.endswith("_PORT") and value is not None and str(value).isdigit() and int(value) > 0:
            ports[key] = int(value)
    return ports


@dataclass
class LocalProcess:
    name: str
    process: subprocess.Popen
    log: Path
    grace_seconds: float

    def tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class LocalCompose:
    """The resolved file's services as local processes; a context manager that stops them all."""

    config: dict[str, Any]
    workdir: Path
    ready_timeout: float = 300.0  # a hang guard for a loaded 2-core box, not a timing check
    processes: dict[str, LocalProcess] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    healthy: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = self.config["services"]
        self.rewrites = ContainerRewrites(sorted(self.services), self.workdir / "volumes")
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> LocalCompose:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def up(self) -> None:
        """Start every service of ours in depends_on order, each once its dependencies are met.

        One process per service, whatever `deploy.replicas` says: replicas of a service bind
        the same ports, which only separate containers can."""
        order = start_order(self.services)
        self.skipped = [name for name in order if not is_ours(self.services[name])]
        ours = [name for name in order if is_ours(self.services[name])]
        self._check_ports_free(ours)
        for name in ours:
            for dependency, spec in (self.services[name].get("depends_on") or {}).items():
                if dependency in ours:
                    self._wait_for(dependency, spec.get("condition", "service_started"))
            self._start(name)
        for name in ours:  # and what nothing depends on (the gateway) must become healthy too
            if healthcheck_argv((self.services[name].get("healthcheck") or {}).get("test")):
                self._wait_for(name, "service_healthy")

    def run_again(self, name: str) -> int:
        """Run a one-shot service again to completion (what `docker compose up` does to it)."""
        self._start(name)
        return self._wait_exit(name)

    def _check_ports_free(self, names: list[str]) -> None:
        import socket

        for name in names:
            for variable, port in service_ports(self.services[name]).items():
                with socket.socket() as probe:
                    if probe.connect_ex((LOOPBACK, port)) == 0:
                        raise ComposeError(f"port {port} ({name} {variable}) is taken by another process")

    def _start(self, name: str) -> None:
        spec = self.services[name]
        mounts = self.rewrites.mounts(spec)
        words = list(spec.get("entrypoint") or IMAGE_ENTRYPOINT) + list(spec.get("command") or [])
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("a") as out:
            # die_with_parent: a killed test run leaves no service holding the contract's ports.
            process = subprocess.Popen(die_with_parent.command(self.rewrites.argv(words, mounts)), cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT, env=self.rewrites.environment(spec, mounts),
                                       start_new_session=True)  # its own group: stop() ends its children too
        grace = _seconds(spec.get("stop_grace_period", "10s"))
        self.processes[name] = LocalProcess(name, process, log, grace)

    def _wait_for(self, name: str, condition: str) -> None:
        if condition == "service_completed_successfully":
            code = self._wait_exit(name)
            if code != 0:
                raise ComposeError(f"{name} exited with {code}:\n{self.processes[name].tail()}")
        elif condition == "service_healthy" and name not in self.healthy:
            self._wait_healthy(name)
            self.healthy.add(name)

    def _wait_exit(self, name: str) -> int:
        try:
            return self.processes[name].process.wait(timeout=self.ready_timeout)
        except subprocess.TimeoutExpired:
            raise ComposeError(f"{name} did not finish within {self.ready_timeout} s") from None

    def _wait_healthy(self, name: str) -> None:
        """Run the service's own healthcheck command until it exits 0 (or the service dies)."""
        spec, local = self.services[name], self.processes[name]
        mounts = self.rewrites.mounts(spec)
        argv = self.rewrites.argv(healthcheck_argv(spec["healthcheck"]["test"]) or [], mounts)
        deadline = time.monotonic() + self.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            if local.process.poll() is not None:
                raise ComposeError(f"{name} exited with {local.process.returncode} before it was healthy:\n{local.tail()}")
            check = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                                   env=self.rewrites.environment(spec, mounts))
            if check.returncode == 0:
                return
            last = (check.stderr or check.stdout).strip()
            time.sleep(1.0)
        raise ComposeError(f"{name} not healthy within {self.ready_timeout} s ({last}):\n{local.tail()}")

    def stop(self) -> None:
        """SIGTERM in reverse start order, SIGKILL after the service's stop_grace_period."""
        for local in reversed(list(self.processes.values())):
            if local.process.poll() is not None:
                continue
            os.killpg(local.process.pid, signal.SIGTERM)
            try:
                local.process.wait(timeout=local.grace_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(local.process.pid, signal.SIGKILL)
                local.process.wait()


def _seconds(duration: str) -> float:
    """A Compose duration as resolved ("15s", "1m0s", "1m30s") in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    return sum(float(number) * units[unit] for number, unit in parts) if parts else 10.0
