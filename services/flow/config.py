"""Flow stage settings (flags or COSYVOICE_FLOW_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.backends.settings import BackendStageConfig
from services.common.config import MIB, check, metrics_port_setting, setting


@dataclasses.dataclass
class FlowServiceConfig(BackendStageConfig):  # backend settings: docs/backends.md
    """The flow stage: speech tokens in, mel frames out."""

    ENV_PREFIX = "COSYVOICE_FLOW_"
    PROG = "cosyvoice serve flow"

    metrics_port: int = metrics_port_setting("flow")
    # The flow's own frame limit (CosyVoice 2: 15000 mel frames, 300 s) bounds both ways: a
    # prompt mel or a non-streaming request's one mel chunk is at most 15000 × 80 × 4 B = 4.8 MB.
    # (The gateway's prompts are at most 30 s: 480 kB.)
    max_receive_message_bytes: int = setting(8 * MIB, "largest gRPC message accepted (voice prompt, token chunk)")
    max_send_message_bytes: int = setting(8 * MIB, "largest gRPC message sent (a mel chunk)")

    max_batch_padding: float = setting(1.2, "batch chunks only while padding costs at most this × their real length")
    # docs/incremental-flow.md: exact within float rounding; the caches grow with each stream.
    incremental: bool = setting(True, "non-final streaming chunks reuse the stream's flow caches, not a re-run of the prefix")
    incremental_cache_mib: int = setting(4096, "flow caches of all streams together; past it a stream re-runs its prefix")
    incremental_chunked_final: bool = setting(False, "approximate: the final chunk keeps chunk masks and caches (upstream: full attention)")

    def validate(self) -> None:
        super().validate()
        check(self.max_batch_padding >= 1.0, self, "max_batch_padding", "must be >= 1.0")
        check(self.incremental_cache_mib >= 0, self, "incremental_cache_mib", "must be >= 0")
