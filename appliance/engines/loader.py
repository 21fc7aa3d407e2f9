"""Builds every configured engine at boot, warms it, and logs how long each step took.

The only module that knows the concrete engine classes. A model that fails to load or warm
stops the boot with an error naming it, after closing what was already loaded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from appliance.config import ApplianceConfig, ModelConfig
from appliance.engines.base import ChatEngine, EmbeddingEngine, ImageEngine, TranscriptionEngine
from appliance.engines.catalog import Catalog, Engine
from appliance.engines.llm.embedder import LlamaEmbeddingEngine
from appliance.engines.llm.engine import LlamaChatEngine
from appliance.engines.llm.scheduler import StepReport
from appliance.errors import ApplianceError, ConfigError

log = logging.getLogger("appliance.engines")

# Called from a chat model's decode thread after each step: (model id, busy slots, waiting).
StepObserver = Callable[[str, int, int], None]
# Called on the event loop when a worker-pool model's (embeddings, whisper, images) occupancy
# changes: (model id, busy workers, waiting requests).
OccupancyObserver = Callable[[str, int, int], None]


def _step_reporter(model_id: str,
                   observer: StepObserver | None) -> Callable[[StepReport], None] | None:
    if observer is None:
        return None

    def report(step: StepReport) -> None:
        observer(model_id, step.generating + step.prefilling, step.waiting)

    return report


def _occupancy_reporter(model_id: str, observer: OccupancyObserver | None
                        ) -> Callable[[int, int], None] | None:
    if observer is None:
        return None
    return lambda busy, waiting: observer(model_id, busy, waiting)


def _load(model: ModelConfig, on_step: StepObserver | None = None,
          on_occupancy: OccupancyObserver | None = None) -> Engine:
    # Heavy libraries (faster-whisper, torch + diffusers) are imported only when a model
    # needs them, so a chat-only appliance boots without paying for them.
    if model.kind == "embedding":
        return LlamaEmbeddingEngine.load(model, _occupancy_reporter(model.id, on_occupancy))
    if model.kind == "transcription":
        from appliance.engines.whisper import WhisperEngine
        return WhisperEngine.load(model, _occupancy_reporter(model.id, on_occupancy))
    if model.kind == "image":
        from appliance.engines.diffusion import DiffusionEngine
        return DiffusionEngine.load(model, _occupancy_reporter(model.id, on_occupancy))
    return LlamaChatEngine.load(model, _step_reporter(model.id, on_step))


def load_catalog(config: ApplianceConfig, on_step: StepObserver | None = None,
                 on_occupancy: OccupancyObserver | None = None) -> Catalog:
    chat: list[tuple[ChatEngine, tuple[str, ...]]] = []
    embedding: list[tuple[EmbeddingEngine, tuple[str, ...]]] = []
    transcription: list[tuple[TranscriptionEngine, tuple[str, ...]]] = []
    image: list[tuple[ImageEngine, tuple[str, ...]]] = []
    loaded: list[Engine] = []
    try:
        for model in config.models:
            t0 = time.perf_counter()
            try:
                engine = _load(model, on_step, on_occupancy)
            except ApplianceError:
                raise
            except Exception as exc:
                raise ConfigError(f"model {model.id!r} failed to load from {model.path}: {exc}") \
                    from exc
            loaded.append(engine)
            if model.kind == "embedding":
                embedding.append((engine, model.aliases))  # type: ignore[arg-type]
            elif model.kind == "transcription":
                transcription.append((engine, model.aliases))  # type: ignore[arg-type]
            elif model.kind == "image":
                image.append((engine, model.aliases))  # type: ignore[arg-type]
            else:
                chat.append((engine, model.aliases))  # type: ignore[arg-type]
            t1 = time.perf_counter()
            try:
                engine.warm_up()
            except Exception as exc:
                raise ConfigError(f"model {model.id!r} failed its warm-up: {exc}") from exc
            t2 = time.perf_counter()
            log.info("model %s loaded in %.2fs, warmed in %.2fs", model.id, t1 - t0, t2 - t1)
    except BaseException:
        for engine in loaded:
            engine.close()
        raise
    return Catalog(chat, embedding, transcription, image)
