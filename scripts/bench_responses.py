"""The cost of a Responses turn against the same chat completion: one server, one run, same box.

One appliance serves the chosen models. For each run the same prompt goes three ways, greedy
(temperature 0) with the same output budget, in an order that rotates run by run so drift in
the machine falls on every side alike:
- ``chat``: POST /v1/chat/completions, streamed (with usage);
- ``responses``: POST /v1/responses, streamed, ``store`` left at its default (true), so the
  stored response is written as a client that does not opt out pays for it;
- ``responses store:false``: the same without the stored copy.
Then each side once more without streaming, for the whole request's wall time.

Measured, printed per run and as a table of medians with ratios against chat:
- TTFT: from sending the request to the first text delta (chat ``delta.content``, Responses
  ``response.output_text.delta``), the openai SDK's own work in this process included;
- decode tokens/s = (output tokens - 1) / (last text delta - first text delta);
- the wall time of a non-streamed request (the body parsed, the store written, the JSON back).

Answers should be the same text on every side (the same prompt through the same template);
"same text" counts the runs where they are. Prompts ask for long stories so both sides decode
the whole budget unless the model stops.

Usage: .venv/bin/python scripts/bench_responses.py [--model smollm2|gemma|both] [--runs N]
       [--max-tokens N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
from devtools import server_harness as harness
from devtools.server_harness import GEMMA, ROOT, SMOLLM2, create_key, free_port, toml_string

CONTEXT = 2048
WARMUP_RUNS = 2  # per side, not counted: the SDK's first-call costs, the store's first write
BOOT_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 300.0
SETTLE_S = 0.2  # lets the previous request's bookkeeping (ledger, store) finish first

PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a map inside a bottle.",
    "Write a long story about a robot that learns to bake bread in a small village.",
    "Write a long story about two friends crossing a desert to find a lost city.",
)
SIDES = ("chat", "responses", "responses store:false")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_id: str
    toml: str  # its [[models]] table


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    output_tokens: int
    decode_tps: float
    text: str


def model_table(model_id: str, path: Path, extra: str = "") -> str:
    return (f"[[models]]\nid = {toml_string(model_id)}\npath = {toml_string(str(path))}\n"
            f"context_length = {CONTEXT}\nparallel = 1\n{extra}")


def gemma_spec() -> ModelSpec:
    """Template and stop strings from models.toml, so the bench serves what users serve."""
    raw = tomllib.loads((ROOT / "models.toml").read_text(encoding="utf-8"))
    entry = next(m for m in raw["models"] if m["id"] == "gemma-3-270m")
    stops = ", ".join(toml_string(s) for s in entry["stop"])
    extra = f"chat_template = {toml_string(entry['chat_template'])}\nstop = [{stops}]\n"
    return ModelSpec("gemma", "gemma-3-270m", model_table("gemma-3-270m", GEMMA, extra))


def specs(choice: str) -> list[ModelSpec]:
    smollm2 = ModelSpec("smollm2", "smollm2-135m-instruct",
                        model_table("smollm2-135m-instruct", SMOLLM2))
    chosen = {"smollm2": [smollm2], "gemma": [gemma_spec()], "both": [smollm2, gemma_spec()]}
    return chosen[choice]


def decode_rate(tokens: int, first: float | None, last: float | None) -> float:
    if first is None or last is None or tokens < 2 or last <= first:
        return float("nan")
    return (tokens - 1) / (last - first)


class Timer:
    """The first and last text delta of one streamed request, from its start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.parts: list[str] = []

    def text(self, delta: str) -> None:
        if delta:
            self.last = time.perf_counter()
            self.first = self.first if self.first is not None else self.last
            self.parts.append(delta)

    def sample(self, tokens: int) -> Sample:
        ttft = self.first - self.started if self.first is not None else float("nan")
        return Sample(ttft, tokens, decode_rate(tokens, self.first, self.last),
                      "".join(self.parts))


def stream_chat(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> Sample:
    timer = Timer()
    tokens = -1  # stays -1 if no usage chunk comes, which the table then shows
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True}, temperature=0, max_tokens=max_tokens):
        for choice in chunk.choices:
            timer.text(choice.delta.content or "")
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return timer.sample(tokens)


def stream_responses(client: openai.OpenAI, model: str, prompt: str, max_tokens: int,
                     store: bool | None) -> Sample:
    timer = Timer()
    tokens = -1
    extra: dict[str, Any] = {} if store is None else {"store": store}
    for event in client.responses.create(model=model, input=prompt, stream=True,
                                         temperature=0, max_output_tokens=max_tokens, **extra):
        if event.type == "response.output_text.delta":
            timer.text(event.delta)
        elif event.type in ("response.completed", "response.incomplete"):
            usage = event.response.usage
            tokens = usage.output_tokens if usage is not None else -1
    return timer.sample(tokens)


def whole_chat(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> float:
    started = time.perf_counter()
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                   temperature=0, max_tokens=max_tokens)
    return time.perf_counter() - started


def whole_responses(client: openai.OpenAI, model: str, prompt: str, max_tokens: int,
                    store: bool | None) -> float:
    extra: dict[str, Any] = {} if store is None else {"store": store}
    started = time.perf_counter()
    client.responses.create(model=model, input=prompt, temperature=0,
                            max_output_tokens=max_tokens, **extra)
    return time.perf_counter() - started


@dataclass
class SideResults:
    streamed: list[Sample]
    wall_s: list[float]


def side_calls(client: openai.OpenAI, model: str, max_tokens: int) -> dict[
        str, tuple[Callable[[str], Sample], Callable[[str], float]]]:
    return {
        "chat": (lambda p: stream_chat(client, model, p, max_tokens),
                 lambda p: whole_chat(client, model, p, max_tokens)),
        "responses": (lambda p: stream_responses(client, model, p, max_tokens, None),
                      lambda p: whole_responses(client, model, p, max_tokens, None)),
        "responses store:false": (lambda p: stream_responses(client, model, p, max_tokens, False),
                                  lambda p: whole_responses(client, model, p, max_tokens, False)),
    }


def rotated(run: int) -> tuple[str, ...]:
    shift = run % len(SIDES)
    return SIDES[shift:] + SIDES[:shift]


def bench_model(client: openai.OpenAI, spec: ModelSpec, runs: int,
                max_tokens: int) -> dict[str, SideResults]:
    calls = side_calls(client, spec.model_id, max_tokens)
    for side in SIDES:
        for warm in range(WARMUP_RUNS):
            calls[side][0](PROMPTS[warm % len(PROMPTS)])
    results = {side: SideResults([], []) for side in SIDES}
    for run in range(runs):
        prompt = PROMPTS[run % len(PROMPTS)]
        for side in rotated(run):
            time.sleep(SETTLE_S)
            results[side].streamed.append(calls[side][0](prompt))
        for side in rotated(run):
            time.sleep(SETTLE_S)
            results[side].wall_s.append(calls[side][1](prompt))
        line = "  ".join(
            f"{side} {results[side].streamed[-1].output_tokens:>4} tok "
            f"{results[side].streamed[-1].decode_tps:7.1f} tok/s "
            f"ttft {ms(results[side].streamed[-1].ttft_s):>4} ms "
            f"wall {ms(results[side].wall_s[-1]):>5} ms" for side in SIDES)
        print(f"  run {run + 1}  {line}", flush=True)
    return results


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(spec: ModelSpec, results: dict[str, SideResults]) -> None:
    chat = results["chat"]
    base = {"ttft": median([s.ttft_s for s in chat.streamed]),
            "tps": median([s.decode_tps for s in chat.streamed]),
            "wall": median(chat.wall_s)}
    print(f"\n{spec.name} ({spec.model_id}): medians; ratio = side / chat")
    print(f"  {'side':<22} {'TTFT ms':>8} {'ratio':>6} {'decode tok/s':>12} {'ratio':>6} "
          f"{'wall ms':>8} {'ratio':>6} {'tokens':>7} {'same text':>9}")
    for side in SIDES:
        got = results[side]
        ttft = median([s.ttft_s for s in got.streamed])
        tps = median([s.decode_tps for s in got.streamed])
        wall = median(got.wall_s)
        tokens = median([float(s.output_tokens) for s in got.streamed])
        same = sum(a.text == b.text for a, b in zip(got.streamed, chat.streamed, strict=True))
        print(f"  {side:<22} {ms(ttft):>8} {ttft / base['ttft']:>6.2f} {tps:>12.1f} "
              f"{tps / base['tps']:>6.2f} {ms(wall):>8} {wall / base['wall']:>6.2f} "
              f"{tokens:>7.0f} {same:>5}/{len(got.streamed)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "gemma", "both"), default="both")
    parser.add_argument("--runs", type=int, default=6, help="runs per side (default 6)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    if args.runs < 1 or args.max_tokens < 2:
        parser.error("--runs must be at least 1 and --max-tokens at least 2")
    chosen = specs(args.model)
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; openai {openai.__version__}; "
          f"context {CONTEXT}, one slot per model, max tokens {args.max_tokens}, temperature 0, "
          f"{args.runs} runs per side after {WARMUP_RUNS} warm-up runs", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-responses-") as tmp:
        port = free_port()
        config = harness.write_config(Path(tmp), port, "\n".join(s.toml for s in chosen))
        key = create_key(config, "bench")
        server = harness.start_server(config, port, timeout=BOOT_TIMEOUT_S)
        try:
            with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key,
                               timeout=REQUEST_TIMEOUT_S, max_retries=0) as client:
                for spec in chosen:
                    print(f"\n{spec.name}:", flush=True)
                    print_table(spec, bench_model(client, spec, args.runs, args.max_tokens))
        finally:
            server.stop()
        problems = [line for line in server.log().splitlines()
                    if any(word in line for word in ("ERROR", "Traceback"))]
    for line in problems:
        print(f"  server log: {line}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
