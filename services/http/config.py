"""HTTP front settings (flags or COSYVOICE_HTTP_* environment variables), docs/http.md."""

from __future__ import annotations

import dataclasses

from services.common.config import MIB, check, metrics_port_setting, setting, setting_names
from services.common.tls import ClientTls, load_client_tls

DEFAULT_HTTP_PORT = 8080


@dataclasses.dataclass
class HttpConfig:
    """The HTTP front: OpenAI-compatible speech, voices, native modes and a WebSocket text stream,
    all as a client of the gateway's public gRPC API."""

    ENV_PREFIX = "COSYVOICE_HTTP_"
    PROG = "cosyvoice serve http"

    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0 in containers)")
    port: int = setting(DEFAULT_HTTP_PORT, "HTTP port; 0 picks a free one")
    metrics_port: int = metrics_port_setting("http")
    metrics_host: str = setting("", "interface the /metrics HTTP server listens on; empty: the same as --host")
    gateway_addr: str = setting("127.0.0.1:50051", "the gateway's public gRPC address, host:port")
    gateway_tls_ca: str = setting("", "PEM CA that signed the gateway's certificate; set: the gateway is dialled with TLS")
    gateway_tls_cert: str = setting("", "PEM client certificate presented to the gateway (a port with mutual TLS)")
    gateway_tls_key: str = setting("", "PEM private key of --gateway-tls-cert")
    gateway_tls_server_name: str = setting(
        "", "the name the gateway's certificate is issued for, when it is not the host of --gateway-addr"
    )
    cors_origins: str = setting(
        "", "comma-separated origins a browser may call from (e.g. https://app.example); * allows any; empty: none"
    )
    max_body_bytes: int = setting(MIB, "largest JSON or form body without a file upload; larger gets 413")
    max_upload_bytes: int = setting(
        32 * MIB, "largest multipart body (a prompt recording and its fields); larger gets 413"
    )
    max_ws_message_bytes: int = setting(64 * 1024, "largest WebSocket message (a text piece, the start message)")
    request_timeout_seconds: float = setting(600.0, "deadline of one gateway call (a whole synthesis)")
    ready_timeout_seconds: float = setting(2.0, "how long /readyz waits for the gateway's health answer")
    grace_seconds: float = setting(10.0, "on SIGTERM, how long in-flight requests may finish")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_json: bool = setting(False, "log one JSON object per line")

    @property
    def metrics_bind_host(self) -> str:
        return self.metrics_host or self.host

    @property
    def allowed_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def validate(self) -> None:
        check(0 <= self.port <= 65535, self, "port", "must be in 0..65535")
        check(-1 <= self.metrics_port <= 65535, self, "metrics_port", "must be -1 or in 0..65535")
        check(":" in self.gateway_addr and not any(c.isspace() for c in self.gateway_addr), self, "gateway_addr",
              "must be host:port")
        check(self.max_body_bytes >= 1024, self, "max_body_bytes", "must be >= 1024")
        check(self.max_upload_bytes >= 1024, self, "max_upload_bytes", "must be >= 1024")
        check(self.max_ws_message_bytes >= 1024, self, "max_ws_message_bytes", "must be >= 1024")
        check(self.request_timeout_seconds > 0, self, "request_timeout_seconds", "must be > 0")
        check(self.ready_timeout_seconds > 0, self, "ready_timeout_seconds", "must be > 0")
        check(self.grace_seconds >= 0, self, "grace_seconds", "must be >= 0")
        check(self.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), self, "log_level",
              "must be DEBUG, INFO, WARNING or ERROR")
        self.gateway_tls()  # a bad certificate file stops the process now, naming the setting

    def gateway_tls(self) -> ClientTls | None:
        """TLS towards the gateway, read from the files now; None: plaintext."""
        names = {n: setting_names(type(self), f"gateway_tls_{n}") for n in ("ca", "cert", "key", "server_name")}
        return load_client_tls(
            self.gateway_tls_ca, self.gateway_tls_cert, self.gateway_tls_key, self.gateway_tls_server_name, names
        )
