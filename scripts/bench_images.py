"""Benchmark: image generation through the appliance's HTTP path against the same diffusers
pipeline called in-process, same run, same machine.

Both sides load the same pipeline folder on the same device and dtype (the engine's own
choice), and make the same image: same prompt, size, steps, guidance and seed. The sides
alternate run by run (and which goes first), so drift in the machine falls on both alike;
only one side works at a time. Measured per run, and printed as medians:

- in-process, plain: ``pipe(prompt, ...)`` returning a PIL image, as diffusers users write it;
- in-process, as the engine calls it: the same under ``torch.inference_mode()`` with
  ``output_type="np"`` and the engine's memory savings (sliced VAE decoding): the work the
  server does, minus HTTP. The ratios are against this;
- HTTP b64_json: the official openai SDK's ``images.generate`` call, from sending the request
  to the parsed response in hand (JSON, queueing, PNG encoding, base64, transfer included);
- HTTP url: the same with ``response_format: "url"``, plus fetching the file.

"max pixel diff" is the largest difference of one 8-bit channel between the server's PNG and
the in-process image (engine's call) over all runs: 0 when the pixels are identical.

The tiny default pipeline makes noise quickly, so encoding and transfer weigh more against it
than against a real model; the overhead shrinks as a model's compute grows.

Usage: .venv/bin/python scripts/bench_images.py [--model PATH] [--size 512x512] [--steps 20]
       [--n 1] [--runs 5] [--threads N]
       (--model defaults to models/tiny-random-sd, built if missing)
"""

from __future__ import annotations

import argparse
import base64
import io
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import torch
from diffusers import AutoPipelineForText2Image
from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench_chat import start_server

from appliance.config import ImageModelConfig  # the engine's own choices, not copies
from appliance.engines.diffusion_device import (
    Placement,
    choose_placement,
    pipeline_class_name,
    save_memory,
)
from devtools import server_harness as harness
from devtools.server_harness import TINY_SD, build_tiny_sd, create_key, free_port, toml_string

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
SEED = 1234
MODEL_ID = "bench-image"


@dataclass
class Case:
    width: int
    height: int
    steps: int
    n: int
    plain: list[float] = field(default_factory=list)
    inprocess: list[float] = field(default_factory=list)
    b64: list[float] = field(default_factory=list)
    url: list[float] = field(default_factory=list)
    max_diff: int = 0  # the largest difference of one 8-bit channel, server vs in-process

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def write_config(folder: Path, model: Path, port: int, case: Case, threads: int | None) -> Path:
    lines = [
        "[[models]]", f"id = {toml_string(MODEL_ID)}", 'kind = "image"',
        f"path = {toml_string(str(model))}", f"steps = {case.steps}",
        f"sizes = [{toml_string(case.size)}]",
    ]
    if threads is not None:
        lines.append(f"threads = {threads}")
    return harness.write_config(folder, port, "\n".join(lines) + "\n")


def load_inprocess(model: Path) -> tuple[Any, Placement]:
    placement = choose_placement(ImageModelConfig(id=MODEL_ID, path=model),
                                 pipeline_class_name(model))
    pipe = AutoPipelineForText2Image.from_pretrained(str(model), dtype=placement.dtype,
                                                     local_files_only=True)
    pipe.to(placement.device)
    pipe.set_progress_bar_config(disable=True)
    print(f"pipeline {type(pipe).__name__} on {placement.label}", file=sys.stderr)
    return pipe, placement


def run_plain(pipe: Any, case: Case) -> list[Image.Image]:
    pipe.vae.disable_slicing()  # a plain pipeline: diffusers' defaults
    pipe.vae.disable_tiling()
    generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(case.n)]
    images: list[Image.Image] = pipe(PROMPT, height=case.height, width=case.width,
                                     num_inference_steps=case.steps,
                                     num_images_per_prompt=case.n, generator=generators).images
    return images


def run_inprocess(pipe: Any, placement: Placement, case: Case) -> list[Image.Image]:
    save_memory(pipe, placement)
    generators = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(case.n)]
    with torch.inference_mode():
        pixels = pipe(PROMPT, height=case.height, width=case.width,
                      num_inference_steps=case.steps, num_images_per_prompt=case.n,
                      generator=generators, output_type="np").images
    return [Image.fromarray((image * 255).round().astype("uint8")) for image in pixels]


def run_b64(client: openai.OpenAI, case: Case) -> list[Image.Image]:
    result = client.images.generate(model=MODEL_ID, prompt=PROMPT, size=case.size, n=case.n,
                                    response_format="b64_json", extra_body={"seed": SEED})
    return [Image.open(io.BytesIO(base64.b64decode(d.b64_json or ""))) for d in result.data or []]


def run_url(client: openai.OpenAI, http: httpx2.Client, case: Case) -> None:
    result = client.images.generate(model=MODEL_ID, prompt=PROMPT, size=case.size, n=case.n,
                                    response_format="url", extra_body={"seed": SEED})
    for item in result.data or []:
        http.get(item.url or "").raise_for_status()


def measure(case: Case, model: Path, runs: int, threads: int | None) -> None:
    pipe, placement = load_inprocess(model)
    with tempfile.TemporaryDirectory(prefix="bench-images-") as scratch:
        port = free_port()
        config = write_config(Path(scratch), model, port, case, threads)
        key = create_key(config, "bench")
        server = start_server(config, port)
        print(f"server ready in {server.boot_s:.1f}s", file=sys.stderr)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                               max_retries=0, timeout=600)
        http = httpx2.Client()
        try:
            # One untimed round each: first-call costs (SDK, allocator) out of the medians.
            run_plain(pipe, case)
            run_inprocess(pipe, placement, case)
            run_b64(client, case)
            order = ["plain", "inprocess", "http"]
            for index in range(runs):
                sides = order[index % 3:] + order[:index % 3]  # rotate who goes first
                for side in sides:
                    if side == "plain":
                        case.plain.append(timed(lambda: run_plain(pipe, case))[0])
                    elif side == "inprocess":
                        seconds, local = timed(lambda: run_inprocess(pipe, placement, case))
                        case.inprocess.append(seconds)
                    else:
                        seconds, remote = timed(lambda: run_b64(client, case))
                        case.b64.append(seconds)
                        case.url.append(timed(lambda: run_url(client, http, case))[0])
                for mine, theirs in zip(local, remote, strict=True):
                    diff = ImageChops.difference(mine.convert("RGB"), theirs.convert("RGB"))
                    case.max_diff = max(case.max_diff, *(high for _, high in diff.getextrema()))
                print(f"  run {index + 1}/{runs}: plain {case.plain[-1]:.3f}s, in-process "
                      f"{case.inprocess[-1]:.3f}s, b64 {case.b64[-1]:.3f}s, url "
                      f"{case.url[-1]:.3f}s", file=sys.stderr)
        finally:
            http.close()
            client.close()
            server.stop()


def print_table(cases: list[Case], runs: int) -> None:
    device = f"CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() \
        else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"\n{platform.node()} | torch {torch.__version__} | {device} | {runs} runs per case, "
          "medians\n")
    print("| size | steps | n | plain pipe() (s) | in-process, engine's call (s) | "
          "HTTP b64_json (s) | b64 / in-process | HTTP url + fetch (s) | url / in-process | "
          "max pixel diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case in cases:
        plain = statistics.median(case.plain)
        base = statistics.median(case.inprocess)
        b64 = statistics.median(case.b64)
        url = statistics.median(case.url)
        print(f"| {case.size} | {case.steps} | {case.n} | {plain:.3f} | {base:.3f} | {b64:.3f} | "
              f"{b64 / base:.3f} ({(b64 / base - 1) * 100:+.1f}%) | {url:.3f} | "
              f"{url / base:.3f} ({(url / base - 1) * 100:+.1f}%) | {case.max_diff} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=TINY_SD)
    parser.add_argument("--size", action="append", help="WxH; repeat for several cases "
                        "(default 256x256 and 512x512)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads on both sides (default: "
                        "torch's choice); 1 steadies numbers on a busy machine")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model: Path = args.model.resolve()
    if not (model / "model_index.json").is_file():
        build_tiny_sd(model, quiet=False)
    cases = []
    for size in args.size or ["256x256", "512x512"]:
        width, _, height = size.partition("x")
        cases.append(Case(int(width), int(height), args.steps, args.n))
    for case in cases:
        print(f"case {case.size}, {case.steps} steps, n={case.n}", file=sys.stderr)
        measure(case, model, args.runs, args.threads)
    print_table(cases, args.runs)


if __name__ == "__main__":
    main()
