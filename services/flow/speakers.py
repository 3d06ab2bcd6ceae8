"""Preset speakers of a model directory (`spk2info.pt`), as the flow stage uses them."""

from __future__ import annotations

from pathlib import Path

import torch

from services.common.errors import NotFound
from services.common.modeldir.checkpoint import CheckpointError
from services.flow.chunk_decoder import SPEAKER_EMBED_DIM


class SpeakerTable:
    """speaker id → CAM++ x-vector. sft mode needs only the embedding (cosyvoice-facts §3.3)."""

    def __init__(self, embeddings: dict[str, torch.Tensor]) -> None:
        self.embeddings = embeddings
        self.default_id = next(iter(embeddings), None)

    @classmethod
    def load(cls, path: Path | None) -> "SpeakerTable":
        if path is None:
            return cls({})
        try:
            info = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds for bad pickles
            raise CheckpointError(f"cannot read speaker table {path}: {exc}") from exc
        embeddings = {}
        for speaker_id, entry in dict(info).items():
            embedding = entry.get("embedding", entry.get("flow_embedding")) if isinstance(entry, dict) else None
            if not isinstance(embedding, torch.Tensor) or embedding.numel() != SPEAKER_EMBED_DIM:
                raise CheckpointError(f"{path}: speaker {speaker_id!r} has no {SPEAKER_EMBED_DIM}-dim 'embedding'")
            embeddings[str(speaker_id)] = embedding.reshape(SPEAKER_EMBED_DIM).float()
        return cls(embeddings)

    def embedding(self, speaker_id: str | None) -> torch.Tensor:
        key = speaker_id or self.default_id
        if key is None:
            raise NotFound("this model has no preset speakers (no spk2info.pt): a voice prompt is required")
        if key not in self.embeddings:
            known = ", ".join(sorted(self.embeddings)[:10])
            raise NotFound(f"speaker_id {key!r} is not a preset speaker of this model (known: {known})")
        return self.embeddings[key]
