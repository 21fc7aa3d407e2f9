"""POST /v1/audio/speech on the wire: the request body, its bounds, and the SSE events.

``voice`` is a name (OpenAI's built-in voices map to the model's own through models.toml; the
model's own names work as they are) or OpenAI's custom-voice object ``{"id": ...}``, whose id
is looked up the same way. The stream's events are OpenAI's ``speech.audio.delta`` (base64
audio in the requested format) and one ``speech.audio.done`` with the usage.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.api.wire.generation_bounds import too_long
from appliance.api.wire.speech_audio import SpeechFormat
from appliance.api.wire.sse import frame
from appliance.api.wire.validation import Check
from appliance.errors import InvalidRequest

MIN_SPEED = 0.25
MAX_SPEED = 4.0


class CustomVoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1)]


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1)]
    input: str
    voice: str | CustomVoice
    instructions: str | None = None
    response_format: SpeechFormat = "mp3"
    speed: Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)] = 1.0
    stream_format: Literal["audio", "sse"] = "audio"

    @property
    def voice_name(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id


def speech_bounds(max_input_chars: int, max_name_chars: int) -> Check:
    """The bounds on the parsed JSON, checked before validation builds anything."""

    def check(data: dict[str, Any]) -> None:
        text = data.get("input")
        if isinstance(text, str):
            if not text.strip():
                raise InvalidRequest("Invalid value for 'input': the text to say is empty.",
                                     param="input", code="invalid_value")
            if len(text) > max_input_chars:
                raise InvalidRequest(
                    f"Invalid value for 'input': {len(text)} characters; the limit is "
                    f"{max_input_chars}.", param="input", code="string_above_max_length")
        instructions = data.get("instructions")
        if isinstance(instructions, str) and len(instructions) > max_input_chars:
            raise InvalidRequest(
                f"Invalid value for 'instructions': {len(instructions)} characters; the limit "
                f"is {max_input_chars}.", param="instructions", code="string_above_max_length")
        voice = data.get("voice")
        labels = {"model": data.get("model"),
                  "voice": voice.get("id") if isinstance(voice, dict) else voice}
        for param, label in labels.items():
            if isinstance(label, str) and len(label) > max_name_chars:
                raise too_long(param, len(label), max_name_chars)

    return check


def delta_event(audio: bytes) -> bytes:
    return frame({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def done_event(input_tokens: int, output_tokens: int) -> bytes:
    return frame({"type": "speech.audio.done",
                  "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens,
                            "total_tokens": input_tokens + output_tokens}})
