"""A registered voice: what one prompt (audio + transcript) turns into, kept for reuse by name.

Torch-free on purpose: the gateway owns the speaker registry and never imports torch. A record is
what the reference's `add_zero_shot_spk` caches (cosyvoice-facts §7.7), reduced to one copy of each
array: the LLM and the flow get the same (truncated) prompt tokens, and v2/v3 ignore the LLM's
copy of the embedding (§3.3), so one token list and one embedding are enough.

Shapes follow the v2 frontend's 2:1 alignment (§7.5): N speech tokens at 25 Hz pair with exactly
2N prompt-mel frames at 50 Hz. An sft-only preset (a `{'embedding': (1, 192)}` entry of an SFT
model's spk2info.pt) has N = 0, an empty mel and an empty prompt_text.

Speaker names (checked by `validate`; one rule set for every store and file format):
- 1 to 128 characters (code points);
- printable only (`str.isprintable`): no control characters, no line breaks or tabs;
- no '/' (names may become path segments or URL parts in tools and exports);
- no leading or trailing whitespace (two names that differ only there would look identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

SPEECH_VOCAB_SIZE = 6561  # S3Tokenizer v2/v3 codebook, 3^8 (cosyvoice-facts §1.2)
MEL_BINS = 80
EMBEDDING_DIM = 192  # CAM++ x-vector
MEL_FRAMES_PER_TOKEN = 2
MAX_NAME_CHARS = 128
# The reference refuses prompts over 30 s (750 tokens); twice that bounds what a store must hold.
MAX_PROMPT_TOKENS = 1500
MAX_PROMPT_TEXT_CHARS = 4096


@dataclass(frozen=True, eq=False)
class SpeakerRecord:
    """One voice. Treat the arrays as immutable: stores hand out read-only arrays.

    `created_at` is seconds since the epoch, stamped by whoever registers the voice (file formats
    do not carry it). `preset` marks voices that came with the model rather than from a user.
    """

    name: str
    prompt_text: str
    speech_tokens: np.ndarray  # int32 [N]
    prompt_mel: np.ndarray  # float32 [2N, 80]
    embedding: np.ndarray  # float32 [192]
    created_at: float = 0.0
    preset: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.speech_tokens.shape[0])

    @property
    def is_embedding_only(self) -> bool:
        """True for sft-style presets: no prompt, so zero-shot prompting is not possible."""
        return self.num_tokens == 0

    def same_voice(self, other: "SpeakerRecord") -> bool:
        """Equal in everything but `created_at` (which file round trips do not keep)."""
        return (
            self.name == other.name
            and self.prompt_text == other.prompt_text
            and self.preset == other.preset
            and _same_array(self.speech_tokens, other.speech_tokens)
            and _same_array(self.prompt_mel, other.prompt_mel)
            and _same_array(self.embedding, other.embedding)
        )

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare arrays elementwise and fail on truth testing.
        if not isinstance(other, SpeakerRecord):
            return NotImplemented
        return self.same_voice(other) and self.created_at == other.created_at

    __hash__ = None  # type: ignore[assignment]  # arrays are not hashable either


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


class SpeakerExists(Exception):
    """`put` without overwrite found a speaker of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"speaker {name!r} already exists")
        self.name = name


def validate_name(name: object) -> None:
    """Raise ValueError("name: ...") unless `name` follows the rules in the module docstring."""
    if not isinstance(name, str):
        raise ValueError(f"name: expected a str, got {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ValueError(f"name: must be 1 to {MAX_NAME_CHARS} characters, got {len(name)}")
    if not name.isprintable():
        raise ValueError(f"name: {name!r} contains a control or non-printable character")
    if "/" in name:
        raise ValueError(f"name: {name!r} contains '/'")
    if name != name.strip():
        raise ValueError(f"name: {name!r} has leading or trailing whitespace")


def _check_array(field: str, value: object, dtype: type, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{field}: expected a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise ValueError(f"{field}: expected dtype {np.dtype(dtype)}, got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{field}: expected {ndim} dimension(s), got shape {value.shape}")
    return value


def validate(record: SpeakerRecord) -> None:
    """Raise ValueError naming the first bad field ("speech_tokens: ..."); return None if sound.

    Called by every store's `put` and by the spk2info reader, so a bad voice is refused when it
    arrives, not when a synthesis request finally uses it.
    """
    validate_name(record.name)
    if not isinstance(record.prompt_text, str):
        raise ValueError(f"prompt_text: expected a str, got {type(record.prompt_text).__name__}")
    if len(record.prompt_text) > MAX_PROMPT_TEXT_CHARS:
        raise ValueError(f"prompt_text: longer than {MAX_PROMPT_TEXT_CHARS} characters")
    if "\x00" in record.prompt_text:
        raise ValueError("prompt_text: contains a NUL character")

    tokens = _check_array("speech_tokens", record.speech_tokens, np.int32, 1)
    num_tokens = tokens.shape[0]
    if num_tokens > MAX_PROMPT_TOKENS:
        raise ValueError(f"speech_tokens: {num_tokens} tokens, more than {MAX_PROMPT_TOKENS} (60 s)")
    if num_tokens:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= SPEECH_VOCAB_SIZE:
            bad = low if low < 0 else high
            raise ValueError(f"speech_tokens: token {bad} outside [0, {SPEECH_VOCAB_SIZE})")
    elif record.prompt_text:
        # A transcript without its audio tokens cannot be aligned with anything.
        raise ValueError("prompt_text: must be empty when there are no speech_tokens")

    mel = _check_array("prompt_mel", record.prompt_mel, np.float32, 2)
    expected = (MEL_FRAMES_PER_TOKEN * num_tokens, MEL_BINS)
    if mel.shape != expected:
        raise ValueError(
            f"prompt_mel: expected shape {expected} (2 frames per speech token), got {mel.shape}"
        )
    if not np.isfinite(mel).all():
        raise ValueError("prompt_mel: contains NaN or infinity")

    embedding = _check_array("embedding", record.embedding, np.float32, 1)
    if embedding.shape != (EMBEDDING_DIM,):
        raise ValueError(f"embedding: expected shape ({EMBEDDING_DIM},), got {embedding.shape}")
    if not np.isfinite(embedding).all():
        raise ValueError("embedding: contains NaN or infinity")
    if not np.any(embedding):
        # The flow L2-normalizes the x-vector; an all-zero vector has no direction.
        raise ValueError("embedding: is all zeros")

    if not isinstance(record.created_at, (int, float)) or isinstance(record.created_at, bool):
        raise ValueError(f"created_at: expected a float, got {type(record.created_at).__name__}")
    if not math.isfinite(record.created_at) or record.created_at < 0:
        raise ValueError(f"created_at: must be a finite, non-negative time, got {record.created_at}")
    if not isinstance(record.preset, bool):
        raise ValueError(f"preset: expected a bool, got {type(record.preset).__name__}")


def frozen_copy(record: SpeakerRecord) -> SpeakerRecord:
    """The same record over private, read-only copies of its arrays (what stores keep and return)."""
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    for key in ("speech_tokens", "prompt_mel", "embedding"):
        array = np.array(values[key], copy=True)
        array.flags.writeable = False
        values[key] = array
    return SpeakerRecord(**values)
