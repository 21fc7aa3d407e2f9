"""Concurrent chat: the appliance against llama.cpp's llama-server and llama-cpp-python's server.

For one model at a time (same GGUF file, same prompts, same run, same box) it measures four sides,
one after the other, so only one of them holds the CPUs at any moment:

- inprocess: llama-cpp-python in a child process, one stream (the ceiling of one stream); the
  child exits before any server starts, so its memory and threads are gone;
- appliance: `appliance serve` with `parallel = --slots` and context_length 4096 per slot;
- llama_server: llama.cpp's own server (scripts/build-llama-server), `-np --slots` slots with
  4096 tokens each (`-c` is the total, split per slot without a unified KV buffer);
- llama_cpp_server: `python -m llama_cpp.server` from a scratch venv outside the repository
  (~/.cache/appliance/bench-venv); it serves one request at a time. It runs with
  `--interrupt_requests False`: its default lets a waiting request cut the running stream short,
  which would turn a throughput test into a test of truncation.

Each server gets 2 warm-up requests, then for each concurrency level c it receives
--requests-per-level streaming chat requests (default 2 x c) with at most c in flight, from the
official openai SDK (AsyncOpenAI, max_retries=0, temperature 0, max_tokens). Prompts ask for
long stories so outputs run to max_tokens; completion tokens come from the usage chunk
(stream_options.include_usage) where the server sends one, else content chunks are counted (the
table says which). Per level: aggregate tok/s = completion tokens / wall time of the level;
stream tok/s = median over requests of (tokens - 1) / (last content chunk - first content chunk);
TTFT = send to first content chunk, p50 and p99 (nearest rank: the maximum below 100 requests).

The prefix test (appliance and llama_server): a long system message (~1,500 tokens) and a short
question, then the same system message with another question; TTFT of both, the ratio (target
<= 0.2) and the cached tokens each server reports for the second.

Gemma's GGUF has no chat template: the appliance gets the template and stop strings of the gemma
entry in models.toml, llama-server the same template file, llama_cpp_server its built-in "gemma"
chat format (the same turns for user-only messages), the in-process side the raw prompt; every
server request carries the same stop strings.

Usage: scripts/bench-concurrency [--model smollm2|gemma|both] [--slots 8]
       [--concurrency 1,4,8,16] [--max-tokens 64] [--requests-per-level N]
       [--skip inprocess,appliance,llama_server,llama_cpp_server] [--llama-server PATH]
       scripts/bench-concurrency --mixed [...]: long prompts among running streams and the
       short levels, against llama-server in interleaved rounds (scripts/bench_mixed.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
import openai
from bench_chat import (
    ModelSpec,
    decode_rate,
    median,
    ms,
    run_baseline,
    specs,
    write_config,
)
from openai.types.chat import ChatCompletionMessageParam

from devtools.server_harness import (
    APPLIANCE,
    ROOT,
    create_key,
    free_port,
    spawn,
    stop_process,
    wait_ready,
)

PYTHON = ROOT / ".venv" / "bin" / "python"
SIDES = ("inprocess", "appliance", "llama_server", "llama_cpp_server")
CONTEXT = 4096  # tokens per slot on every side
CPUS = os.cpu_count() or 1
BOOT_TIMEOUT_S = 300.0
READY_POLL_S = 0.1
REQUEST_TIMEOUT_S = 300.0  # one request, from send to its last chunk
LEVEL_TIMEOUT_S = 1800.0  # one concurrency level, all its requests
INPROCESS_TIMEOUT_S = 1800.0
VENV_TIMEOUT_S = 1800.0
WARM_REQUESTS = 2
WARM_MAX_TOKENS = 16
PREFIX_MAX_TOKENS = 8  # the prefix test only needs first tokens
PREFIX_NOTES = 60  # ~25 tokens each: ~1,500 tokens of system message
INPROCESS_MIN_RUNS = 4
BENCH_VENV = Path.home() / ".cache" / "appliance" / "bench-venv"

TOPICS = (
    "a lighthouse keeper who finds a map inside a bottle",
    "a robot that learns to bake bread in a small village",
    "two friends crossing a desert to find a lost city",
    "a girl who can talk to the wind on a northern island",
    "an old clockmaker whose clocks start running backwards",
    "a cat that becomes the mayor of a mountain town",
    "a sailor stranded on an island of talking birds",
    "a library that rearranges its books every night",
    "a young astronomer who discovers a new comet",
    "a chef who cooks for a travelling circus",
    "a dragon that is afraid of the dark",
    "a postman delivering letters across a frozen lake",
    "twin brothers who inherit a haunted vineyard",
    "a gardener who grows a tree that touches the clouds",
    "a detective solving a mystery on a night train",
    "a musician who loses her voice before a great concert",
)
PROMPTS = tuple(f"Write a long story about {topic}." for topic in TOPICS)
# Words the long prompts are made of, varied so no tokenizer squeezes them into repeats.
PLACES = ("the harbour archive", "the night ferry", "the old observatory", "the village bakery",
          "the mountain railway", "the river lock", "the glass workshop", "the winter market",
          "the school library", "the lighthouse", "the orchard cooperative", "the clock tower")
VERBS = ("must be inspected", "is recorded in the ledger", "opens to visitors",
         "is repaired by volunteers", "closes for cleaning", "receives new supplies",
         "is painted a fresh colour", "hosts a small concert")
TIMES = ("every Monday at dawn", "on the first day of each month", "after the spring floods",
         "before the autumn fair", "whenever the wind turns north",
         "during the long summer evenings", "once the snow has melted",
         "at the end of every season", "on the night of the full moon")
REASONS = ("because the records must stay complete", "so that travellers feel welcome",
           "since the mayor asked for it years ago", "to keep the old promise to the founders",
           "as the insurance contract requires", "because the children enjoy it")
WARM_PROMPTS = ("Write a long story about a bridge builder.",
                "Write a long story about a fisherman and a storm.")


# --- what one request and one level produced ---


@dataclass
class Result:
    error: str = ""
    ttft_s: float = float("nan")
    first: float | None = None
    last: float | None = None
    tokens: int = 0
    from_usage: bool = False
    prompt_tokens: int = -1
    cached_tokens: int | None = None
    finish: str = "?"

    @property
    def decode_tps(self) -> float:
        return decode_rate(self.tokens, self.first, self.last)


@dataclass
class Level:
    concurrency: int
    results: list[Result]
    wall_s: float

    @property
    def ok(self) -> list[Result]:
        return [r for r in self.results if not r.error]

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.ok)

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def stream_tps(self) -> float:
        return median([r.decode_tps for r in self.ok if not math.isnan(r.decode_tps)])

    def ttft(self, pct: float) -> float:
        return percentile([r.ttft_s for r in self.ok], pct)


@dataclass
class SideReport:
    side: str
    note: str = ""  # why it was skipped or failed, or how it counted tokens
    boot_s: float = float("nan")
    levels: list[Level] = field(default_factory=list)
    prefix: list[Result] = field(default_factory=list)
    inprocess: list[dict[str, Any]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# --- the requests ---


def messages(prompt: str, system: str | None = None) -> list[ChatCompletionMessageParam]:
    if system is None:
        return [{"role": "user", "content": prompt}]
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


async def one_request(client: openai.AsyncOpenAI, spec: ModelSpec, usage: bool,
                      chat: list[ChatCompletionMessageParam], max_tokens: int) -> Result:
    result = Result()
    started = time.perf_counter()
    chunks = 0
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            stream = await client.chat.completions.create(
                model=spec.model_id, messages=chat, stream=True, temperature=0,
                max_tokens=max_tokens, stop=list(spec.stop) if spec.stop else openai.omit,
                stream_options={"include_usage": True} if usage else openai.omit,
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        result.last = time.perf_counter()
                        if result.first is None:
                            result.first = result.last
                        chunks += 1
                    result.finish = choice.finish_reason or result.finish
                if chunk.usage is not None:
                    result.from_usage = True
                    result.tokens = chunk.usage.completion_tokens
                    result.prompt_tokens = chunk.usage.prompt_tokens
                    details = chunk.usage.prompt_tokens_details
                    if details is not None and details.cached_tokens is not None:
                        result.cached_tokens = details.cached_tokens
    except Exception as exc:  # every failure is counted and shown, never fatal to the run
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        result.error = (f"{type(exc).__name__}: {exc}{cause}".splitlines()[0][:300]
                        + f" after {time.perf_counter() - started:.1f} s")
    if not result.from_usage:
        result.tokens = chunks
    if result.first is not None:
        result.ttft_s = result.first - started
    elif not result.error:
        result.error = f"no content (finish_reason {result.finish})"
    return result


async def run_level(client: openai.AsyncOpenAI, spec: ModelSpec, usage: bool, concurrency: int,
                    count: int, max_tokens: int) -> Level:
    gate = asyncio.Semaphore(concurrency)

    async def gated(index: int) -> Result:
        async with gate:
            return await one_request(client, spec, usage, messages(PROMPTS[index % len(PROMPTS)]),
                                     max_tokens)

    started = time.perf_counter()
    tasks = [asyncio.create_task(gated(i)) for i in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=LEVEL_TIMEOUT_S)
    wall = time.perf_counter() - started
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    results = [t.result() if t in done else Result(error=f"level timeout {LEVEL_TIMEOUT_S:.0f}s")
               for t in tasks]
    return Level(concurrency, results, wall)


def long_system_message() -> str:
    """~1,500 tokens of varied sentences, so no tokenizer squeezes it into a few repeats."""
    notes = [f"Note {i + 1}: {PLACES[i % 12]} {VERBS[i * 5 % 8]} {TIMES[i * 7 % 9]}, "
             f"{REASONS[i * 11 % 6]}." for i in range(PREFIX_NOTES)]
    return "You are the town clerk. Answer briefly from these notes. " + " ".join(notes)


PREFIX_QUESTIONS = ("What does note 3 say about the old observatory?",
                    "Which notes mention the night ferry?")


async def measure_server(base_url: str, api_key: str, spec: ModelSpec, usage: bool,
                         levels: list[int], per_level: dict[int, int], max_tokens: int,
                         prefix: bool, report: SideReport) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                                timeout=REQUEST_TIMEOUT_S)
    try:
        for prompt in WARM_PROMPTS[:WARM_REQUESTS]:
            warm = await one_request(client, spec, usage, messages(prompt), WARM_MAX_TOKENS)
            if warm.error:
                report.note += f" warm-up failed: {warm.error};"
        for concurrency in levels:
            level = await run_level(client, spec, usage, concurrency, per_level[concurrency],
                                    max_tokens)
            report.levels.append(level)
            print(f"  {report.side:<16} c={concurrency:<3} {len(level.ok)}/{len(level.results)} ok"
                  f"  {level.aggregate_tps:7.1f} tok/s aggregate  {level.wall_s:6.1f} s",
                  flush=True)
        if prefix:
            system = long_system_message()
            for question in PREFIX_QUESTIONS:
                report.prefix.append(await one_request(client, spec, usage,
                                                       messages(question, system),
                                                       PREFIX_MAX_TOKENS))
    finally:
        await client.close()


# --- the sides ---


def launch(argv: list[str], folder: Path, ready_url: str) -> tuple[subprocess.Popen[bytes], float]:
    """Starts a server with its output in folder/server.log; returns it and seconds to ready."""
    started = time.perf_counter()
    process = spawn(argv, folder)
    wait_ready(process, ready_url, folder / "server.log", BOOT_TIMEOUT_S, READY_POLL_S,
               tail_lines=30)
    return process, time.perf_counter() - started


def log_lines(folder: Path, words: tuple[str, ...]) -> list[str]:
    path = folder / "server.log"
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line for line in text if any(word in line for word in words)][:20]


@dataclass(frozen=True)
class Plan:
    levels: list[int]
    per_level: dict[int, int]
    max_tokens: int
    slots: int
    llama_server: str | None  # the binary, or None when it cannot be had (reason in the note)
    llama_server_note: str


def serve_and_measure(report: SideReport, spec: ModelSpec, plan: Plan, argv: list[str],
                      folder: Path, ready_path: str, port: int, api_key: str, usage: bool,
                      prefix: bool) -> None:
    print(f"  {report.side}: {shlex.join(argv)}", flush=True)
    try:
        process, report.boot_s = launch(argv, folder, f"http://127.0.0.1:{port}{ready_path}")
    except RuntimeError as exc:
        report.note += f" did not start: {exc}"
        return
    try:
        asyncio.run(measure_server(f"http://127.0.0.1:{port}/v1", api_key, spec, usage,
                                   plan.levels, plan.per_level, plan.max_tokens, prefix, report))
    finally:
        stop_process(process)
        report.log_lines = log_lines(folder, ("ERROR", "Traceback", "error:", "Exception"))


def run_appliance(spec: ModelSpec, plan: Plan, folder: Path) -> SideReport:
    report = SideReport("appliance")
    port = free_port()
    config = write_config(folder, spec, port, CONTEXT, plan.slots)
    try:
        key = create_key(config, "bench")
    except subprocess.SubprocessError as exc:
        report.note = f"keys create failed: {exc}"
        return report
    argv = [*APPLIANCE, "serve", "--config", str(config)]
    serve_and_measure(report, spec, plan, argv, folder, "/ready", port, key, True, True)
    return report


def run_llama_server(spec: ModelSpec, plan: Plan, folder: Path) -> SideReport:
    report = SideReport("llama_server")
    if plan.llama_server is None:
        report.note = plan.llama_server_note
        return report
    port = free_port()
    argv = llama_server_argv(plan.llama_server, spec, plan.slots, port, folder)
    serve_and_measure(report, spec, plan, argv, folder, "/health", port, "none", True, True)
    report.log_lines += log_lines(folder, ("n_ctx_seq", "n_ctx_slot", "n_seq_max"))
    return report


def llama_server_argv(binary: str, spec: ModelSpec, slots: int, port: int,
                      folder: Path) -> list[str]:
    """llama-server on loopback with ``slots`` slots of CONTEXT tokens each, flash attention
    on, every CPU for decode and batch; a template file in ``folder`` where the GGUF has none."""
    argv = [binary, "-m", str(spec.path), "-c", str(CONTEXT * slots),
            "-np", str(slots), "--no-kv-unified", "-fa", "on", "-t", str(CPUS),
            "-tb", str(CPUS), "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    if spec.chat_template is not None:
        template = folder / "chat_template.jinja"
        template.write_text(spec.chat_template, encoding="utf-8")
        argv += ["--jinja", "--chat-template-file", str(template)]
    return argv


def run_llama_cpp_server(spec: ModelSpec, plan: Plan, folder: Path, version: str) -> SideReport:
    report = SideReport("llama_cpp_server")
    python, note = bench_venv(version)
    if python is None:
        report.note = note
        return report
    port = free_port()
    argv = [str(python), "-m", "llama_cpp.server", "--model", str(spec.path),
            "--n_ctx", str(CONTEXT), "--n_threads", str(CPUS), "--n_threads_batch", str(CPUS),
            "--flash_attn", "True", "--interrupt_requests", "False",
            "--host", "127.0.0.1", "--port", str(port)]
    if spec.chat_template is not None:
        argv += ["--chat_format", "gemma"]  # Gemma turns; it drops system messages
    # It sends no usage chunk in streams (and ignores stream_options): content chunks are counted.
    report.note = "completion tokens = content chunks (no usage in its streams)"
    serve_and_measure(report, spec, plan, argv, folder, "/v1/models", port, "none", False, False)
    return report


def bench_venv(version: str) -> tuple[Path | None, str]:
    """The scratch venv with llama-cpp-python[server]==version, made once, outside the repo."""
    python = BENCH_VENV / "bin" / "python"
    check = [str(python), "-c",
             "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"]
    if python.exists():
        done = subprocess.run(check, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode == 0 and done.stdout.strip() == version:
            return python, ""
    print(f"  creating {BENCH_VENV} with llama-cpp-python[server]=={version} ...", flush=True)
    BENCH_VENV.parent.mkdir(parents=True, exist_ok=True)
    log = BENCH_VENV.parent / "bench-venv-pip.log"
    try:
        if not python.exists():
            subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv",
                            str(BENCH_VENV)], check=True, timeout=300, cwd=BENCH_VENV.parent)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        wheel = cached_wheel(version)
        if wheel is not None:  # the wheel built when .venv was set up: nothing is built again
            pip += ["--only-binary", "llama-cpp-python", "--find-links", str(wheel.parent)]
        pip.append(f"llama-cpp-python[server]=={version}")
        with log.open("wb") as out:
            subprocess.run(pip, check=True, timeout=VENV_TIMEOUT_S, cwd=BENCH_VENV.parent,
                           stdout=out, stderr=subprocess.STDOUT)
        subprocess.run(check, check=True, timeout=120, capture_output=True)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"bench venv not usable ({exc}); see {log}"
    return python, ""


def cached_wheel(version: str) -> Path | None:
    done = subprocess.run([str(PYTHON), "-m", "pip", "cache", "dir"], capture_output=True,
                          text=True, timeout=60, check=False)
    cache = Path(done.stdout.strip()) if done.returncode == 0 else None
    if cache is None or not cache.is_dir():
        return None
    return next(iter(sorted(cache.glob(f"wheels/**/llama_cpp_python-{version}-*.whl"))), None)


def run_inprocess(spec: ModelSpec, runs: int, max_tokens: int) -> SideReport:
    report = SideReport("inprocess")
    argv = [str(PYTHON), str(Path(__file__).resolve()), "--worker", spec.name,
            "--worker-runs", str(runs), "--max-tokens", str(max_tokens)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INPROCESS_TIMEOUT_S,
                              check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        report.note = f"timed out after {INPROCESS_TIMEOUT_S:.0f}s"
        return report
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        report.note = f"worker exited {done.returncode}: {done.stderr.strip()[-500:]}"
        return report
    payload = json.loads(lines[-1])
    report.boot_s = payload["load_s"]
    report.inprocess = payload["samples"]
    return report


def worker(name: str, runs: int, max_tokens: int) -> int:
    """The in-process side, run as a child: prints one JSON line with its samples."""
    import llama_cpp

    spec = specs(name)[0]
    started = time.perf_counter()
    llm = llama_cpp.Llama(str(spec.path), n_ctx=CONTEXT, n_threads=CPUS, n_threads_batch=CPUS,
                          flash_attn=True, verbose=False)
    load_s = time.perf_counter() - started
    try:
        for prompt in WARM_PROMPTS[:WARM_REQUESTS]:
            run_baseline(llm, spec, prompt, WARM_MAX_TOKENS)
        samples = []
        for index in range(runs):
            sample = run_baseline(llm, spec, PROMPTS[index % len(PROMPTS)], max_tokens)
            samples.append({"ttft_s": sample.ttft_s, "tokens": sample.completion_tokens,
                            "decode_tps": sample.decode_tps, "finish": sample.finish})
    finally:
        llm.close()
    print(json.dumps({"load_s": load_s, "samples": samples}), flush=True)
    return 0


# --- tables ---


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def ratio(num: float, den: float) -> str:
    return "-" if math.isnan(num) or math.isnan(den) or den == 0 else f"{num / den:.2f}"


def print_table(header: list[str], rows: list[list[str]], indent: str = "  ") -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        print(indent + "  ".join(cells).rstrip())


def inprocess_tps(report: SideReport) -> float:
    return median([s["decode_tps"] for s in report.inprocess
                   if not math.isnan(s["decode_tps"])])


def level_at(report: SideReport | None, concurrency: int) -> Level | None:
    if report is None:
        return None
    return next((lv for lv in report.levels if lv.concurrency == concurrency), None)


def print_model(spec: ModelSpec, plan: Plan, reports: dict[str, SideReport]) -> None:
    print(f"\n== {spec.name}: {spec.path.name}; {plan.slots} slots x {CONTEXT} tokens, "
          f"max_tokens {plan.max_tokens}, temperature 0")
    for side in SIDES:
        report = reports.get(side)
        if report is not None and report.note.strip():
            print(f"  {side}: {report.note.strip()}")
    inproc = reports.get("inprocess")
    if inproc is not None and inproc.inprocess:
        samples = inproc.inprocess
        print(f"\n  in-process llama-cpp-python, one stream ({len(samples)} runs, load "
              f"{inproc.boot_s:.2f} s): decode {fmt(inprocess_tps(inproc))} tok/s p50, "
              f"TTFT {ms(median([s['ttft_s'] for s in samples]))} ms p50, tokens "
              f"{','.join(str(s['tokens']) for s in samples)} (its text tokenized again)")
    header = ["server", "c", "reqs", "err", "tokens", "tok/req", "agg tok/s", "stream tok/s p50",
              "TTFT p50 ms", "TTFT p99 ms", "prompt tok", "wall s", "counted by"]
    rows = []
    for side in SIDES[1:]:
        report = reports.get(side)
        if report is None:
            continue
        counted = "usage"
        for level in report.levels:
            ok = level.ok
            if any(not r.from_usage for r in ok):
                counted = "chunks" if all(not r.from_usage for r in ok) else "mixed"
            prompt = median([float(r.prompt_tokens) for r in ok if r.prompt_tokens >= 0])
            rows.append([side, str(level.concurrency), str(len(level.results)),
                         str(len(level.results) - len(ok)), str(level.tokens),
                         fmt(level.tokens / len(ok)) if ok else "-", fmt(level.aggregate_tps),
                         fmt(level.stream_tps), ms(level.ttft(50)), ms(level.ttft(99)),
                         fmt(prompt, 0), fmt(level.wall_s), counted])
    if rows:
        print()
        print_table(header, rows)
    print_errors(reports)
    print_ratios(plan, reports)
    print_prefix(reports)
    for side in SIDES[1:]:
        report = reports.get(side)
        for line in report.log_lines if report else []:
            print(f"  {side} log: {line[:200]}")


def print_errors(reports: dict[str, SideReport]) -> None:
    for side, report in reports.items():
        seen: dict[str, int] = {}
        for level in report.levels:
            for r in level.results:
                if r.error:
                    seen[r.error] = seen.get(r.error, 0) + 1
        for message, count in seen.items():
            print(f"  {side} error x{count}: {message}")


def print_ratios(plan: Plan, reports: dict[str, SideReport]) -> None:
    app, lls, lcs = (reports.get(s) for s in ("appliance", "llama_server", "llama_cpp_server"))
    rows = []
    for c in plan.levels:
        a, b, d = level_at(app, c), level_at(lls, c), level_at(lcs, c)
        rows.append([f"aggregate tok/s at c={c}",
                     ratio(a.aggregate_tps, b.aggregate_tps) if a and b else "-",
                     ratio(a.aggregate_tps, d.aggregate_tps) if a and d else "-"])
    a8, b8, d8 = level_at(app, 8), level_at(lls, 8), level_at(lcs, 8)
    rows.append(["TTFT p99 at c=8",
                 ratio(a8.ttft(99), b8.ttft(99)) if a8 and b8 else "-",
                 ratio(a8.ttft(99), d8.ttft(99)) if a8 and d8 else "-"])
    print("\n  ratios: appliance / other server")
    print_table(["", "vs llama_server", "vs llama_cpp_server"], rows)
    a1 = level_at(app, 1)
    inproc = reports.get("inprocess")
    if a1 is not None and inproc is not None and inproc.inprocess:
        print(f"  appliance c=1 stream tok/s / in-process tok/s: "
              f"{fmt(a1.stream_tps)} / {fmt(inprocess_tps(inproc))} = "
              f"{ratio(a1.stream_tps, inprocess_tps(inproc))}")
    if a8 is not None and b8 is not None:
        print(f"  TTFT p99 at c=8: appliance {ms(a8.ttft(99))} ms, llama_server "
              f"{ms(b8.ttft(99))} ms")
    elif 8 not in plan.levels:
        print("  TTFT p99 at c=8: not measured (8 is not in --concurrency)")


def print_prefix(reports: dict[str, SideReport]) -> None:
    rows = []
    for side in ("appliance", "llama_server"):
        report = reports.get(side)
        if report is None or len(report.prefix) < 2:
            continue
        first, second = report.prefix[0], report.prefix[1]
        cached = "-" if second.cached_tokens is None else str(second.cached_tokens)
        ok = ratio(second.ttft_s, first.ttft_s)
        verdict = "-" if ok == "-" else ("yes" if second.ttft_s / first.ttft_s <= 0.2 else "NO")
        rows.append([side, str(first.prompt_tokens), str(second.prompt_tokens),
                     ms(first.ttft_s), ms(second.ttft_s), ok, verdict, cached,
                     "; ".join(r.error for r in (first, second) if r.error) or "-"])
    if rows:
        print(f"\n  prefix test: ~1,500-token system message + question, then a new question "
              f"(max_tokens {PREFIX_MAX_TOKENS})")
        print_table(["server", "prompt tok 1", "prompt tok 2", "TTFT 1 ms", "TTFT 2 ms",
                     "2/1", "<= 0.2", "cached tok (2)", "errors"], rows)


def print_summary(all_reports: list[tuple[ModelSpec, dict[str, SideReport]]],
                  plan: Plan) -> None:
    print("\n== summary: aggregate tok/s per level (appliance / llama_server / llama_cpp_server)")
    header = ["model", *[f"c={c}" for c in plan.levels]]
    rows = []
    for spec, reports in all_reports:
        row = [spec.name]
        for c in plan.levels:
            cells = [level_at(reports.get(s), c) for s in SIDES[1:]]
            row.append(" / ".join(fmt(lv.aggregate_tps) if lv else "-" for lv in cells))
        rows.append(row)
    print_table(header, rows, indent="")


# --- main ---


def machine_facts(plan: Plan, version: str) -> Iterator[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    yield (f"machine: {platform.platform()}; {CPUS} CPUs ({cpu}); {memory} RAM; load average "
           f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    yield (f"python {platform.python_version()}; llama-cpp-python {version}; openai "
           f"{openai.__version__}")
    if plan.llama_server:
        done = subprocess.run([plan.llama_server, "--version"], capture_output=True, text=True,
                              timeout=60, check=False)
        text = (done.stdout + done.stderr).strip().splitlines()
        yield f"llama-server {plan.llama_server}: {' '.join(x for x in text if x.strip())}"
    else:
        yield f"llama-server: none ({plan.llama_server_note})"


def find_llama_server(given: str | None) -> tuple[str | None, str]:
    if given:
        return (given, "") if os.access(given, os.X_OK) else (None, f"{given} is not executable")
    try:
        done = subprocess.run([str(ROOT / "scripts" / "build-llama-server")], capture_output=True,
                              text=True, timeout=3600, check=False)
    except subprocess.TimeoutExpired:
        return None, "scripts/build-llama-server timed out"
    path = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not os.access(path, os.X_OK):
        return None, f"scripts/build-llama-server failed: {done.stderr.strip()[-300:]}"
    return path, ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "gemma", "both"), default="both")
    parser.add_argument("--slots", type=int, default=8, help="parallel slots per server")
    parser.add_argument("--concurrency", default="1,4,8,16", help="levels, comma separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-level", type=int, default=None,
                        help="requests at each level (default 2 x concurrency)")
    parser.add_argument("--skip", default="", help=f"sides to leave out: {','.join(SIDES)}")
    parser.add_argument("--llama-server", default=None,
                        help="llama-server binary (default: scripts/build-llama-server)")
    parser.add_argument("--worker", choices=("smollm2", "gemma"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-runs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        parser.error("--concurrency takes integers, e.g. 1,4,8,16")
    args.skipped = {x.strip() for x in args.skip.split(",") if x.strip()}
    if unknown := args.skipped - set(SIDES):
        parser.error(f"--skip: unknown {', '.join(sorted(unknown))}; sides are {', '.join(SIDES)}")
    if not args.levels or min(args.levels) < 1 or max(args.levels) > 256:
        parser.error("--concurrency levels must be between 1 and 256")
    if args.slots < 1 or args.slots > 64 or args.max_tokens < 2 or args.max_tokens > 2048:
        parser.error("--slots must be 1..64 and --max-tokens 2..2048")
    if args.requests_per_level is not None and not 1 <= args.requests_per_level <= 1000:
        parser.error("--requests-per-level must be 1..1000")
    return args


def main() -> int:
    if "--mixed" in sys.argv[1:]:  # issue 18's mixed load and short levels: bench_mixed.py
        import bench_mixed

        return bench_mixed.main([a for a in sys.argv[1:] if a != "--mixed"])
    args = parse_args()
    if args.worker:
        return worker(args.worker, args.worker_runs, args.max_tokens)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every server is stopped
    from importlib.metadata import version as dist_version

    version = dist_version("llama-cpp-python")
    per_level = {c: args.requests_per_level or 2 * c for c in args.levels}
    binary, binary_note = (None, "skipped") if "llama_server" in args.skipped else \
        find_llama_server(args.llama_server)
    plan = Plan(args.levels, per_level, args.max_tokens, args.slots, binary, binary_note)
    print(f"command: {shlex.join(sys.orig_argv)}")
    for line in machine_facts(plan, version):
        print(line)
    print(f"levels {args.levels}, requests per level {per_level}, {args.slots} slots, context "
          f"{CONTEXT} per slot, max_tokens {args.max_tokens}, skip {sorted(args.skipped) or '-'}",
          flush=True)
    started = time.perf_counter()
    all_reports = []
    for spec in specs(args.model):
        print(f"\n{spec.name}:", flush=True)
        reports: dict[str, SideReport] = {}
        with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp:
            for side in SIDES:
                if side in args.skipped:
                    continue
                folder = Path(tmp) / side
                folder.mkdir()
                side_started = time.perf_counter()
                if side == "inprocess":
                    runs = max(INPROCESS_MIN_RUNS, per_level.get(1, 0))
                    reports[side] = run_inprocess(spec, runs, args.max_tokens)
                elif side == "appliance":
                    reports[side] = run_appliance(spec, plan, folder)
                elif side == "llama_server":
                    reports[side] = run_llama_server(spec, plan, folder)
                else:
                    reports[side] = run_llama_cpp_server(spec, plan, folder, version)
                print(f"  {side} done in {time.perf_counter() - side_started:.0f} s", flush=True)
        print_model(spec, plan, reports)
        all_reports.append((spec, reports))
    print_summary(all_reports, plan)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
