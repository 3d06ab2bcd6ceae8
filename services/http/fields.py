"""Field types the routes share: text that gRPC can carry (UTF-8, so no lone surrogates that
JSON escapes can smuggle in) and the voice reference OpenAI's clients send."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]


class VoiceId(BaseModel):
    """OpenAI's custom-voice object, `{"id": "NAME"}`."""

    id: Text = Field(description="A preset or registered speaker's name.")


def voice_name(voice: str | VoiceId | None) -> str:
    if voice is None:
        return ""
    return voice.id if isinstance(voice, VoiceId) else voice
