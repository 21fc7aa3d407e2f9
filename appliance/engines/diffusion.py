"""Text-to-image on diffusers: any pipeline ``AutoPipelineForText2Image`` loads from a folder.

Owns loading the folder on its device and dtype (``diffusion_device``), the sizes a request
may ask for, and running requests in turns. ``workers`` requests compute at once; twice as
many are in progress (``PLACES_PER_WORKER``), each on its own thread with its own copy of the
pipeline (shared weights, private scheduler and tokenizers). Requests wait for a place in a
``WorkerPool`` (bounded, round-robin across keys, at most ``workers`` places a key, so the
others are kept for other keys). A request in progress computes in turns (``ComputeTurn``):
after about a second of denoising steps it gives its compute slot to another key's request
waiting and waits, inside the pipeline's step callback, for its own next turn, so a short
request does not wait for all of a long one. The event loop only awaits the result. A
cancelled request leaves the queue at once, or stops between two denoising steps if it is
already running.

What one request may cost is bounded before it queues: its size must be one of the model's,
and n is bounded by size and steps (``image_bounds``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import queue
import threading
import time
from typing import Any

import torch
import transformers
from diffusers import AutoPipelineForText2Image
from diffusers.utils import logging as diffusers_logging

from appliance.config import ImageModelConfig
from appliance.engines.base import (
    CancelToken,
    ImageDefaults,
    ImageParams,
    ImageResult,
    ModelInfo,
)
from appliance.engines.diffusion_device import (
    Placement,
    choose_placement,
    pipeline_class_name,
    save_memory,
)
from appliance.engines.diffusion_pipeline import (
    PipelineTraits,
    Stopped,
    quiet_prompt_truncation,
    run,
    worker_copy,
)
from appliance.engines.image_bounds import MAX_BATCH_IMAGES, MAX_WORK_IMAGES, max_images
from appliance.engines.runtime.fair_gate import FairGate, Occupancy, OccupancyReport
from appliance.engines.runtime.thread_turns import ComputeTurn, TurnStopped
from appliance.engines.runtime.worker_pool import WorkerPool
from appliance.errors import ConfigError, EngineFailure, InvalidRequest, ServiceUnavailable

log = logging.getLogger("appliance.engines.diffusion")
WARM_UP_STEPS = 2
# Requests in progress per compute slot: one computing, one waiting between its steps (a
# thread and a pipeline copy each: schedulers and tokenizers, no weights).
PLACES_PER_WORKER = 2


def parse_sizes(config: ImageModelConfig, traits: PipelineTraits) -> tuple[tuple[int, int], ...]:
    """models.toml ``sizes`` as (width, height); none configured: the model's native square."""
    if not config.sizes:
        return ((traits.native_size, traits.native_size),)
    sizes: list[tuple[int, int]] = []
    for text in config.sizes:
        width, _, height = text.partition("x")
        size = (int(width), int(height))
        if size[0] % traits.size_multiple or size[1] % traits.size_multiple:
            raise ConfigError(f"model {config.id!r}: sizes: {text} is not a multiple of "
                              f"{traits.size_multiple} on both sides, as {traits.class_name} "
                              "needs")
        if size not in sizes:
            sizes.append(size)
    return tuple(sizes)


class DiffusionEngine:
    def __init__(self, config: ImageModelConfig, pipelines: list[Any], traits: PipelineTraits,
                 placement: Placement, report: OccupancyReport | None = None):
        self._config = config
        self._traits = traits
        self._placement = placement
        self._sizes = parse_sizes(config, traits)
        # One pipeline per place (thread); a request takes one for its whole length. The
        # pool has exactly as many threads as pipelines, so taking one never waits.
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for pipeline in pipelines:
            self._idle.put(pipeline)
        self._closing = threading.Event()
        self._report = report
        told = self._tell if report is not None else None
        # A key holds at most ``workers`` places, all its requests can compute in at once;
        # the rest are kept for other keys, so a third key's image starts while one key's two
        # long ones are in progress, not after the first of them ends.
        self._pool = WorkerPool(config.id, workers=len(pipelines),
                                queue_limit=config.queue_limit,
                                queue_timeout_s=config.queue_timeout_s,
                                thread_name=f"diffusion-{config.id}", report=told,
                                owner_limit=config.workers)
        # Only ever entered through ``resume`` (never refused): the bound and the deadline
        # were the place's.
        self._compute = FairGate(config.id, slots=config.workers, queue_limit=0,
                                 queue_timeout_s=0.0, report=told)
        self._info = ModelInfo(id=config.id, kind="image", context_length=0,
                               owned_by=config.owned_by, created=int(time.time()))

    @classmethod
    def load(cls, config: ImageModelConfig,
             report: OccupancyReport | None = None) -> DiffusionEngine:
        if config.threads is not None:
            torch.set_num_threads(config.threads)  # torch's pool is per process
        class_name = pipeline_class_name(config.path)
        placement = choose_placement(config, class_name)
        # Loading bars would fill the server log with terminal control output.
        diffusers_logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        # local_files_only: a folder is all we load; nothing may reach for a model hub.
        # low_cpu_mem_usage needs accelerate; asking for it without would only log a warning.
        pipeline: Any = AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
            str(config.path), dtype=placement.dtype, local_files_only=True,
            low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None)
        pipeline.to(placement.device)
        pipeline.set_progress_bar_config(disable=True)
        quiet_prompt_truncation(pipeline)
        savings = save_memory(pipeline, placement)
        traits = PipelineTraits.of(pipeline, config.steps, config.guidance)
        places = config.workers * PLACES_PER_WORKER
        pipelines = [pipeline, *(worker_copy(pipeline) for _ in range(places - 1))]
        engine = cls(config, pipelines, traits, placement, report)
        log.info("image model %s: %s on %s, %d worker(s), %d steps, guidance %s, sizes %s%s",
                 config.id, traits.class_name, placement.label, config.workers,
                 traits.defaults.steps, traits.defaults.guidance,
                 ", ".join(f"{w}x{h}" for w, h in engine.sizes),
                 f", {' and '.join(savings)}" if savings else "")
        return engine

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return self._sizes

    @property
    def defaults(self) -> ImageDefaults:
        return self._traits.defaults

    @property
    def occupancy(self) -> Occupancy:
        """Busy: requests computing; waiting: those waiting for a place, and those in
        progress waiting for their next turn."""
        computing = self._compute.occupancy
        return Occupancy(computing.busy, self._pool.occupancy.waiting + computing.waiting)

    def _tell(self, _busy: int, _waiting: int) -> None:
        if self._report is not None:
            occupancy = self.occupancy
            self._report(occupancy.busy, occupancy.waiting)

    def warm_up(self) -> None:
        """One short generation at the default size: the first request pays no first-use
        costs (kernel selection, allocator growth, lazy imports inside diffusers)."""
        width, height = self._sizes[0]
        steps = min(WARM_UP_STEPS, self._traits.defaults.steps)
        self._work(ImageParams("warm-up", width=width, height=height, steps=steps, seed=0),
                   CancelToken())

    def close(self) -> None:
        self._closing.set()  # running requests stop at their next step
        self._pool.close(wait=True)
        while not self._idle.empty():
            self._idle.get()
        if self._placement.device == "cuda":
            torch.cuda.empty_cache()

    async def generate(self, params: ImageParams, cancel: CancelToken) -> ImageResult:
        self._check(params)
        try:
            # A cancelled one still ends its current step, holding its worker until then.
            return await self._pool.run(params.owner, self._work, params, cancel,
                                        asyncio.get_running_loop())
        except asyncio.CancelledError:
            cancel.cancel()  # stops it between steps if it is already running
            raise
        except Stopped:
            if self._closing.is_set():
                raise ServiceUnavailable("The image model is shutting down.") from None
            raise EngineFailure("The image generation was cancelled.") from None

    def _check(self, params: ImageParams) -> None:
        if (params.width, params.height) not in self._sizes:
            supported = ", ".join(f"{w}x{h}" for w, h in self._sizes)
            raise InvalidRequest(f"Invalid value for 'size': {params.width}x{params.height} is "
                                 f"not a size model {self._info.id} makes. Supported sizes: "
                                 f"{supported}.", param="size", code="invalid_value")
        self._check_cost(params)
        if params.guidance is not None and self._traits.defaults.guidance is None:
            raise InvalidRequest(f"Model {self._info.id} ({self._traits.class_name}) takes no "
                                 "guidance scale.", param="guidance", code="invalid_value")
        if params.negative_prompt is None:
            return
        if "negative_prompt" not in self._traits.inputs:
            raise InvalidRequest(f"Model {self._info.id} ({self._traits.class_name}) takes no "
                                 "negative prompt.", param="negative_prompt",
                                 code="invalid_value")
        guidance = params.guidance if params.guidance is not None \
            else self._traits.defaults.guidance
        if not self._traits.classifier_free(guidance):
            raise InvalidRequest(
                "'negative_prompt' has no effect here: it needs classifier-free guidance "
                f"(a guidance scale above 1; this request has {guidance}).",
                param="negative_prompt", code="invalid_value")

    def _check_cost(self, params: ImageParams) -> None:
        steps = params.steps or self._traits.defaults.steps
        most = max_images(self._sizes[0], self._traits.defaults.steps,
                          (params.width, params.height), steps)
        if params.n > most:
            default_width, default_height = self._sizes[0]
            raise InvalidRequest(
                f"Invalid value for 'n': model {self._info.id} makes at most {most} image(s) of "
                f"{params.width}x{params.height} at {steps} steps in one request, not "
                f"{params.n}. A request may hold {MAX_BATCH_IMAGES:g} default-size images' "
                f"pixels and {MAX_WORK_IMAGES:g} default images' work (n x steps x size; "
                f"{self._traits.defaults.steps} steps at {default_width}x{default_height}). "
                "Lower n, steps (or quality) or size.", param="n", code="invalid_value")

    def _work(self, params: ImageParams, cancel: CancelToken,
              loop: asyncio.AbstractEventLoop | None = None) -> ImageResult:
        """One request on its place's thread; in turns at the compute slots when ``loop``
        (the event loop they live on) is given, alone otherwise (the warm-up)."""
        pipeline = self._idle.get()

        def should_stop() -> bool:
            return cancel.cancelled or self._closing.is_set()

        turn = None if loop is None else ComputeTurn(self._compute, loop, params.owner,
                                                     should_stop, self._closing.is_set)
        try:
            if turn is None:
                return run(pipeline, self._traits, params, should_stop)
            turn.take()
            return run(pipeline, self._traits, params, should_stop, turn.between_steps)
        except TurnStopped:
            log.info("image model %s: a cancelled request stopped while it waited for its "
                     "turn", self._info.id)
            raise Stopped("while it waited for its turn") from None
        except Stopped as stop:
            log.info("image model %s: a cancelled request stopped %s", self._info.id, stop)
            raise
        finally:
            if turn is not None:
                turn.end()
            self._idle.put(pipeline)
