"""Where a diffusers pipeline runs, in which precision, and the memory savings it gets there.

``device = "auto"`` is CUDA when torch sees a GPU, else the CPU. ``compute_type = "auto"`` is
float32 on the CPU (half-precision kernels there are slow or missing) and float16 on CUDA,
except for the pipeline families that are trained and shipped in bfloat16 and whose
activations overflow float16 (Flux, SD3 and kin): those get bfloat16 when the GPU has it.
The choice is made from ``model_index.json`` before loading, so the weights are read once,
straight into the right dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance.config import ImageModelConfig
from appliance.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Pipeline class-name prefixes whose weights are published in bfloat16 and overflow in float16.
BFLOAT16_FAMILIES = ("Flux", "StableDiffusion3", "Sana", "Lumina", "CogView", "HiDream",
                     "QwenImage", "Chroma", "AuraFlow", "HunyuanImage")


@dataclass(frozen=True)
class Placement:
    device: str  # "cuda" or "cpu"
    dtype: torch.dtype

    @property
    def label(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


def pipeline_class_name(folder: Path) -> str:
    """The pipeline class a diffusers folder was saved from (``model_index.json``)."""
    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} is not a diffusers pipeline folder: cannot read "
                          f"{index.name} ({exc})") from exc
    if not isinstance(name, str):
        raise ConfigError(f"{index} names no pipeline class (_class_name)")
    return name


def choose_placement(config: ImageModelConfig, pipeline_class: str) -> Placement:
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ConfigError(f"model {config.id!r}: device = \"cuda\" but torch sees no CUDA GPU "
                          f"(torch {torch.__version__})")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
    if config.compute_type != "auto":
        dtype = DTYPES.get(config.compute_type)
        if dtype is None:
            raise ConfigError(f"model {config.id!r}: compute_type {config.compute_type!r} is "
                              f"not one of auto, {', '.join(DTYPES)}")
        return Placement(device, dtype)
    if device == "cpu":
        return Placement(device, torch.float32)
    wants_bfloat16 = pipeline_class.startswith(BFLOAT16_FAMILIES)
    if wants_bfloat16 and torch.cuda.is_bf16_supported():
        return Placement(device, torch.bfloat16)
    return Placement(device, torch.float16)


def save_memory(pipeline: Any, placement: Placement) -> tuple[str, ...]:
    """Turns on the VAE's memory savings; returns what it turned on, for the boot log.

    Sliced decoding (one image of a batch at a time) changes no pixel and keeps ``n = 10``
    from needing ten images' worth of decoder activations at once. On CUDA, tiled decoding
    also bounds the decoder's memory for sizes above the VAE's native tile (it blends tile
    seams, so pixels may differ slightly from an untiled decode). Attention slicing is not
    used: torch's scaled-dot-product attention is already memory-efficient, and slicing on
    top of it only slows every step.
    """
    vae = getattr(pipeline, "vae", None)
    applied: list[str] = []
    if vae is not None and hasattr(vae, "use_slicing"):
        vae.enable_slicing()
        applied.append("vae slicing")
    if placement.device == "cuda" and vae is not None and hasattr(vae, "use_tiling"):
        vae.enable_tiling()
        applied.append("vae tiling")
    return tuple(applied)
