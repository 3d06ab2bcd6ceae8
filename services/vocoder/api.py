"""The contract between the vocoder servicer and its runner, free of torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from services.common.request_limits import Range

# The playback speeds the reference's time stretch is meant for; gateway/modes.py offers the
# same range (MIN_SPEED, MAX_SPEED). Far outside it one chunk's audio grows without bound.
SPEED_RANGE = Range(0.5, 2.0)


@dataclass(frozen=True)
class AudioResult:
    samples: np.ndarray  # float32 mono in [-1, 1]
    compute_seconds: float


class Vocoder(Protocol):
    sample_rate: int
    mel_bins: int

    def open_stream(self, seed: int | None, speed: float = 1.0) -> Any: ...

    async def vocode(self, stream: Any, mel: np.ndarray, finalize: bool) -> AudioResult: ...

    def close_stream(self, stream: Any) -> None: ...
