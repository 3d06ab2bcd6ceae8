"""Flow stage settings (flags or COSYVOICE_FLOW_* environment variables)."""

from __future__ import annotations

import dataclasses

from services.common.config import check, metrics_port_setting, setting
from services.common.stage_config import BatchingStageConfig


@dataclasses.dataclass
class FlowServiceConfig(BatchingStageConfig):
    """The flow stage: speech tokens in, mel frames out."""

    ENV_PREFIX = "COSYVOICE_FLOW_"
    PROG = "cosyvoice serve flow"

    metrics_port: int = metrics_port_setting("flow")

    max_batch_padding: float = setting(1.2, "batch chunks only while padding costs at most this × their real length")

    def validate(self) -> None:
        super().validate()
        check(self.max_batch_padding >= 1.0, self, "max_batch_padding", "must be >= 1.0")
