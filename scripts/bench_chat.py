"""Chat speed: the appliance over HTTP against llama-cpp-python in process, same run, same box.

For each model it loads the same GGUF file both ways and sends the same prompts with
temperature 0 and the same max_tokens, alternating the sides run by run (and which side goes
first), so drift in the machine (heat, other load) falls on both sides alike. Only one side
works at a time: the baseline model sits idle in this process while the server answers, and the
server sits idle while the baseline decodes.

Measured, and printed as tables of medians:
- decode tokens/s = (completion_tokens - 1) / (last content chunk - first content chunk);
- TTFT: from sending the request (or calling llama-cpp-python) to the first content chunk; over
  HTTP it includes the openai SDK's work in this process, its first-call costs too;
- the appliance's boot: process start to /ready answering 200, polled every 50 ms;
- the appliance's TTFT for the first ten requests after ready (first, tenth, median of 2..10).

Prompts ask for long stories because neither side can ignore EOS: a run that stops early
decodes fewer tokens, so the completion token counts are printed with the speeds. Gemma's
GGUF has no chat template; the appliance gets the template and stop strings of the gemma entry
in models.toml, and the baseline gets the same turn format as one raw prompt (create_completion).

"same text" counts runs whose greedy answers match. Llama() turns flash attention off by
default while a context made from llama.cpp's defaults (the appliance's) leaves it on auto, so
float sums differ and answers may part after some tens of tokens without either being wrong.

Usage: .venv/bin/python scripts/bench_chat.py [--model smollm2|gemma|both] [--runs N]
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import openai
from openai.types.chat import ChatCompletionUserMessageParam

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
from devtools import server_harness as harness
from devtools.server_harness import (
    GEMMA,
    ROOT,
    SMOLLM2,
    RunningServer,
    create_key,
    free_port,
    toml_string,
)

CONTEXT = 2048
TTFT_SERIES = 10  # requests right after ready: the first shows any cold start, the tenth not
SERIES_MAX_TOKENS = 8  # the series only needs first tokens; short keeps it quick
READY_POLL_S = 0.05
BOOT_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 300.0
SETTLE_S = 0.2  # lets the other side's last bookkeeping (ledger write, threads) finish first

PROMPTS = (
    "Write a long story about a lighthouse keeper who finds a map inside a bottle.",
    "Write a long story about a robot that learns to bake bread in a small village.",
    "Write a long story about two friends crossing a desert to find a lost city.",
)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    model_id: str
    path: Path
    chat_template: str | None = None  # None: the template inside the GGUF
    stop: tuple[str, ...] = ()

    @property
    def raw_prompt(self) -> bool:
        return self.chat_template is not None


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    completion_tokens: int
    decode_tps: float
    finish: str
    text: str


def gemma_spec() -> ModelSpec:
    """Template and stop strings come from models.toml, so the bench serves what users serve."""
    raw = tomllib.loads((ROOT / "models.toml").read_text(encoding="utf-8"))
    entry = next(m for m in raw["models"] if m["id"] == "gemma-3-270m")
    return ModelSpec("gemma", "gemma-3-270m", GEMMA,
                     chat_template=entry["chat_template"], stop=tuple(entry["stop"]))


def specs(choice: str) -> list[ModelSpec]:
    smollm2 = ModelSpec("smollm2", "smollm2-135m-instruct", SMOLLM2)
    chosen = {"smollm2": [smollm2], "gemma": [gemma_spec()], "both": [smollm2, gemma_spec()]}
    return chosen[choice]


def messages(prompt: str) -> list[ChatCompletionUserMessageParam]:
    # Both clients take this shape; llama-cpp-python's own TypedDict has the same keys.
    return [{"role": "user", "content": prompt}]


def gemma_prompt(prompt: str) -> str:
    # No "<bos>" here: llama-cpp-python adds BOS when it tokenizes, as Gemma's GGUF asks.
    return f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"


def decode_rate(tokens: int, first: float | None, last: float | None) -> float:
    if first is None or last is None or tokens < 2 or last <= first:
        return float("nan")
    return (tokens - 1) / (last - first)


# --- the baseline: llama-cpp-python in this process ---


def load_baseline(spec: ModelSpec) -> llama_cpp.Llama:
    threads = os.cpu_count() or 1
    return llama_cpp.Llama(str(spec.path), n_ctx=CONTEXT, n_threads=threads,
                           n_threads_batch=threads, n_gpu_layers=-1, verbose=False)


def baseline_chunks(llm: llama_cpp.Llama, spec: ModelSpec, prompt: str,
                    max_tokens: int) -> Iterator[tuple[str, str | None]]:
    """Yields (content, finish_reason) pairs from either llama-cpp-python entry point."""
    if spec.raw_prompt:
        stream: Any = llm.create_completion(gemma_prompt(prompt), stream=True, temperature=0,
                                            max_tokens=max_tokens, stop=list(spec.stop))
        for chunk in stream:
            choice = chunk["choices"][0]
            yield choice["text"], choice["finish_reason"]
    else:
        stream = llm.create_chat_completion(messages(prompt),  # type: ignore[arg-type]
                                            stream=True, temperature=0,
                                            max_tokens=max_tokens)
        for chunk in stream:
            choice = chunk["choices"][0]
            yield choice["delta"].get("content") or "", choice["finish_reason"]


def run_baseline(llm: llama_cpp.Llama, spec: ModelSpec, prompt: str, max_tokens: int) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    last: float | None = None
    finish = "?"
    parts: list[str] = []
    for content, finish_reason in baseline_chunks(llm, spec, prompt, max_tokens):
        if content:
            last = time.perf_counter()
            first = first if first is not None else last
            parts.append(content)
        finish = finish_reason or finish
    text = "".join(parts)
    # Streamed chunks carry no usage here, so the text is tokenized again to count tokens.
    tokens = len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    ttft = (first - started) if first is not None else float("nan")
    return Sample(ttft, tokens, decode_rate(tokens, first, last), finish, text)


# --- the appliance: the real server in a subprocess ---


def write_config(folder: Path, spec: ModelSpec, port: int, context: int = CONTEXT,
                 slots: int | None = None) -> Path:
    lines = ["[[models]]", f"id = {toml_string(spec.model_id)}",
             f"path = {toml_string(str(spec.path))}", f"context_length = {context}"]
    if slots is not None:
        lines.append(f"parallel = {slots}")
    if spec.chat_template is not None:
        lines.append(f"chat_template = {toml_string(spec.chat_template)}")
    if spec.stop:
        lines.append(f"stop = [{', '.join(toml_string(s) for s in spec.stop)}]")
    return harness.write_config(folder, port, "\n".join(lines) + "\n")


def start_server(config: Path, port: int) -> RunningServer:
    """Starts `appliance serve`; its ``boot_s`` is the seconds from spawn to /ready 200."""
    return harness.start_server(config, port, timeout=BOOT_TIMEOUT_S, poll_s=READY_POLL_S)


def run_appliance(client: openai.OpenAI, spec: ModelSpec, prompt: str,
                  max_tokens: int) -> Sample:
    started = time.perf_counter()
    first: float | None = None
    last: float | None = None
    finish = "?"
    tokens = -1  # stays -1 if the server sends no usage chunk, which the table then shows
    parts: list[str] = []
    stream = client.chat.completions.create(
        model=spec.model_id, messages=messages(prompt),
        stream=True, stream_options={"include_usage": True}, temperature=0,
        max_tokens=max_tokens,
    )
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                last = time.perf_counter()
                first = first if first is not None else last
                parts.append(choice.delta.content)
            finish = choice.finish_reason or finish
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ttft = (first - started) if first is not None else float("nan")
    return Sample(ttft, tokens, decode_rate(tokens, first, last), finish, "".join(parts))


# --- one model, both sides ---


@dataclass
class ModelReport:
    spec: ModelSpec
    boot_s: float
    series_ttft_s: list[float]
    baseline_load_s: float
    baseline_first_ttft_s: float  # the first call after loading, which the bench does not count
    baseline: list[Sample]
    appliance: list[Sample]
    log_problems: list[str]


def prompt_at(index: int) -> str:
    # One cycle over the series and the runs, so every measured request follows a different
    # prompt on both sides and neither side's prefix cache holds the whole prompt.
    return PROMPTS[index % len(PROMPTS)]


def bench_model(spec: ModelSpec, runs: int, max_tokens: int) -> ModelReport:
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as tmp:
        port = free_port()
        config = write_config(Path(tmp), spec, port)
        key = create_key(config, "bench")
        server = start_server(config, port)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                   timeout=REQUEST_TIMEOUT_S, max_retries=0)
            series = [run_appliance(client, spec, prompt_at(i), SERIES_MAX_TOKENS).ttft_s
                      for i in range(TTFT_SERIES)]
            loaded = time.perf_counter()
            llm = load_baseline(spec)
            load_s = time.perf_counter() - loaded
            try:
                # The appliance warmed up at boot and in the series; this is the baseline's
                # warm-up, on the prompt the series ended with, so both caches match.
                cold = run_baseline(llm, spec, prompt_at(TTFT_SERIES - 1), SERIES_MAX_TOKENS)
                baseline, appliance = [], []
                for run in range(runs):
                    prompt = prompt_at(TTFT_SERIES + run)
                    order = ("baseline", "appliance") if run % 2 == 0 else ("appliance",
                                                                            "baseline")
                    for side in order:
                        time.sleep(SETTLE_S)
                        if side == "baseline":
                            baseline.append(run_baseline(llm, spec, prompt, max_tokens))
                        else:
                            appliance.append(run_appliance(client, spec, prompt, max_tokens))
                    print_run(run, prompt, baseline[-1], appliance[-1])
            finally:
                llm.close()
            client.close()
        finally:
            server.stop()
        problems = [line for line in server.log().splitlines()
                    if any(word in line for word in ("ERROR", "Traceback", "WARNING"))]
    return ModelReport(spec, server.boot_s, series, load_s, cold.ttft_s, baseline, appliance,
                       problems)


# --- tables ---


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_run(run: int, prompt: str, base: Sample, app: Sample) -> None:
    same = "same" if base.text == app.text else "differs"
    print(f"  run {run + 1}  prompt {PROMPTS.index(prompt) + 1}  "
          f"baseline {base.completion_tokens:>4} tok {base.decode_tps:7.1f} tok/s "
          f"ttft {ms(base.ttft_s):>4} ms ({base.finish})  |  "
          f"appliance {app.completion_tokens:>4} tok {app.decode_tps:7.1f} tok/s "
          f"ttft {ms(app.ttft_s):>4} ms ({app.finish})  text {same}", flush=True)


def print_model(report: ModelReport) -> None:
    spec = report.spec
    base_tps = median([s.decode_tps for s in report.baseline])
    app_tps = median([s.decode_tps for s in report.appliance])
    series = report.series_ttft_s
    rows = [
        ("decode tok/s (p50)", f"{base_tps:.1f}", f"{app_tps:.1f}", f"{app_tps / base_tps:.2f}"),
        ("TTFT ms (p50)", ms(median([s.ttft_s for s in report.baseline])),
         ms(median([s.ttft_s for s in report.appliance])), ""),
        ("completion tokens per run",
         ",".join(str(s.completion_tokens) for s in report.baseline),
         ",".join(str(s.completion_tokens) for s in report.appliance), ""),
        ("same text as baseline", "",
         f"{sum(b.text == a.text for b, a in zip(report.baseline, report.appliance, strict=True))}"
         f"/{len(report.appliance)}", ""),
        ("load / boot-to-ready s", f"{report.baseline_load_s:.2f}", f"{report.boot_s:.2f}", ""),
        ("TTFT ms of the 1st call (after load/ready)", ms(report.baseline_first_ttft_s),
         ms(series[0]), ""),
        (f"TTFT ms after ready: 1st/{len(series)}th/p50 2..{len(series)}", "",
         f"{ms(series[0])}/{ms(series[-1])}/{ms(median(series[1:]))}", ""),
    ]
    kind = "raw prompt (create_completion)" if spec.raw_prompt else "create_chat_completion"
    kind += ", flash_attn off (Llama's default)"
    print(f"\n{spec.name}: {spec.path.name}; baseline: in-process llama-cpp-python {kind}")
    print(f"  {'':<44} {'baseline':>14} {'appliance':>14} {'ratio':>6}")
    for label, base, app, ratio in rows:
        print(f"  {label:<44} {base:>14} {app:>14} {ratio:>6}".rstrip())
    for line in report.log_problems:
        print(f"  server log: {line}")


def print_summary(reports: list[ModelReport]) -> None:
    print("\nsummary (medians; ratio = appliance / baseline decode tok/s)")
    header = (f"{'model':<8} {'base tok/s':>10} {'app tok/s':>10} {'ratio':>6} "
              f"{'base TTFT ms':>12} {'app TTFT ms':>11} {'1st/10th TTFT ms':>16} {'boot s':>7}")
    print(header)
    for r in reports:
        base_tps = median([s.decode_tps for s in r.baseline])
        app_tps = median([s.decode_tps for s in r.appliance])
        first_tenth = f"{ms(r.series_ttft_s[0])}/{ms(r.series_ttft_s[-1])}"
        print(f"{r.spec.name:<8} {base_tps:>10.1f} {app_tps:>10.1f} {app_tps / base_tps:>6.2f} "
              f"{ms(median([s.ttft_s for s in r.baseline])):>12} "
              f"{ms(median([s.ttft_s for s in r.appliance])):>11} {first_tenth:>16} "
              f"{r.boot_s:>7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "gemma", "both"), default="both")
    parser.add_argument("--runs", type=int, default=5, help="requests per side (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    if args.runs < 1 or args.max_tokens < 2:
        parser.error("--runs must be at least 1 and --max-tokens at least 2")
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; llama-cpp-python "
          f"{llama_cpp.__version__}, openai {openai.__version__}; n_ctx {CONTEXT}, "
          f"max_tokens {args.max_tokens}, temperature 0, {args.runs} runs per side", flush=True)
    started = time.perf_counter()
    reports = []
    for spec in specs(args.model):
        print(f"\n{spec.name}:", flush=True)
        reports.append(bench_model(spec, args.runs, args.max_tokens))
        print_model(reports[-1])
    print_summary(reports)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
