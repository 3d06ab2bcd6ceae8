"""Typed service config from command-line flags or `COSYVOICE_<SERVICE>_*` environment variables.

Each service declares one dataclass; every field is a setting, read from `--field-name` (wins)
or `COSYVOICE_<SERVICE>_FIELD_NAME`, else its default. Values are converted by the field's
type and checked by the dataclass's `validate()`. Every error names the setting both ways, so
an operator can find it whichever way they set it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar


class ConfigError(ValueError):
    """A setting with a bad value; the message names the flag and the environment variable."""


MIB = 1024 * 1024


def setting(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field with help text (shown by --help)."""
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


# Each service's fixed /metrics port (its config's default; compose, Kubernetes and
# `cosyvoice up` use the same numbers, docs/metrics.md lists them).
DEFAULT_METRICS_PORTS = {"gateway": 9400, "llm": 9401, "flow": 9402, "vocoder": 9403, "frontend": 9404, "http": 9405}


def metrics_port_setting(service: str) -> Any:
    """A service's metrics_port field: its fixed port by default."""
    return setting(DEFAULT_METRICS_PORTS[service], "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables")


@dataclasses.dataclass
class ServerConfig:
    """Settings every gRPC process has."""

    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0 in containers)")
    port: int = setting(0, "gRPC port; 0 picks a free one")
    metrics_port: int = setting(-1, "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables")
    metrics_host: str = setting("", "interface the /metrics HTTP server listens on; empty: the same as --host")
    grace_seconds: float = setting(
        10.0, "drain timeout: on SIGTERM, how long in-flight streams may finish before they are cut with UNAVAILABLE"
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_json: bool = setting(False, "log one JSON object per line")
    # Security (docs/security.md). The files are read once, when the server starts.
    tls_cert: str = setting("", "PEM certificate (chain) of the gRPC port; with --tls-key the port serves TLS only")
    tls_key: str = setting("", "PEM private key of --tls-cert (unencrypted)")
    tls_client_ca: str = setting(
        "", "PEM CA certificates; set: clients must present a certificate signed by one (mutual TLS)"
    )
    reflection: bool = setting(True, "serve gRPC server reflection (grpcurl list/describe); false turns it off")
    # Each service overrides both with what its largest legitimate message needs (docs/limits.md).
    max_receive_message_bytes: int = setting(
        4 * MIB, "largest gRPC message this server accepts; a larger one gets RESOURCE_EXHAUSTED"
    )
    max_send_message_bytes: int = setting(4 * MIB, "largest gRPC message this server sends")

    @property
    def metrics_bind_host(self) -> str:
        """Where /metrics listens: its own interface (e.g. 0.0.0.0 for a scraper while gRPC stays
        private), else gRPC's."""
        return self.metrics_host or self.host

    def validate(self) -> None:
        check(0 <= self.port <= 65535, self, "port", "must be in 0..65535")
        check(-1 <= self.metrics_port <= 65535, self, "metrics_port", "must be -1 or in 0..65535")
        check(not any(c.isspace() for c in self.metrics_host), self, "metrics_host", "must not contain spaces")
        check(self.grace_seconds >= 0, self, "grace_seconds", "must be >= 0")
        check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), self, "log_level",
              "must be DEBUG, INFO, WARNING or ERROR")
        for name in ("max_receive_message_bytes", "max_send_message_bytes"):
            check(64 * 1024 <= getattr(self, name) <= 2**31 - 1, self, name, "must be in 65536..2147483647")


def setting_names(config_type: type, name: str) -> str:
    prefix = getattr(config_type, "ENV_PREFIX", "COSYVOICE_")
    return f"--{name.replace('_', '-')} / {prefix}{name.upper()}"


def check(ok: bool, config: Any, name: str, problem: str) -> None:
    if not ok:
        value = getattr(config, name)
        raise ConfigError(f"{setting_names(type(config), name)} {problem} (got {value!r})")


def _convert(raw: str, kind: Any, label: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [t for t in typing.get_args(kind) if t is not type(None)]
        if raw == "" or raw.lower() == "none":
            return None
        return _convert(raw, inner[0], label)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind in (int, float, str):
            return kind(raw)
        if kind is Path:
            return Path(raw).expanduser()
    except ValueError:
        raise ConfigError(f"{label}: cannot read {raw!r} as {getattr(kind, '__name__', kind)}") from None
    raise TypeError(f"{label}: unsupported setting type {kind}")


C = TypeVar("C")


def load_config(
    config_type: type[C], argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> C:
    """Build and validate a config: flags > environment > defaults."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(config_type)
    prefix = getattr(config_type, "ENV_PREFIX", "COSYVOICE_")
    parser = argparse.ArgumentParser(
        prog=getattr(config_type, "PROG", None),
        description=(config_type.__doc__ or "").strip(),
        argument_default=argparse.SUPPRESS,
    )
    fields = dataclasses.fields(config_type)  # type: ignore[arg-type]
    for field in fields:
        flag = f"--{field.name.replace('_', '-')}"
        help_text = f"{field.metadata.get('help', '')} [env {prefix}{field.name.upper()}; default {field.default!r}]"
        parser.add_argument(flag, dest=field.name, metavar=field.name.upper(), help=help_text)
    flags = vars(parser.parse_args(list(argv) if argv is not None else []))
    values: dict[str, Any] = {}
    for field in fields:
        label = setting_names(config_type, field.name)
        if field.name in flags:
            values[field.name] = _convert(flags[field.name], hints[field.name], label)
        elif f"{prefix}{field.name.upper()}" in environ:
            values[field.name] = _convert(environ[f"{prefix}{field.name.upper()}"], hints[field.name], label)
    for warning in unknown_settings(config_type, environ):
        print(f"{getattr(config_type, 'PROG', None) or 'cosyvoice'}: warning: {warning}", file=sys.stderr)
    config = config_type(**values)
    config.validate()  # type: ignore[attr-defined]
    return config


def unknown_settings(config_type: type, environ: Mapping[str, str]) -> list[str]:
    """Variables with this service's prefix that name no setting: a typo in a compose file or
    a manifest would otherwise be ignored without a word. Warned about, not refused: the compose
    files' own variables (e.g. COSYVOICE_LLM_GPU) share the prefix and may be exported too."""
    prefix = getattr(config_type, "ENV_PREFIX", "COSYVOICE_")
    names = [f"{prefix}{field.name.upper()}" for field in dataclasses.fields(config_type)]
    warnings = []
    for key in sorted(environ):
        if key.startswith(prefix) and key not in names:
            # Compare without the shared prefix, or every short name looks close to every other.
            close = difflib.get_close_matches(key[len(prefix):], [n[len(prefix):] for n in names], n=1, cutoff=0.8)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            warnings.append(f"{key} is not a setting of this service; ignored{hint}")
    return warnings
