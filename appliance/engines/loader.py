"""Builds every configured engine at boot, warms it, and logs how long each step took.

The only module that knows the concrete engine classes. A model that fails to load or warm
stops the boot with an error naming it, after closing what was already loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from appliance.config import (
    ApplianceConfig,
    ChatModelConfig,
    EmbeddingModelConfig,
    ImageModelConfig,
    ModelConfig,
    SpeechModelConfig,
    TranscriptionModelConfig,
)
from appliance.engines.base import (
    CHAT,
    EMBEDDING,
    IMAGE,
    SPEECH,
    TRANSCRIPTION,
    ChatEngine,
    EmbeddingEngine,
    ImageEngine,
    Listing,
    SpeechEngine,
    TranscriptionEngine,
)
from appliance.engines.catalog import Catalog
from appliance.engines.llm.embedder import LlamaEmbeddingEngine
from appliance.engines.llm.engine import LlamaChatEngine, reasoning_profile
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.scheduler import StepReport
from appliance.engines.llm.templates import ChatTemplate
from appliance.engines.llm.vision import describe_projector
from appliance.errors import ApplianceError, ConfigError

log = logging.getLogger("appliance.engines")

# Called from a chat model's decode thread after each step: (model id, busy slots, waiting,
# the step's seconds, the prompt tokens it read).
StepObserver = Callable[[str, int, int, float, int], None]
# Called on the event loop when a worker-pool model's (embeddings, whisper, images) occupancy
# changes: (model id, busy workers, waiting requests).
OccupancyObserver = Callable[[str, int, int], None]


def _step_reporter(model_id: str,
                   observer: StepObserver | None) -> Callable[[StepReport], None] | None:
    if observer is None:
        return None

    def report(step: StepReport) -> None:
        observer(model_id, step.generating + step.prefilling, step.waiting, step.seconds,
                 step.prefill_tokens)

    return report


def _occupancy_reporter(model_id: str, observer: OccupancyObserver | None
                        ) -> Callable[[int, int], None] | None:
    if observer is None:
        return None
    return lambda busy, waiting: observer(model_id, busy, waiting)


@dataclass(frozen=True)
class _Observers:
    on_step: StepObserver | None
    on_occupancy: OccupancyObserver | None


# Heavy libraries (faster-whisper, torch + diffusers, piper + onnxruntime) are imported only
# when a model needs them, so a chat-only appliance boots without paying for them.
def _chat(model: ChatModelConfig, seen: _Observers) -> Listing[ChatEngine]:
    engine = LlamaChatEngine.load(model, _step_reporter(model.id, seen.on_step))
    return Listing(CHAT, engine, model.aliases)


def _embedding(model: EmbeddingModelConfig, seen: _Observers) -> Listing[EmbeddingEngine]:
    engine = LlamaEmbeddingEngine.load(model, _occupancy_reporter(model.id, seen.on_occupancy))
    return Listing(EMBEDDING, engine, model.aliases)


def _transcription(model: TranscriptionModelConfig,
                   seen: _Observers) -> Listing[TranscriptionEngine]:
    from appliance.engines.whisper import WhisperEngine
    engine = WhisperEngine.load(model, _occupancy_reporter(model.id, seen.on_occupancy))
    return Listing(TRANSCRIPTION, engine, model.aliases)


def _image(model: ImageModelConfig, seen: _Observers) -> Listing[ImageEngine]:
    from appliance.engines.diffusion import DiffusionEngine
    engine = DiffusionEngine.load(model, _occupancy_reporter(model.id, seen.on_occupancy))
    return Listing(IMAGE, engine, model.aliases)


def _speech(model: SpeechModelConfig, seen: _Observers) -> Listing[SpeechEngine]:
    from appliance.engines.speech import PiperSpeechEngine
    engine = PiperSpeechEngine.load(model, _occupancy_reporter(model.id, seen.on_occupancy))
    return Listing(SPEECH, engine, model.aliases)


C = TypeVar("C", bound=ModelConfig)


@dataclass(frozen=True)
class _Builder(Generic[C]):
    """Builds the engine of one kind from that kind's configuration class."""

    config: type[C]
    build: Callable[[C, _Observers], Listing[Any]]

    def __call__(self, model: ModelConfig, seen: _Observers) -> Listing[Any]:
        if not isinstance(model, self.config):
            raise TypeError(f"model {model.id!r}: a {type(model).__name__} is no "
                            f"{self.config.__name__}")
        return self.build(model, seen)


# models.toml's `kind` -> what builds it. Read-only: no module-level mutable state. Its order
# is the order of /v1/models (chat models first, as before kinds were a table).
BUILDERS: Mapping[str, _Builder[Any]] = MappingProxyType({
    CHAT.name: _Builder(ChatModelConfig, _chat),
    EMBEDDING.name: _Builder(EmbeddingModelConfig, _embedding),
    TRANSCRIPTION.name: _Builder(TranscriptionModelConfig, _transcription),
    IMAGE.name: _Builder(ImageModelConfig, _image),
    SPEECH.name: _Builder(SpeechModelConfig, _speech),
})


def describe_chat_model(model: ChatModelConfig) -> str:
    """What check-config says of a chat model: whether it reasons and how, read from its
    GGUF's vocabulary and template (the weights are not loaded)."""
    loaded = LoadedModel(model.path, 0, vocab_only=True)
    try:
        source = model.chat_template or loaded.chat_template
        if not source:
            return "no chat template (set chat_template in models.toml)"
        template = ChatTemplate(source, loaded.bos_text, loaded.eos_text, model.id)
        profile = reasoning_profile(model, loaded, template, source)
        said = "no reasoning" if profile is None else f"reasoning: {profile.describe()}"
        if model.mmproj is not None:
            said += f"; {describe_projector(model.mmproj)}"
        return said
    finally:
        loaded.close()


def load_catalog(config: ApplianceConfig, on_step: StepObserver | None = None,
                 on_occupancy: OccupancyObserver | None = None) -> Catalog:
    seen = _Observers(on_step, on_occupancy)
    loaded: list[Listing[Any]] = []
    try:
        for model in config.models:
            t0 = time.perf_counter()
            try:
                listing = BUILDERS[model.kind](model, seen)
            except ApplianceError:
                raise
            except Exception as exc:
                raise ConfigError(f"model {model.id!r} failed to load from {model.path}: {exc}") \
                    from exc
            loaded.append(listing)
            t1 = time.perf_counter()
            try:
                listing.engine.warm_up()
            except Exception as exc:
                raise ConfigError(f"model {model.id!r} failed its warm-up: {exc}") from exc
            t2 = time.perf_counter()
            log.info("model %s loaded in %.2fs, warmed in %.2fs", model.id, t1 - t0, t2 - t1)
    except BaseException:
        for listing in loaded:
            listing.engine.close()
        raise
    order = list(BUILDERS)
    return Catalog(sorted(loaded, key=lambda listing: order.index(listing.kind.name)))
