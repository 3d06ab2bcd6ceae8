"""Flow stage settings (flags or COSYVOICE_FLOW_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import check, setting
from services.common.stage_config import StageConfig


@dataclasses.dataclass
class FlowServiceConfig(StageConfig):
    """The flow stage: speech tokens in, mel frames out."""

    ENV_PREFIX = "COSYVOICE_FLOW_"
    PROG = "cosyvoice serve flow"

    max_batch_size: int = setting(8, "token chunks of concurrent streams decoded in one call")
    max_batch_wait_ms: float = setting(0.0, "how long a chunk may wait for others to batch with")
    max_batch_padding: float = setting(1.2, "batch chunks only while padding costs at most this × their real length")

    def validate(self) -> None:
        super().validate()
        check(self.max_batch_size >= 1, self, "max_batch_size", "must be >= 1")
        check(self.max_batch_wait_ms >= 0, self, "max_batch_wait_ms", "must be >= 0")
        check(self.max_batch_padding >= 1.0, self, "max_batch_padding", "must be >= 1.0")
