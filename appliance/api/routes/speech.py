"""POST /v1/audio/speech on speech models: text in, audio out, sentence by sentence.

The body is bounded and validated first (input 1-4,096 characters, speed 0.25-4.0, a known
format), the voice resolved through the model's voice names (unknown: a 400 listing the
valid ones), and the engine's first event awaited as every generating route awaits it (a
full queue is a 503, a client gone meanwhile a 499). Then the response streams: with
``stream_format: "audio"`` (the default, as OpenAI's) the encoded audio in chunked transfer,
one piece per sentence as it is synthesised; with ``"sse"`` OpenAI's ``speech.audio.delta``
events and one ``speech.audio.done`` with the usage. Encoding runs in a worker thread, a
sentence at a time. A client that leaves stops the engine after the sentence it is on.

An audio stream has no way to say "failed" once its first bytes are out: a late error ends it
early (the ledger row records the error). An SSE stream ends with an error event instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from appliance.api.errors import mid_stream_failure
from appliance.api.note import RequestNote
from appliance.api.routes.engine_call import EngineCall, gone_is_499, note_of
from appliance.api.services import Services
from appliance.api.wire.speech import SpeechRequest, delta_event, done_event, speech_bounds
from appliance.api.wire.speech_audio import SpeechEncoder
from appliance.api.wire.validation import parse_json
from appliance.engines.base import (
    SPEECH,
    CancelToken,
    SpeechAudio,
    SpeechEngine,
    SpeechEvent,
    SpeechParams,
    SpeechStarted,
)
from appliance.errors import InvalidRequest

DOING = "synthesising speech"


@gone_is_499
async def create_speech(request: Request) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    body = await parse_json(request, SpeechRequest, services.bounds.max_body_bytes,
                            speech_bounds(services.bounds.max_speech_input_chars,
                                          services.bounds.max_name_chars))
    engine = services.catalog.get(SPEECH, body.model)
    note.model = engine.info.id
    note.stream = True  # both stream formats send the audio as it is made
    if body.instructions:
        raise InvalidRequest(
            f"The model `{engine.info.id}` cannot follow 'instructions': its voices have one "
            "manner of speaking. Leave 'instructions' out.", param="instructions",
            code="unsupported_parameter")
    voice = _voice(engine, body.voice_name)
    note.characters = len(body.input)
    cancel = CancelToken()
    events = engine.speak(SpeechParams(text=body.input, voice=voice, speed=body.speed,
                                       owner=note.key_id), cancel)
    call = EngineCall(request, note, cancel, [events])
    [started] = await call.started(SpeechStarted, "The engine did not start the speech.")
    if started.sentences == 0:
        cancel.cancel()
        await events.aclose()
        raise InvalidRequest("Invalid value for 'input': it has nothing to say (no words, "
                             "only punctuation the voice does not speak, such as '...' or "
                             "'?').", param="input",
                             code="invalid_value")
    note.prompt_tokens = started.input_tokens
    encoder = SpeechEncoder(body.response_format)
    sentences = services.metrics.speech_sentences.labels(engine.info.id)
    audio = _audio(events, encoder, note, sentences.inc)
    if body.stream_format == "sse":
        sse = call.streamed(_sse(audio, note), DOING, done=False)
        return ClosingStream(sse.body_iterator, headers=dict(sse.headers))
    return ClosingStream(_plain(audio, note, cancel), media_type=encoder.media_type)


class ClosingStream(StreamingResponse):
    """A stream whose chunks are closed as soon as the response ends, however it ends.
    Starlette abandons the iterator of a client that left (its disconnect listener cancels
    the send loop), and the event loop's finaliser would close it only some time later: the
    engine would go on synthesising sentences nobody hears. Closing it here stops the
    engine after its current sentence."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            chunks = self.body_iterator
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()


def _voice(engine: SpeechEngine, name: str) -> str:
    voice = engine.voices.get(name)
    if voice is None:
        raise InvalidRequest(
            f"Invalid value for 'voice': {name!r} is not a voice of `{engine.info.id}`; "
            f"valid voices are {', '.join(sorted(engine.voices))}.", param="voice",
            code="invalid_value")
    return voice


async def _audio(events: AsyncGenerator[SpeechEvent, None], encoder: SpeechEncoder,
                 note: RequestNote, synthesised: Callable[[], None]
                 ) -> AsyncGenerator[bytes, None]:
    """The encoded bytes, a sentence at a time (maybe none for a short sentence: encoders
    hold a frame back), then the encoder's tail. ``synthesised`` counts each sentence."""
    async with aclosing(events):
        async for event in events:
            if not isinstance(event, SpeechAudio):
                continue
            synthesised()
            note.completion_tokens += event.output_tokens
            data = await anyio.to_thread.run_sync(encoder.feed, event.pcm, event.sample_rate)
            if data:
                note.mark_first_token()
                yield data
    tail = await anyio.to_thread.run_sync(encoder.finish)
    if tail:
        note.mark_first_token()
        yield tail


async def _sse(audio: AsyncGenerator[bytes, None],
               note: RequestNote) -> AsyncGenerator[bytes, None]:
    async with aclosing(audio):
        async for data in audio:
            yield delta_event(data)
    yield done_event(note.prompt_tokens, note.completion_tokens)


async def _plain(audio: AsyncGenerator[bytes, None], note: RequestNote,
                 cancel: CancelToken) -> AsyncGenerator[bytes, None]:
    try:
        async with aclosing(audio):
            async for data in audio:
                yield data
    except Exception as exc:
        mid_stream_failure(note, exc, DOING)  # records and logs it; audio has no error frame
    finally:
        cancel.cancel()
