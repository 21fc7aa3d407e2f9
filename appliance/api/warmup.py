"""Warms the request path at startup, so the first client request is as fast as the tenth.

Loading and warming the models is the loader's job; this covers what only the HTTP side pays
on first use: anyio's worker threads (its asyncio backend is imported lazily), the first
key lookup in SQLite, request validation and the engine's async hand-off, and the encoders
the media routes run on every response. No ledger row and no key are involved.

The encoders, measured on the 2-core box (first call in a process, then the second): Pillow
imports its format plugins and opens its codec libraries on the first save (PNG 22-47 ms
then 1 ms, WebP 67-119 ms then 1.5 ms); PyAV opens libmp3lame and the resampler on the first
mp3 (~30 ms then ~15 ms). Each format is warmed only where a model of its kind is served.
"""

from __future__ import annotations

import logging
import time

import anyio.to_thread

from appliance.api.services import Services
from appliance.api.wire.chat import ChatCompletionRequest, to_chat_params
from appliance.api.wire.images import OutputFormat
from appliance.api.wire.images_encoding import encode
from appliance.api.wire.speech_audio import SPEECH_FORMATS, SpeechEncoder
from appliance.engines.base import CHAT, IMAGE, SPEECH, CancelToken, RGBImage

log = logging.getLogger("appliance.api")

# Every (format, compression) branch of images_encoding.encode: lossy and lossless differ.
IMAGE_ENCODINGS: tuple[tuple[OutputFormat, int], ...] = (
    ("png", 100), ("jpeg", 100), ("jpeg", 75), ("webp", 100), ("webp", 75))
WARM_IMAGE = RGBImage(width=16, height=16, pixels=bytes(16 * 16 * 3))
# Piper's voices speak at 22,050 Hz: the resampler to 24 kHz is made for that rate.
WARM_SPEECH_RATE = 22_050
WARM_SPEECH_PCM = bytes(2 * WARM_SPEECH_RATE // 10)  # 0.1 s of 16-bit silence


async def warm_request_path(services: Services) -> None:
    started = time.perf_counter()
    await anyio.to_thread.run_sync(services.keys.lookup, "sk-app-warm-up-not-a-key")
    for engine in services.catalog.engines_of(CHAT):
        body = ChatCompletionRequest.model_validate({
            "model": engine.info.id,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1,
            "temperature": 0,
        })
        cancel = CancelToken()
        async for _ in engine.chat(to_chat_params(body), cancel):
            pass
    # On a worker thread, as the routes encode.
    if services.catalog.engines_of(IMAGE):
        await anyio.to_thread.run_sync(warm_image_encoders)
    if services.catalog.engines_of(SPEECH):
        await anyio.to_thread.run_sync(warm_speech_encoders)
    log.info("request path warmed in %.1f ms", (time.perf_counter() - started) * 1000)


def warm_image_encoders() -> None:
    for file_format, compression in IMAGE_ENCODINGS:
        encode(WARM_IMAGE, file_format, compression)


def warm_speech_encoders() -> None:
    for speech_format in SPEECH_FORMATS:
        encoder = SpeechEncoder(speech_format)
        encoder.feed(WARM_SPEECH_PCM, WARM_SPEECH_RATE)
        encoder.finish()
