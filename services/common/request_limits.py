"""Checks every stage applies at its door to fields any caller may set (torch-free).

The gateway never sends values outside these ranges, but a stage can be called directly
(its port is reachable inside a cluster), so each stage checks every field itself and names
the field and the allowed range in INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import InvalidRequest
from services.common.speakers import MAX_NAME_CHARS

# Request ids are echoed in logs; the gateway's are 16 hex digits plus a segment suffix.
MAX_REQUEST_ID_CHARS = 128


def check_request_id(value: str, field: str = "request_id") -> None:
    if len(value) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(f"{field}: {len(value)} characters exceed the limit of {MAX_REQUEST_ID_CHARS}")


def check_speaker_id(value: str, field: str = "speaker_id") -> None:
    if len(value) > MAX_NAME_CHARS:  # no speaker has a longer name: refused before any lookup
        raise InvalidRequest(f"{field}: {len(value)} characters exceed the limit of {MAX_NAME_CHARS}")


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval of allowed values."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


def check_range(value: float, allowed: Range, field: str) -> None:
    if value not in allowed:
        raise InvalidRequest(f"{field}: {value:g} is outside {allowed}")
