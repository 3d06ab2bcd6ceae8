"""Gateway settings (flags or COSYVOICE_GATEWAY_* environment variables)."""

from __future__ import annotations

import dataclasses

import os
from pathlib import Path

from gateway.auth import ApiKey, load_api_keys
from gateway.clients import AddressError, channel_target
from services.common.chunking import ChunkPolicy
from services.common.config import MIB, ServerConfig, check, metrics_port_setting, setting, setting_names
from services.common.tls import ClientTls, load_client_tls


DEFAULT_SPEAKER_DB = Path(os.environ.get("COSYVOICE_CACHE", Path.home() / ".cache" / "cosyvoice")) / "speakers.db"


@dataclasses.dataclass
class GatewayConfig(ServerConfig):
    """The public TextToSpeech gateway."""

    ENV_PREFIX = "COSYVOICE_GATEWAY_"
    PROG = "cosyvoice serve gateway"

    metrics_port: int = metrics_port_setting("gateway")
    # In: a prompt upload up to the frontend's max_audio_bytes (32 MiB) with its text, or a
    # spk2info import; as large as the frontend accepts, which it is relayed to. Out: one
    # non-streaming response carries the whole audio; speaker exports (docs/limits.md).
    max_receive_message_bytes: int = setting(
        40 * MIB, "largest gRPC message accepted (a prompt upload, a spk2info import); the frontend's must be as large"
    )
    max_send_message_bytes: int = setting(64 * MIB, "largest gRPC message sent (non-streaming audio, exports)")

    llm_addr: str = setting("", "the LLM stage (required): host:port, IP:PORT,IP:PORT or dns:///NAME:PORT for replicas")
    flow_addr: str = setting("", "the flow stage (required): host:port, IP:PORT,IP:PORT or dns:///NAME:PORT")
    vocoder_addr: str = setting("", "the vocoder stage (required): host:port, IP:PORT,IP:PORT or dns:///NAME:PORT")
    frontend_addr: str = setting("", "the frontend stage (required): host:port, IP:PORT,IP:PORT or dns:///NAME:PORT")
    speaker_db: str = setting(
        str(DEFAULT_SPEAKER_DB), "registered speakers: a SQLite file (created if missing) or :memory:"
    )
    max_text_chars: int = setting(2000, "longest accepted text, in characters")
    max_concurrent_requests: int = setting(64, "requests in flight before RESOURCE_EXHAUSTED")
    stage_queue_chunks: int = setting(4, "bounded queue depth between stages, in chunks (backpressure)")
    token_hop: int = setting(25, "first streaming hop in tokens (the flow's static chunk size)")
    max_token_hop: int = setting(100, "largest streaming hop in tokens")
    hop_scale_factor: int = setting(2, "hop growth per chunk")
    lookahead_tokens: int = setting(3, "tokens withheld as look-ahead (the flow's pre_lookahead_len)")
    upstream_timeout_seconds: float = setting(300.0, "deadline of one request's stage calls")
    # Security (docs/security.md): keys checked on every public method, TLS towards the stages.
    api_keys_file: str = setting(
        "", "file of API keys, one `KEY [synthesize]` a line; set: every call but health and reflection needs a key"
    )
    stage_tls_ca: str = setting("", "PEM CA that signed the stages' certificates; set: the stages are dialled with TLS")
    stage_tls_cert: str = setting("", "PEM client certificate the gateway presents to the stages (mutual TLS)")
    stage_tls_key: str = setting("", "PEM private key of --stage-tls-cert")
    stage_tls_server_name: str = setting(
        "", "the name the stages' certificates are issued for, when it is not the host of their addresses"
    )

    def validate(self) -> None:
        super().validate()
        for name in ("llm_addr", "flow_addr", "vocoder_addr", "frontend_addr"):
            check(":" in getattr(self, name), self, name, "is required, as host:port")
            try:
                channel_target(getattr(self, name))
            except AddressError as exc:
                check(False, self, name, str(exc))
        check(self.max_text_chars >= 1, self, "max_text_chars", "must be >= 1")
        check(self.max_concurrent_requests >= 1, self, "max_concurrent_requests", "must be >= 1")
        check(self.stage_queue_chunks >= 1, self, "stage_queue_chunks", "must be >= 1")
        # The vocoder keeps 8 mel frames (4 tokens) of context between chunks.
        check(self.token_hop >= 4, self, "token_hop", "must be >= 4 (the vocoder's 8-frame cache)")
        check(self.max_token_hop >= self.token_hop, self, "max_token_hop", "must be >= token_hop")
        check(self.hop_scale_factor >= 1, self, "hop_scale_factor", "must be >= 1")
        check(self.lookahead_tokens >= 0, self, "lookahead_tokens", "must be >= 0")
        check(self.upstream_timeout_seconds > 0, self, "upstream_timeout_seconds", "must be > 0")
        check(bool(self.speaker_db.strip()), self, "speaker_db", "must be a file path or :memory:")

    @property
    def chunk_policy(self) -> ChunkPolicy:
        return ChunkPolicy(self.token_hop, self.max_token_hop, self.hop_scale_factor, self.lookahead_tokens)

    def stage_tls(self) -> ClientTls | None:
        """TLS towards the stages, read from the files now (once, at start); None: plaintext."""
        names = {n: setting_names(type(self), f"stage_tls_{n}") for n in ("ca", "cert", "key", "server_name")}
        return load_client_tls(
            self.stage_tls_ca, self.stage_tls_cert, self.stage_tls_key, self.stage_tls_server_name, names
        )

    def api_keys(self) -> list[ApiKey] | None:
        """The keys file, read now (once, at start); None: no keys are checked."""
        if not self.api_keys_file:
            return None
        return load_api_keys(self.api_keys_file, setting_names(type(self), "api_keys_file"))
