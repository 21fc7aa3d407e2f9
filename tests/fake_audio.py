"""A fake transcription engine: a real implementation of the Protocol with canned speech.

Any upload that starts like a WAV file "says" two sentences; anything else is undecodable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from appliance.engines.base import (
    CancelToken,
    ModelInfo,
    Segment,
    TranscriptionEvent,
    TranscriptionParams,
    TranscriptionStarted,
    Word,
)
from appliance.errors import InvalidRequest

SENTENCES = ((0.0, 1.2, " Hello there."), (1.2, 2.5, " General Kenobi."))


@dataclass
class FakeTranscriptionEngine:
    model_id: str = "fake-whisper"
    max_upload_bytes: int = 2048
    calls: list[TranscriptionParams] = field(default_factory=list)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, kind="transcription", context_length=0,
                         owned_by="appliance", created=1_700_000_000)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def transcribe(self, params: TranscriptionParams,
                         cancel: CancelToken) -> AsyncGenerator[TranscriptionEvent, None]:
        self.calls.append(params)
        assert not isinstance(params.audio, str)
        head = params.audio.read(4) if hasattr(params.audio, "read") else b""
        if head != b"RIFF":
            raise InvalidRequest("The file could not be decoded as audio.", param="file",
                                 code="invalid_audio")
        yield TranscriptionStarted(language="english", duration=2.5)
        for number, (start, end, text) in enumerate(SENTENCES):
            if cancel.cancelled:
                return
            await asyncio.sleep(0)
            words = tuple(Word(f" {w}", start + i * 0.4, start + (i + 1) * 0.4, 0.9)
                          for i, w in enumerate(text.split())) if params.word_timestamps else ()
            yield Segment(id=number, seek=0, start=start, end=end, text=text,
                          tokens=(50364, 2425 + number), temperature=0.0, avg_logprob=-0.2,
                          compression_ratio=1.1, no_speech_prob=0.01, words=words)
