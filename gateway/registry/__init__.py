"""The speaker registry: voices registered once and used by name afterwards (torch-free)."""

from gateway.registry.store import (
    MemorySpeakerStore,
    SpeakerStore,
    SpeakerStoreError,
    SqliteSpeakerStore,
    open_speaker_store,
)
from services.common.speakers import SpeakerExists, SpeakerRecord

__all__ = [
    "MemorySpeakerStore",
    "SpeakerExists",
    "SpeakerRecord",
    "SpeakerStore",
    "SpeakerStoreError",
    "SqliteSpeakerStore",
    "open_speaker_store",
]
