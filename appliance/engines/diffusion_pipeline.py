"""One loaded diffusers text-to-image pipeline: what it accepts, and running one request on it.

Owns reading the pipeline's own defaults and inputs from its ``__call__`` signature, making
worker copies that share the weights, and turning ImageParams into one pipeline call whose
step callback stops the work when the request is cancelled.
"""

from __future__ import annotations

import copy
import inspect
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from appliance.engines.base import ImageDefaults, ImageParams, ImageResult, RGBImage
from appliance.errors import ConfigError, EngineFailure

# Inputs a pipeline must take to be served: size, batch, seeds, pixels out, and the per-step
# callback that lets a cancelled request stop between denoising steps.
REQUIRED_INPUTS = ("prompt", "height", "width", "num_inference_steps", "num_images_per_prompt",
                   "generator", "output_type", "callback_on_step_end")
FALLBACK_STEPS = 50  # diffusers' usual default, for a pipeline whose signature has none
SEED_SPACE = 2**64  # torch generator seeds are unsigned 64-bit


class Stopped(Exception):
    """Raised from the step callback: the request was cancelled or the engine is closing."""


class _NoPromptEcho(logging.Filter):
    """diffusers logs, at warning level, the part of every prompt its text encoder cuts off
    (CLIP reads 77 tokens): up to 32,000 characters of client text per request in the server
    log. The cut is the model's (usage.input_tokens says how much it read), so the echo is
    dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "was truncated because" not in record.getMessage()


def quiet_prompt_truncation(pipeline: Any) -> None:
    """Drops that echo from the logger of the pipeline's module, where diffusers logs it."""
    logger = logging.getLogger(type(pipeline).__module__)
    if not any(isinstance(existing, _NoPromptEcho) for existing in logger.filters):
        logger.addFilter(_NoPromptEcho())


@dataclass(frozen=True)
class PipelineTraits:
    """What the engine needs to know about a pipeline class before sending it requests."""

    class_name: str
    inputs: frozenset[str]
    defaults: ImageDefaults
    native_size: int  # the side of the square the model was trained at
    size_multiple: int  # width and height must be multiples of this

    @classmethod
    def of(cls, pipeline: Any, steps: int | None, guidance: float | None) -> PipelineTraits:
        """``steps`` and ``guidance`` from models.toml win over the pipeline's defaults."""
        name = type(pipeline).__name__
        parameters = inspect.signature(type(pipeline).__call__).parameters
        missing = [p for p in REQUIRED_INPUTS if p not in parameters]
        if missing:
            raise ConfigError(f"{name} cannot be served: its __call__ takes no "
                              f"{', '.join(missing)}")
        default_steps = parameters["num_inference_steps"].default
        if steps is None:
            steps = default_steps if isinstance(default_steps, int) else FALLBACK_STEPS
        if "guidance_scale" not in parameters:
            if guidance is not None:
                raise ConfigError(f"{name} takes no guidance scale; remove `guidance`")
        elif guidance is None:
            default_guidance = parameters["guidance_scale"].default
            guidance = float(default_guidance) \
                if isinstance(default_guidance, int | float) else None
        scale = int(getattr(pipeline, "vae_scale_factor", 8))
        # Transformer (DiT) pipelines cut latents into 2x2 patches: twice the VAE's factor.
        multiple = scale * 2 if getattr(pipeline, "transformer", None) is not None else scale
        return cls(name, frozenset(parameters), ImageDefaults(steps, guidance),
                   _native_side(pipeline, scale), multiple)

    def classifier_free(self, guidance: float | None) -> bool:
        """Whether a negative prompt does anything: SD-family pipelines run the unconditional
        branch only for a guidance scale above 1."""
        return guidance is not None and guidance > 1


def _native_side(pipeline: Any, scale: int) -> int:
    for denoiser in ("unet", "transformer"):
        module = getattr(pipeline, denoiser, None)
        sample = getattr(getattr(module, "config", None), "sample_size", None)
        if isinstance(sample, int):
            return sample * scale
    default = getattr(pipeline, "default_sample_size", None)
    return default * scale if isinstance(default, int) else 512


def worker_copy(pipeline: Any) -> Any:
    """A pipeline for one more worker thread: the same weights (no memory copied), its own
    scheduler (``set_timesteps`` rewrites scheduler state on every call) and its own
    tokenizers (a fast tokenizer's padding/truncation settings are reset on every call and
    are not safe to share between threads)."""
    inputs = dict(pipeline.components)
    for name, component in pipeline.components.items():
        if component is not None and (name == "scheduler" or name.startswith("tokenizer")):
            inputs[name] = copy.deepcopy(component)
    # Settings that are not components (e.g. requires_safety_checker) live in the config.
    # Not ``from_pipe``: it casts the shared modules to a dtype, in place.
    for name in inspect.signature(type(pipeline).__init__).parameters:
        if name not in inputs and name in pipeline.config:
            inputs[name] = pipeline.config[name]
    clone = type(pipeline)(**inputs)
    clone.set_progress_bar_config(disable=True)
    return clone


def prompt_tokens(pipeline: Any, prompt: str) -> int:
    """The prompt's length as the (first) text encoder reads it, after its truncation."""
    tokenizer = getattr(pipeline, "tokenizer", None)
    if tokenizer is None:
        return 0
    limit = getattr(tokenizer, "model_max_length", None)
    ids = tokenizer(prompt, truncation=isinstance(limit, int), max_length=limit).input_ids
    return len(ids)


def run(pipeline: Any, traits: PipelineTraits, params: ImageParams,
        should_stop: Callable[[], bool],
        between_steps: Callable[[], None] = lambda: None) -> ImageResult:
    """Generates ``params.n`` images in one batch; raises Stopped when ``should_stop`` turns
    true before or between denoising steps. ``between_steps`` runs after each step (where
    the request may wait while another one computes)."""
    if should_stop():
        raise Stopped("before its first step")
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    # CPU generators: the starting noise for a seed is the same on every device. One per
    # image, so image i of a request is image 0 of the same request with seed + i.
    generators = [torch.Generator("cpu").manual_seed((seed + i) % SEED_SPACE)
                  for i in range(params.n)]

    steps = params.steps or traits.defaults.steps

    def check_step(_pipeline: Any, step: int, _timestep: Any,
                   tensors: dict[str, Any]) -> dict[str, Any]:
        if should_stop():
            raise Stopped(f"after step {step + 1} of {steps}")
        between_steps()
        return tensors

    inputs: dict[str, Any] = {
        "prompt": params.prompt, "height": params.height, "width": params.width,
        "num_inference_steps": steps,
        "num_images_per_prompt": params.n, "generator": generators, "output_type": "np",
        "callback_on_step_end": check_step,
    }
    guidance = params.guidance if params.guidance is not None else traits.defaults.guidance
    if guidance is not None:
        inputs["guidance_scale"] = guidance
    if params.negative_prompt is not None:
        inputs["negative_prompt"] = params.negative_prompt
    with torch.inference_mode():
        output = pipeline(**inputs)
    return ImageResult(_rgb_images(output.images, params), prompt_tokens(pipeline, params.prompt))


def _rgb_images(images: Any, params: ImageParams) -> tuple[RGBImage, ...]:
    batch = np.asarray(images, dtype=np.float32)
    if batch.shape != (params.n, params.height, params.width, 3):
        raise EngineFailure(f"the pipeline returned images of shape {batch.shape}, not "
                            f"{params.n} of {params.width}x{params.height} RGB")
    # A half-precision overflow leaves NaNs; they become black rather than garbage bytes.
    pixels = (np.nan_to_num(batch, nan=0.0).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)
    return tuple(RGBImage(params.width, params.height, image.tobytes()) for image in pixels)
