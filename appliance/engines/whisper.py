"""Speech to text on faster-whisper (CTranslate2).

Owns loading a whisper folder on the right device (CUDA + float16 when CTranslate2 sees a GPU
and can compute on it, int8 on CPU, unless models.toml says otherwise), a pool of ``workers``
threads so several transcriptions run at once without touching the event loop (requests wait
for a worker in a ``WorkerPool``: bounded, round-robin across keys), and turning faster-whisper's
lazy segment generator into events. A request runs in steps in the pool: reading the upload
(with language detection), then its segments, each step about a second of work (``STEP_S``)
or one 30-second window where that takes longer. Between two steps of one key's hour of audio
another key's waiting request takes its turn; a client that leaves stops its work at the next
step. Uploads are read within the model's bounds (``audio_decode``: duration,
sample rate, channels, streams, packets) before any decoding.
"""

from __future__ import annotations

import io
import logging
import time
import wave
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import ctranslate2
import numpy as np
import tokenizers
from faster_whisper import WhisperModel

from appliance.config import TranscriptionModelConfig
from appliance.engines.audio_decode import SAMPLE_RATE, AudioBounds, Cancelled, load
from appliance.engines.base import (
    CancelToken,
    ModelInfo,
    Segment,
    TranscriptionEvent,
    TranscriptionParams,
    TranscriptionStarted,
    Word,
)
from appliance.engines.runtime.fair_gate import Occupancy, OccupancyReport
from appliance.engines.runtime.worker_pool import STEP_S, WorkerPool
from appliance.engines.whisper_languages import LANGUAGE_NAMES
from appliance.errors import ConfigError, InvalidRequest

log = logging.getLogger("appliance.engines.whisper")
# OpenAI: "If set to 0, the model will use log probability to automatically increase the
# temperature until certain thresholds are hit" -- whisper's fallback schedule.
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BEAM_SIZE = 5
# Transcription runs on the speech that Silero VAD (shipped with faster-whisper) finds:
# whisper invents words in silence ("You"), and skipping silence is faster. Timestamps stay
# those of the original audio.
VAD_FILTER = True
M = TypeVar("M")


def choose_device(configured: str) -> str:
    if configured != "auto":
        return configured
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def choose_compute_type(configured: str, device: str) -> str:
    if configured != "auto":
        return configured
    return "float16" if device == "cuda" else "int8"


def place(model_id: str, configured_device: str, configured_compute: str, cuda_devices: int,
          load: Callable[[str, str], M], probe: Callable[[M], None]) -> tuple[M, str, str]:
    """Loads on CUDA when asked or when "auto" finds a GPU, proves it with ``probe``, and
    returns (model, device, compute type).

    CTranslate2 opens its CUDA libraries (cuBLAS, cuDNN) only at the first computation, and a
    PyPI wheel is built against one CUDA major (4.8.5: CUDA 12, ``libcublas.so.12``): on a
    machine with another CUDA it counts the GPU, loads the weights, then fails the first
    request. So the probe computes once here. With "auto" a failure is one warning and the
    CPU; with "cuda" it stops the boot, naming what CTranslate2 could not open.
    """
    wants_cuda = configured_device == "cuda" or (configured_device == "auto" and cuda_devices > 0)
    if wants_cuda:
        compute_type = choose_compute_type(configured_compute, "cuda")
        try:
            model = load("cuda", compute_type)
            probe(model)
            return model, "cuda", compute_type
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if configured_device == "cuda":
                raise ConfigError(
                    f"model {model_id!r}: device = \"cuda\" but CTranslate2 "
                    f"{ctranslate2.__version__} cannot compute there: {reason}") from exc
            log.warning("whisper %s: CTranslate2 %s sees %d CUDA device(s) but cannot compute "
                        "there (%s); loading on the CPU instead", model_id,
                        ctranslate2.__version__, cuda_devices, reason)
    compute_type = choose_compute_type(configured_compute, "cpu")
    return load("cpu", compute_type), "cpu", compute_type


def probe_inference(model: WhisperModel) -> None:
    """A quarter second of tone through the encoder and one decoder step: the first use of
    the device's math libraries."""
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE // 4) / SAMPLE_RATE)
    segments, _ = model.transcribe(tone.astype(np.float32), beam_size=1, language="en",
                                   max_new_tokens=1, vad_filter=False)
    for _ in segments:
        pass


def plain_text_tokenizer(tokenizer: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A copy of whisper's tokenizer that reads '<|...|>' in text as text: the model's own
    copy stays as faster-whisper uses it."""
    plain = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    plain.encode_special_tokens = True
    return plain


class WhisperEngine:
    def __init__(self, config: TranscriptionModelConfig, model: WhisperModel, device: str,
                 report: OccupancyReport | None = None):
        self._config = config
        self._model = model
        self._device = device
        self._bounds = AudioBounds(max_seconds=config.max_audio_s)
        self._prompt_tokenizer = plain_text_tokenizer(model.hf_tokenizer)
        self._pool = WorkerPool(config.id, workers=config.workers, queue_limit=config.queue_limit,
                                queue_timeout_s=config.queue_timeout_s,
                                thread_name=f"whisper-{config.id}", report=report)
        self._info = ModelInfo(id=config.id, kind=config.kind, context_length=0,
                               owned_by=config.owned_by, created=int(time.time()))

    @classmethod
    def load(cls, config: TranscriptionModelConfig,
             report: OccupancyReport | None = None) -> WhisperEngine:
        # faster-whisper logs every request at INFO; our own log says what matters.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
        def load_on(device: str, compute_type: str) -> WhisperModel:
            return WhisperModel(str(config.path), device=device, compute_type=compute_type,
                                num_workers=config.workers, local_files_only=True)

        model, device, compute_type = place(
            config.id, config.device, config.compute_type,
            ctranslate2.get_cuda_device_count() if config.device != "cpu" else 0,
            load_on, probe_inference)
        log.info("whisper %s on %s (%s), %d workers", config.id, device, compute_type,
                 config.workers)
        return cls(config, model, device, report)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def max_upload_bytes(self) -> int:
        return self._config.max_upload_mb * 1024 * 1024

    @property
    def occupancy(self) -> Occupancy:
        return self._pool.occupancy

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def warm_up(self) -> None:
        """A request's path once, so the first request pays no first-use costs: a second of
        tone as an uploaded WAV through the decoder (PyAV opens its demuxer, decoder and
        resampler on first use: 30-65 ms, measured on the 2-core box), the encoder and
        decoder, and the voice-activity filter requests run with (faster-whisper loads its
        ONNX model on first use: ~120 ms). The filter finds no speech in a tone and would
        skip the model, hence two passes."""
        tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)
        upload = io.BytesIO()
        with wave.open(upload, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(SAMPLE_RATE)
            wav.writeframes((tone * 32767).astype("<i2").tobytes())
        upload.seek(0)
        audio = load(upload, self._bounds, lambda: False)
        for vad_filter in (False, VAD_FILTER):
            segments, _ = self._model.transcribe(audio, beam_size=BEAM_SIZE, language="en",
                                                 word_timestamps=True, vad_filter=vad_filter)
            for _ in segments:
                pass

    def close(self) -> None:
        self._pool.close(wait=False)

    async def transcribe(self, params: TranscriptionParams,
                         cancel: CancelToken) -> AsyncGenerator[TranscriptionEvent, None]:
        self._check(params)
        try:
            opened = await self._pool.run(params.owner, self._open, params, cancel)
            if opened is None:  # the client left while the upload was read
                return
            started, progress = opened
            yield started
            while True:
                for segment in progress.decoded:
                    yield segment
                if progress.over or cancel.cancelled:
                    return
                # The worker is free between two steps: for another key's turn, and for
                # nobody while a slow client reads.
                progress = await self._pool.resume(params.owner, _decode, progress)
        finally:
            cancel.cancel()

    def _check(self, params: TranscriptionParams) -> None:
        if params.language is not None:
            if params.language not in LANGUAGE_NAMES:
                raise InvalidRequest(
                    f"Invalid value for 'language': {params.language!r} is not an ISO-639-1 "
                    "code of a language whisper knows.", param="language",
                    code="invalid_value")
            if params.language != "en" and not self.multilingual:
                raise InvalidRequest(
                    f"The model `{self._info.id}` is English-only and cannot transcribe "
                    f"language {params.language!r}.", param="language", code="invalid_value")

    def _prompt_tokens(self, prompt: str | None) -> list[int] | None:
        """The prompt as token ids of its text, led by a space as faster-whisper leads it.
        Given a string, faster-whisper encodes '<|endoftext|>' or '<|translate|>' as the
        control tokens they name, and a prompt of them emptied the transcript."""
        if not prompt or not prompt.strip():
            return None
        return list(self._prompt_tokenizer.encode(" " + prompt.strip(),
                                                  add_special_tokens=False).ids)

    def _open(self, params: TranscriptionParams,
              cancel: CancelToken) -> tuple[TranscriptionStarted, _Progress] | None:
        """The first step: the upload read, its language told, and its first segments
        (None: the client left while it was read)."""
        started = time.monotonic()
        try:
            audio = load(params.audio, self._bounds, lambda: cancel.cancelled)
        except Cancelled:
            return None
        temperature = FALLBACK_TEMPERATURES if params.temperature == 0 else params.temperature
        segments, info = self._model.transcribe(
            audio, language=params.language, task=params.task,
            initial_prompt=self._prompt_tokens(params.prompt), temperature=temperature,
            word_timestamps=params.word_timestamps, beam_size=BEAM_SIZE,
            vad_filter=VAD_FILTER)
        told = TranscriptionStarted(language=LANGUAGE_NAMES.get(info.language, info.language),
                                    duration=float(audio.shape[0]) / SAMPLE_RATE)
        # faster-whisper reads the (speech-only) audio in windows of nb_max_frames frames;
        # a segment whose window reaches the end of it is in the last window.
        features = self._model.feature_extractor
        frames = round(info.duration_after_vad / features.time_per_frame)
        progress = _Progress(iter(segments), [], 0, over=False,
                             last_window=frames - features.nb_max_frames, cancel=cancel)
        return told, _decode(progress, started)


@dataclass(frozen=True)
class _Progress:
    """What one step decoded, and where the next one goes on."""

    segments: Iterator[Any]  # faster-whisper's lazy generator (one step uses it at a time)
    decoded: list[Segment]
    next_id: int
    over: bool  # the generator is spent
    last_window: int  # a segment whose window starts at this frame or later is in the last
    cancel: CancelToken  # the client left: the step ends after the segment in hand


def _decode(progress: _Progress, started: float | None = None) -> _Progress:
    """Segments decoded (on a worker thread) until the step has held the worker for STEP_S.

    faster-whisper decodes a 30-second window at a time and hands its segments out one by
    one: the pulls after a window's first cost nothing. So a step past STEP_S in the last
    window pulls on to the end, at the cost of that window's rest; stopping there would
    leave the client a turn of another key's to wait for nothing but the end. A client that
    left ends the step after the segment in hand: the next pull may be a whole window."""
    started = time.monotonic() if started is None else started
    decoded: list[Segment] = []
    while (segment := next(progress.segments, None)) is not None:
        decoded.append(_segment(segment, progress.next_id + len(decoded)))
        if progress.cancel.cancelled or (time.monotonic() - started >= STEP_S
                                         and int(segment.seek) < progress.last_window):
            return replace(progress, decoded=decoded, next_id=progress.next_id + len(decoded))
    return replace(progress, decoded=decoded, next_id=progress.next_id + len(decoded), over=True)


def _segment(segment: Any, number: int) -> Segment:
    return Segment(
        id=number, seek=int(segment.seek), start=float(segment.start),
        end=float(segment.end), text=str(segment.text),
        tokens=tuple(int(t) for t in segment.tokens),
        temperature=float(segment.temperature or 0.0),
        avg_logprob=float(segment.avg_logprob),
        compression_ratio=float(segment.compression_ratio),
        no_speech_prob=float(segment.no_speech_prob),
        words=tuple(Word(str(w.word), float(w.start), float(w.end), float(w.probability))
                    for w in segment.words or ()))
