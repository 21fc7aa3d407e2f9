"""POST /v1/audio/transcriptions and /v1/audio/translations on transcription models.

The upload stays a (spooled) file handed to the engine, which decodes it off the event loop.
A non-streaming request whose client leaves stops the engine at its next segment; a stream
(``stream=true``) sends ``transcript.text.delta`` events as segments are decoded, then one
``transcript.text.done`` with the whole text. The ledger row carries the audio's seconds.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from appliance.api.errors import mid_stream_failure
from appliance.api.note import RequestNote
from appliance.api.routes.disconnect import ClientGone, unless_disconnected
from appliance.api.services import Services
from appliance.api.wire.audio import Task, read_form, to_audio_request
from appliance.api.wire.audio_formats import Transcript, render
from appliance.api.wire.sse import SSE_HEADERS, SSE_MEDIA_TYPE, frame
from appliance.engines.base import (
    TRANSCRIPTION,
    CancelToken,
    Segment,
    TranscriptionEvent,
    TranscriptionParams,
    TranscriptionStarted,
)
from appliance.errors import EngineFailure, PayloadTooLarge


async def create_transcription(request: Request) -> Response:
    return await _serve(request, "transcribe")


async def create_translation(request: Request) -> Response:
    return await _serve(request, "translate")


async def _serve(request: Request, task: Task) -> Response:
    services: Services = request.app.state.services
    note: RequestNote = request.scope["state"]["note"]
    form = await read_form(request, services.bounds.max_upload_bytes)
    handed_to_stream = False
    try:
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
        try:
            # Waits for a worker, then decodes: undecodable audio is a plain 400 here, a full
            # queue a 503, and a client that leaves while queued gives its place up.
            started = await unless_disconnected(request.receive, anext(events))
        except ClientGone:
            note.client_gone = True
            cancel.cancel()
            await events.aclose()
            return Response(status_code=499)  # nobody reads it; the ledger says "cancelled"
        except BaseException:
            cancel.cancel()
            await events.aclose()
            raise
        if not isinstance(started, TranscriptionStarted):
            raise EngineFailure("The engine did not start the transcription.")
        note.audio_seconds = started.duration
        if audio.stream:
            handed_to_stream = True
            return StreamingResponse(_stream(events, cancel, note, form),
                                     media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
        try:
            transcript = await unless_disconnected(
                request.receive, _collect(events, cancel, task, started))
        except ClientGone:
            note.client_gone = True
            cancel.cancel()
            return Response(status_code=499)  # nobody reads it; the ledger says "cancelled"
        return render(transcript, audio.response_format, audio.granularities)
    finally:
        if not handed_to_stream:
            await form.close()


async def _collect(events: AsyncGenerator[TranscriptionEvent, None], cancel: CancelToken,
                   task: Task, started: TranscriptionStarted) -> Transcript:
    segments: list[Segment] = []
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Segment):
                    segments.append(event)
    finally:
        cancel.cancel()
    return Transcript(task, started, tuple(segments))


async def _stream(events: AsyncGenerator[TranscriptionEvent, None], cancel: CancelToken,
                  note: RequestNote, form: FormData) -> AsyncIterator[bytes]:
    parts: list[str] = []
    try:
        async with aclosing(events):
            async for event in events:
                if not isinstance(event, Segment) or not event.text.strip():
                    continue
                note.mark_first_token()
                delta = event.text if parts else event.text.lstrip()
                parts.append(delta)
                yield frame({"type": "transcript.text.delta", "delta": delta})
        yield frame({"type": "transcript.text.done", "text": "".join(parts).strip()})
    except Exception as exc:
        yield mid_stream_failure(note, exc, "transcribing the audio")
    finally:
        cancel.cancel()
        await form.close()

