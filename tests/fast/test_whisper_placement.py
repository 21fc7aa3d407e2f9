"""Where a whisper model lands: CUDA when it can compute there, the CPU otherwise.

CTranslate2's PyPI wheels open their CUDA libraries at the first computation (4.8.5 is built
for CUDA 12: ``libcublas.so.12``), so a machine with another CUDA counts a GPU and then fails.
``place`` is driven here with fake loaders: no GPU needed.
"""

from __future__ import annotations

import logging

import pytest

from appliance.engines.whisper import place
from appliance.errors import ConfigError

MISSING = "Library libcublas.so.12 is not found or cannot be loaded"


class Loads:
    """Records each (device, compute type) asked for; the probe fails on CUDA when told to."""

    def __init__(self, cuda_fails: bool):
        self.cuda_fails = cuda_fails
        self.asked: list[tuple[str, str]] = []

    def load(self, device: str, compute_type: str) -> str:
        self.asked.append((device, compute_type))
        return f"model on {device}"

    def probe(self, model: str) -> None:
        if self.cuda_fails and model == "model on cuda":
            raise RuntimeError(MISSING)


def test_auto_with_a_working_gpu_lands_on_cuda_in_float16() -> None:
    loads = Loads(cuda_fails=False)
    assert place("w", "auto", "auto", 1, loads.load, loads.probe) == \
        ("model on cuda", "cuda", "float16")
    assert loads.asked == [("cuda", "float16")]


def test_auto_without_a_gpu_never_tries_cuda() -> None:
    loads = Loads(cuda_fails=False)
    assert place("w", "auto", "auto", 0, loads.load, loads.probe) == \
        ("model on cpu", "cpu", "int8")
    assert loads.asked == [("cpu", "int8")]


def test_auto_with_unloadable_cuda_libraries_says_so_once_and_runs_on_the_cpu(
        caplog: pytest.LogCaptureFixture) -> None:
    loads = Loads(cuda_fails=True)
    with caplog.at_level(logging.WARNING, logger="appliance.engines.whisper"):
        placed = place("whisper-tiny.en", "auto", "auto", 1, loads.load, loads.probe)
    assert placed == ("model on cpu", "cpu", "int8")
    assert loads.asked == [("cuda", "float16"), ("cpu", "int8")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "whisper-tiny.en" in warnings[0] and MISSING in warnings[0]
    assert "on the CPU" in warnings[0]


def test_cuda_asked_for_with_unloadable_libraries_stops_the_boot_naming_the_library() -> None:
    loads = Loads(cuda_fails=True)
    with pytest.raises(ConfigError, match=r"libcublas\.so\.12") as raised:
        place("whisper-base", "cuda", "auto", 1, loads.load, loads.probe)
    assert "whisper-base" in str(raised.value) and 'device = "cuda"' in str(raised.value)
    assert loads.asked == [("cuda", "float16")]


def test_an_explicit_compute_type_is_kept_on_the_fallback() -> None:
    loads = Loads(cuda_fails=True)
    assert place("w", "auto", "float32", 1, loads.load, loads.probe) == \
        ("model on cpu", "cpu", "float32")
