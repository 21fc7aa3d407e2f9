"""POST /v1/audio/transcriptions and /v1/audio/translations on transcription models.

The upload stays a (spooled) file handed to the engine, which decodes it off the event loop.
A non-streaming request whose client leaves stops the engine at its next segment; a stream
(``stream=true``) sends ``transcript.text.delta`` events as segments are decoded, then one
``transcript.text.done`` with the whole text. The ledger row carries the audio's seconds.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.note import RequestNote
from appliance.api.routes.engine_call import EngineCall, Lease, gone_is_499, note_of
from appliance.api.services import Services
from appliance.api.wire.audio import Task, read_form, to_audio_request
from appliance.api.wire.audio_formats import Transcript, render
from appliance.api.wire.sse import frame
from appliance.engines.base import (
    TRANSCRIPTION,
    CancelToken,
    Segment,
    TranscriptionEvent,
    TranscriptionParams,
    TranscriptionStarted,
)
from appliance.errors import PayloadTooLarge


@gone_is_499
async def create_transcription(request: Request) -> Response:
    return await _serve(request, "transcribe")


@gone_is_499
async def create_translation(request: Request) -> Response:
    return await _serve(request, "translate")


async def _serve(request: Request, task: Task) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    form = await read_form(request, services.bounds.max_upload_bytes)
    async with Lease(form.close) as upload:
        audio = to_audio_request(form, task)
        note.stream = audio.stream
        engine = services.catalog.get(TRANSCRIPTION, audio.model)
        note.model = engine.info.id
        if audio.size > engine.max_upload_bytes:
            raise PayloadTooLarge(f"The audio file is larger than the limit of "
                                  f"{engine.max_upload_bytes // (1024 * 1024)} MB for model "
                                  f"`{engine.info.id}`.", param="file")
        params = TranscriptionParams(audio=audio.upload.file, task=task,
                                     language=audio.language, prompt=audio.prompt,
                                     temperature=audio.temperature,
                                     word_timestamps="word" in audio.granularities,
                                     owner=note.key_id)  # workers are shared per key
        cancel = CancelToken()
        events = engine.transcribe(params, cancel)
        call = EngineCall(request, note, cancel, [events])
        # Waits for a worker, then decodes: undecodable audio is a plain 400 here, a full
        # queue a 503.
        [started] = await call.started(TranscriptionStarted,
                                       "The engine did not start the transcription.")
        note.audio_seconds = started.duration
        if audio.stream:
            return call.streamed(_stream(events, note), "transcribing the audio", done=False,
                                 after=upload.hand_to_stream())
        transcript = await call.gathered(_collect(events, task, started))
        return render(transcript, audio.response_format, audio.granularities)


async def _collect(events: AsyncGenerator[TranscriptionEvent, None], task: Task,
                   started: TranscriptionStarted) -> Transcript:
    segments: list[Segment] = []
    async with aclosing(events):
        async for event in events:
            if isinstance(event, Segment):
                segments.append(event)
    return Transcript(task, started, tuple(segments))


async def _stream(events: AsyncGenerator[TranscriptionEvent, None],
                  note: RequestNote) -> AsyncGenerator[bytes, None]:
    parts: list[str] = []
    async with aclosing(events):
        async for event in events:
            if not isinstance(event, Segment) or not event.text.strip():
                continue
            note.mark_first_token()
            delta = event.text if parts else event.text.lstrip()
            parts.append(delta)
            yield frame({"type": "transcript.text.delta", "delta": delta})
    yield frame({"type": "transcript.text.done", "text": "".join(parts).strip()})
