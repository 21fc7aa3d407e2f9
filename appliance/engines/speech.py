"""Text to speech on Piper voices (VITS models in ONNX Runtime, espeak-ng phonemes).

Owns loading a voice on the right device (ONNX Runtime's CUDA provider when it has one and
models.toml does not say "cpu"), a pool of ``workers`` threads so synthesis never runs on the
event loop (requests wait for a worker in a ``WorkerPool``: bounded, round-robin across keys),
and saying a text sentence by sentence in steps. The first step phonemizes the whole text
(espeak-ng splits it into sentences, in linear time) and synthesises the first sentence
alone, so the first audio leaves long before the last sentence is made. Each later step
synthesises sentences for about a second (``STEP_S``): between two steps of one key's long
text another key's waiting request takes its turn. The next step is asked for while the
current one's audio is encoded and sent, so at most one step's audio waits in memory for a
slow client; a cancelled request stops after the sentence being synthesised.

Text is read as text only: control characters and lone surrogates (which JSON can carry, and
espeak-ng's C interface cannot take) become spaces, and Piper's ``[[ raw phonemes ]]`` markup
is broken up, so a request cannot feed the network symbols of its choosing.

A sentence longer than ``MAX_PHONEMES`` is cut at a word boundary: VITS's attention grows with
the square of its input, its activations with the audio's length (about 1 MB a phoneme at
speed 1), and a 4,096-character text without punctuation would otherwise be one piece whose
first audio comes only at the end. Below speed 1 every phoneme lasts longer (Piper's length
scale is 1 / speed), so the limit shrinks with the speed (``piece_limit``): a piece holds about
as much audio at speed 0.25 as at speed 1, never four times as much. Above speed 1 a piece is
made at the voice's own pace and the request's audio stretched after (``speech_tempo``),
since Piper's length scale cannot make phonemes shorter than a vocoder frame. The warm-up
synthesises a piece of the full length, so ONNX Runtime's memory arena grows to what the
longest piece needs at boot, not in some later request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime
from piper import PiperConfig, PiperVoice, SynthesisConfig

from appliance.config import SpeechModelConfig
from appliance.engines.base import (
    CancelToken,
    ModelInfo,
    SpeechAudio,
    SpeechEvent,
    SpeechParams,
    SpeechStarted,
)
from appliance.engines.runtime.fair_gate import Occupancy, OccupancyReport
from appliance.engines.runtime.worker_pool import STEP_S, WorkerPool
from appliance.engines.speech_tempo import Tempo
from appliance.errors import ConfigError, InvalidRequest

log = logging.getLogger("appliance.engines.speech")
MAX_PHONEMES = 200  # about 10 s of speech at speed 1: a long sentence, some 190 MB of activations
# Enough words (no punctuation: one sentence) for a piece of MAX_PHONEMES and a shorter one.
WARM_UP_TEXT = " ".join(["ready"] * 36)
WORD_BREAK = " "
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


# C0 and C1 controls but tab, newline and carriage return; and UTF-16 surrogates, which a
# Python str holds only when unpaired.
UNSPEAKABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
RAW_PHONEMES = re.compile(r"\[\[|\]\]")


def speakable(text: str) -> str:
    """``text`` as Piper should read it: plain text, nothing its C parts choke on."""
    return RAW_PHONEMES.sub(lambda m: " ".join(m.group(0)), UNSPEAKABLE.sub(" ", text))


def choose_device(configured: str, available: list[str]) -> str:
    if configured != "auto":
        return configured
    return "cuda" if CUDA in available else "cpu"


def providers_for(device: str) -> list[str | tuple[str, dict[str, Any]]]:
    if device == "cuda":
        # HEURISTIC: the exhaustive cuDNN search would run again for every new sentence
        # length, which is every sentence.
        return [(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU]
    return [CPU]


def piece_limit(speed: float) -> int:
    """The most phonemes in one piece at ``speed``: MAX_PHONEMES, scaled down below speed 1,
    since the audio (and the network's activations) of a piece follow phonemes / speed."""
    return max(1, int(MAX_PHONEMES * min(speed, 1.0)))


def split_long(phonemes: list[str], limit: int = MAX_PHONEMES) -> list[list[str]]:
    """``phonemes`` in pieces of at most ``limit``, cut after the last word break that fits
    (anywhere, if a single word is longer)."""
    pieces: list[list[str]] = []
    rest = phonemes
    while len(rest) > limit:
        window = rest[:limit]
        cut = max((i for i, p in enumerate(window) if p == WORD_BREAK), default=-1) + 1
        cut = cut if cut > 0 else limit
        pieces.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        pieces.append(rest)
    return pieces


def voice_names(config: dict[str, Any], model_path: Path) -> tuple[str, ...]:
    """The model's own voices: its speakers, or for a one-speaker model its dataset's name."""
    speakers = config.get("speaker_id_map") or {}
    if int(config.get("num_speakers", 1)) > 1 and speakers:
        return tuple(speakers)
    return (str(config.get("dataset") or model_path.name.removesuffix(".onnx")),)


class PiperSpeechEngine:
    def __init__(self, config: SpeechModelConfig, voice: PiperVoice, device: str,
                 voices: tuple[str, ...], report: OccupancyReport | None = None):
        self._config = config
        self._voice = voice
        self._device = device
        self._voices = voices  # the model's own, in speaker-id order
        self._names = MappingProxyType({**dict(config.voices), **{v: v for v in voices}})
        self._pool = WorkerPool(config.id, workers=config.workers,
                                queue_limit=config.queue_limit,
                                queue_timeout_s=config.queue_timeout_s,
                                thread_name=f"speech-{config.id}", report=report)
        self._info = ModelInfo(id=config.id, kind=config.kind, context_length=0,
                               owned_by=config.owned_by, created=int(time.time()))

    @classmethod
    def load(cls, config: SpeechModelConfig,
             report: OccupancyReport | None = None) -> PiperSpeechEngine:
        config_path = config.path.with_name(config.path.name + ".json")
        if not config_path.is_file():
            raise ConfigError(f"model {config.id!r}: Piper voice config {config_path} "
                              "does not exist (it lies beside the .onnx file)")
        raw = json.loads(config_path.read_text(encoding="utf-8"))
        voices = voice_names(raw, config.path)
        for name, target in config.voices:
            if target not in voices:
                raise ConfigError(f"model {config.id!r}: voices.{name} = {target!r} is not a "
                                  f"voice of this model (it has {', '.join(voices)})")
        available = onnxruntime.get_available_providers()
        device = choose_device(config.device, available)
        if device == "cuda" and CUDA not in available:
            raise ConfigError(f"model {config.id!r}: device \"cuda\", but this onnxruntime has "
                              "no CUDA provider (install onnxruntime-gpu, or say \"auto\")")
        options = onnxruntime.SessionOptions()
        if config.threads is not None:
            options.intra_op_num_threads = config.threads
        session = onnxruntime.InferenceSession(str(config.path), sess_options=options,
                                               providers=providers_for(device))
        voice = PiperVoice(session=session, config=PiperConfig.from_dict(raw))
        log.info("speech %s on %s (%s), voices %s, %d workers", config.id, device,
                 ", ".join(session.get_providers()), ", ".join(voices), config.workers)
        return cls(config, voice, device, voices, report)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def voices(self) -> Mapping[str, str]:
        return self._names

    @property
    def sample_rate(self) -> int:
        return int(self._voice.config.sample_rate)

    @property
    def device(self) -> str:
        return self._device

    @property
    def occupancy(self) -> Occupancy:
        return self._pool.occupancy

    def warm_up(self) -> None:
        """Phonemizer and network run once, so the first request pays no first-use costs
        (espeak-ng loads its data on first use; ONNX Runtime plans its graph and grows its
        arena to what the longest piece needs)."""
        for _ in self.synthesise(SpeechParams(text=WARM_UP_TEXT, voice=self._voices[0]),
                                 CancelToken()):
            pass

    def close(self) -> None:
        self._pool.close(wait=False)

    async def speak(self, params: SpeechParams,
                    cancel: CancelToken) -> AsyncGenerator[SpeechEvent, None]:
        if params.voice not in self._voices:
            raise InvalidRequest(f"The model `{self._info.id}` has no voice {params.voice!r}.",
                                 param="voice", code="invalid_value")
        try:
            opened = await self._pool.run(params.owner, self._open, params, cancel)
            if opened is None:  # the client left before a worker was free
                return
            started, speaking = opened
            yield started
            while True:
                # The next step waits for its turn (and runs) while this one's audio is
                # encoded and sent: the worker idles for neither, and a slow client has at
                # most one step's audio waiting for it.
                following = None if speaking.over else asyncio.ensure_future(
                    self._pool.resume(params.owner, self._say, speaking))
                try:
                    for audio in speaking.made:
                        yield audio
                except BaseException:
                    _drop(following)
                    raise
                if following is None:
                    return
                speaking = await following
        finally:
            cancel.cancel()

    def synthesise(self, params: SpeechParams, cancel: CancelToken) -> Iterator[SpeechEvent]:
        """The events of ``params``: every step one after another on the calling thread
        (the warm-up, the benchmark); stops between sentences once ``cancel`` is set."""
        opened = self._open(params, cancel)
        if opened is None:
            return
        started, speaking = opened
        yield started
        while True:
            yield from speaking.made
            if speaking.over:
                return
            speaking = self._say(speaking)

    def _open(self, params: SpeechParams,
              cancel: CancelToken) -> tuple[SpeechStarted, _Speaking] | None:
        """The first step (on a worker): the text phonemized and cut into pieces, and the
        first piece synthesised (None: the client left while the request waited)."""
        if cancel.cancelled:
            return None
        limit = piece_limit(params.speed)
        pieces = [piece for sentence in self._voice.phonemize(speakable(params.text))
                  for piece in split_long(sentence, limit) if piece]
        ids = [self._voice.phonemes_to_ids(piece) for piece in pieces]
        started = SpeechStarted(sentences=len(ids), input_tokens=sum(len(i) for i in ids))
        speaker = self._voices.index(params.voice)
        synthesis = SynthesisConfig(
            speaker_id=speaker if len(self._voices) > 1 else None,
            # Slower: Piper's length scale stretches every phoneme and pause with the voice's
            # pitch kept (resampling would lower it). Faster it cannot go far (no phoneme is
            # shorter than one vocoder frame), so faster speech is made at the voice's own
            # pace and stretched after (speech_tempo; README, Text to speech).
            length_scale=self._voice.config.length_scale / min(params.speed, 1.0))
        tempo = Tempo(self.sample_rate, max(params.speed, 1.0))
        speaking = _Speaking(tuple(ids), synthesis, tempo, [], 0, cancel)
        return started, self._say(speaking, step_s=0.0)

    def _say(self, speaking: _Speaking, step_s: float = STEP_S) -> _Speaking:
        """Pieces synthesised in order (on a worker) until the step has held the worker for
        ``step_s`` -- at least one piece -- or the client has left."""
        began = time.monotonic()
        hop = int(self._voice.config.hop_length)  # samples per output frame of the vocoder
        made: list[SpeechAudio] = []
        index = speaking.next_piece
        while index < len(speaking.pieces) and not speaking.cancel.cancelled:
            made_at_pace = np.asarray(self._voice.phoneme_ids_to_audio(
                speaking.pieces[index], speaking.synthesis), dtype=np.float32)
            audio = speaking.tempo.feed(_normalised(made_at_pace))
            index += 1
            if index == len(speaking.pieces):
                audio = np.concatenate([audio, speaking.tempo.end()])
            made.append(SpeechAudio(index=index - 1, sample_rate=self.sample_rate,
                                    pcm=_int16(audio),
                                    output_tokens=max(1, made_at_pace.shape[0] // hop)))
            if time.monotonic() - began >= step_s:
                break
        over = index >= len(speaking.pieces) or speaking.cancel.cancelled
        return replace(speaking, made=made, next_piece=len(speaking.pieces) if over else index)


@dataclass(frozen=True)
class _Speaking:
    """What one step synthesised, and where the next one goes on. A step makes a new one:
    the previous step's audio may still be on its way out while the next is made."""

    pieces: tuple[list[int], ...]  # the phoneme ids of each piece, in order
    synthesis: SynthesisConfig
    tempo: Tempo  # one stream for the request's audio, fed piece by piece in order
    made: list[SpeechAudio]
    next_piece: int
    cancel: CancelToken  # the client left: no further piece is synthesised

    @property
    def over(self) -> bool:
        return self.next_piece >= len(self.pieces)


def _drop(step: asyncio.Future[_Speaking] | None) -> None:
    """A step asked for that nobody will read: cancelled if it has not run, its outcome
    taken if it has (an error nobody reads would be logged as unretrieved)."""
    if step is None:
        return
    if step.done():
        if not step.cancelled():
            step.exception()
        return
    step.cancel()


def _normalised(audio: Any) -> Any:
    """Float samples peak-normalised, as Piper itself does (its voices are trained on
    normalised audio and come out quiet and uneven without it)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return audio / peak if peak > 1e-8 else np.zeros_like(audio)


def _int16(audio: Any) -> bytes:
    """Float samples in -1..1 -> 16-bit PCM."""
    return bytes(np.clip(audio * 32767.0, -32767, 32767).astype("<i2").tobytes())
