"""The contract between the vocoder servicer and its runner, free of torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


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
