"""A fake speech engine: a real implementation of the SpeechEngine Protocol with canned audio.

Each sentence (text split after ``.``, ``!`` or ``?``) is a quarter second of a tone at
16 kHz (not the wire's 24 kHz, so the api's resampling is exercised), and one input token per
character. ``made`` logs each sentence as the engine hands it over, ``log`` lets a test put
its own marks in the same list, so a test can tell the order of synthesis and delivery.
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from appliance.engines.base import (
    CancelToken,
    ModelInfo,
    SpeechAudio,
    SpeechEvent,
    SpeechParams,
    SpeechStarted,
)
from appliance.errors import InvalidRequest, Overloaded

RATE = 16_000
SENTENCE_SECONDS = 0.25
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                 "shimmer", "verse", "marin", "cedar")


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if re.search(r"\w", s)]


def tone(seconds: float, pitch: float = 440.0) -> bytes:
    count = int(RATE * seconds)
    return b"".join(struct.pack("<h", int(12_000 * math.sin(2 * math.pi * pitch * i / RATE)))
                    for i in range(count))


@dataclass
class FakeSpeechEngine:
    model_id: str = "fake-speech"
    overloaded: bool = False
    calls: list[SpeechParams] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    stopped: list[SpeechParams] = field(default_factory=list)
    _audio: bytes = field(default_factory=lambda: tone(SENTENCE_SECONDS))

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, kind="speech", context_length=0,
                         owned_by="appliance", created=1_700_000_000)

    @property
    def voices(self) -> Mapping[str, str]:
        names = {name: "amy" for name in OPENAI_VOICES}
        return MappingProxyType({**names, "amy": "amy", "bob": "bob"})

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def speak(self, params: SpeechParams,
                    cancel: CancelToken) -> AsyncGenerator[SpeechEvent, None]:
        if params.voice not in ("amy", "bob"):
            raise InvalidRequest(f"no voice {params.voice!r}", param="voice")
        if self.overloaded:
            raise Overloaded("The model is overloaded.", retry_after=1.0)
        self.calls.append(params)
        said = sentences(params.text)
        yield SpeechStarted(sentences=len(said), input_tokens=len(params.text))
        samples = len(self._audio) // 2
        # Speed is honoured as the real engine honours it: shorter audio, not higher pitch.
        length = int(samples / params.speed) * 2
        audio = (self._audio * math.ceil(1 / params.speed + 1))[:length]
        try:
            for index, _ in enumerate(said):
                if cancel.cancelled:
                    self.stopped.append(params)
                    return
                await asyncio.sleep(0)
                self.log.append(f"made {index}")
                yield SpeechAudio(index=index, sample_rate=RATE, pcm=audio,
                                  output_tokens=length // 2 // 256)
        except BaseException:  # closed (GeneratorExit) or cancelled mid-sentence
            self.stopped.append(params)
            raise
