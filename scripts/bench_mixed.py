"""Mixed load: long prompts among running streams, the appliance against llama-server.

The measure of issue 18, in one run on one box: SmolLM2-135M, --slots slots on both servers
(llama-server built from the sources of the installed llama-cpp-python, see
scripts/build-llama-server), both servers up for the whole run and each idle while the other is
measured, rounds interleaved (the side that goes first alternates per round), medians over
rounds. Every prompt is unique from its first word on (a digest of a per-run nonce and the
request's serial; the long ones also shuffle their notes), so no prefix cache helps either side
beyond the chat template's shared opening.

Phases, each from --clients concurrent streaming clients of the official openai SDK
(AsyncOpenAI, max_retries=0, temperature 0, usage from stream_options.include_usage):

- mixed: every fourth request carries a ~1,500-token prompt, the others ~50 tokens; answers of
  --mixed-max-tokens. Of the SHORT streams: inter-token gap p50 and p99 (the gaps between
  successive content chunks, all short streams' gaps pooled) and TTFT p50 (send to first content
  chunk); over all requests: aggregate tok/s = completion tokens / the phase's wall time;
- decode: the same clients, short prompts only: the pure-decode inter-token gap p50 that the
  mixed p99 is held to (at most 3x);
- short levels (c=1/8/16 by default): c clients, 2 x c short requests, --short-max-tokens
  answers: aggregate tok/s and TTFT p99 (nearest rank: the maximum below 100 requests).

Verdict lines follow issue 18's "Done when": mixed inter-token p99 <= 3x the appliance's own
pure-decode p50, short TTFT p50 <= llama-server's, aggregate >= 0.95x llama-server's; short
levels 8 and 16: aggregate >= 1.0x and TTFT p99 <= llama-server's.

--appliance-root serves the appliance from another checkout (its code on PYTHONPATH, this
venv's libraries); --max-step-ms writes that model's `max_step_ms` key into the appliance's
models.toml (only when given: a checkout without the key refuses unknown keys).

Usage: scripts/bench-concurrency --mixed [--rounds 2] [--short-rounds 4] [--slots 8]
       [--clients 4] [--levels 1,8,16] [--appliance-root PATH] [--max-step-ms N]
       [--llama-server PATH] [--skip-short] [--skip-mixed]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
import openai
from bench_chat import ModelSpec, median, specs
from bench_concurrency import (
    CONTEXT,
    CPUS,
    PLACES,
    REASONS,
    TIMES,
    TOPICS,
    VERBS,
    find_llama_server,
    fmt,
    launch,
    llama_server_argv,
    log_lines,
    percentile,
    print_table,
    ratio,
)
from openai.types.chat import ChatCompletionMessageParam

from devtools import server_harness as harness
from devtools.server_harness import (
    APPLIANCE,
    ROOT,
    create_key,
    free_port,
    stop_process,
    toml_string,
)

APPLIANCE_SIDE = "appliance"
LLAMA_SIDE = "llama_server"
SIDES = (APPLIANCE_SIDE, LLAMA_SIDE)
LONG_EVERY = 4  # every fourth mixed request carries the long prompt
LONG_NOTES = 60  # ~25 tokens each: ~1,500 tokens
REQUEST_TIMEOUT_S = 600.0
PHASE_TIMEOUT_S = 1800.0
SETTLE_S = 0.5  # the other side's last bookkeeping (ledger rows, slot release) ends first
WARM_MAX_TOKENS = 8

class Prompts:
    """Unique prompts, each opening with a digest of the run's nonce and its serial: a shared
    opening would be a prefix every later request reuses from the cache."""

    def __init__(self, seed: int) -> None:
        self._nonce = f"{seed:08x}"
        self._serial = 0

    def _next_id(self) -> str:
        self._serial += 1
        return hashlib.sha256(f"{self._nonce}-{self._serial}".encode()).hexdigest()[:8]

    def short(self) -> str:
        ident = self._next_id()
        topic = TOPICS[self._serial % len(TOPICS)]
        return (f"{ident}: write a long story about {topic}, told in the first person, "
                "with three chapters, vivid details and a happy ending.")

    def long(self) -> str:
        ident = self._next_id()
        shuffle = random.Random(ident)
        notes = [f"Note {i + 1}: {PLACES[i % 12]} {VERBS[i * 5 % 8]} {TIMES[i * 7 % 9]}, "
                 f"{REASONS[i * 11 % 6]}." for i in range(LONG_NOTES)]
        shuffle.shuffle(notes)
        return (f"{ident}: you are the town clerk. Read these notes, then write a long "
                "report about what happens in the town. " + " ".join(notes))


# --- one stream, one phase ---


@dataclass
class Stream:
    long: bool
    started: float
    chunks: list[float] = field(default_factory=list)  # perf_counter of each content chunk
    tokens: int = 0
    prompt_tokens: int = -1
    error: str = ""

    @property
    def ttft_s(self) -> float:
        return self.chunks[0] - self.started if self.chunks else float("nan")

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


async def one_stream(client: openai.AsyncOpenAI, model: str, prompt: str, long: bool,
                     max_tokens: int) -> Stream:
    chat: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
    stream = Stream(long, time.perf_counter())
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            response = await client.chat.completions.create(
                model=model, messages=chat, stream=True, temperature=0, max_tokens=max_tokens,
                stream_options={"include_usage": True})
            async for chunk in response:
                if any(choice.delta.content for choice in chunk.choices):
                    stream.chunks.append(time.perf_counter())
                if chunk.usage is not None:
                    stream.tokens = chunk.usage.completion_tokens
                    stream.prompt_tokens = chunk.usage.prompt_tokens
    except Exception as exc:  # counted and shown, never fatal to the run
        stream.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if not stream.error and not stream.chunks:
        stream.error = "no content"
    return stream


@dataclass
class Phase:
    streams: list[Stream]
    wall_s: float

    @property
    def ok(self) -> list[Stream]:
        return [s for s in self.streams if not s.error]

    def short(self) -> list[Stream]:
        return [s for s in self.ok if not s.long]

    def gap(self, pct: float) -> float:
        return percentile([g for s in self.short() for g in s.gaps()], pct)

    def ttft(self, pct: float) -> float:
        return percentile([s.ttft_s for s in self.short()], pct)

    @property
    def aggregate_tps(self) -> float:
        return sum(s.tokens for s in self.ok) / self.wall_s if self.wall_s > 0 else math.nan

    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error]

    def prompt_tokens(self, long: bool) -> float:
        return median([float(s.prompt_tokens) for s in self.ok
                       if s.long == long and s.prompt_tokens >= 0])


async def run_phase(client: openai.AsyncOpenAI, model: str, clients: int, count: int,
                    pick: Callable[[int], tuple[str, bool]], max_tokens: int) -> Phase:
    """``count`` requests from ``clients`` concurrent clients, each sending its next request
    when its last one ended; ``pick(i)`` is the i-th request's (prompt, is_long)."""
    queue = list(range(count))
    streams: list[Stream] = []

    async def client_loop() -> None:
        while queue:
            prompt, long = pick(queue.pop(0))
            streams.append(await one_stream(client, model, prompt, long, max_tokens))

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await asyncio.gather(*(client_loop() for _ in range(clients)))
    return Phase(streams, time.perf_counter() - started)


# --- the servers ---


@dataclass
class Server:
    side: str
    base_url: str
    api_key: str
    model: str
    process: subprocess.Popen[bytes] | None  # None: a server someone else started and stops
    folder: Path
    boot_s: float


def appliance_config(folder: Path, spec: ModelSpec, port: int, slots: int,
                     max_step_ms: int | None) -> Path:
    lines = ["[[models]]", f"id = {toml_string(spec.model_id)}",
             f"path = {toml_string(str(spec.path))}", f"context_length = {CONTEXT}",
             f"parallel = {slots}"]
    if max_step_ms is not None:
        lines.append(f"max_step_ms = {max_step_ms}")
    return harness.write_config(folder, port, "\n".join(lines) + "\n")


def start_appliance(folder: Path, spec: ModelSpec, slots: int,
                    max_step_ms: int | None) -> Server:
    port = free_port()
    config = appliance_config(folder, spec, port, slots, max_step_ms)
    key = create_key(config, "bench")
    argv = [*APPLIANCE, "serve", "--config", str(config)]
    print(f"  {APPLIANCE_SIDE}: {shlex.join(argv)} (PYTHONPATH={os.environ['PYTHONPATH']})",
          flush=True)
    process, boot_s = launch(argv, folder, f"http://127.0.0.1:{port}/ready")
    return Server(APPLIANCE_SIDE, f"http://127.0.0.1:{port}/v1", key, spec.model_id, process,
                  folder, boot_s)


def start_llama_server(folder: Path, binary: str, spec: ModelSpec, slots: int) -> Server:
    port = free_port()
    argv = llama_server_argv(binary, spec, slots, port, folder)
    print(f"  {LLAMA_SIDE}: {shlex.join(argv)}", flush=True)
    process, boot_s = launch(argv, folder, f"http://127.0.0.1:{port}/health")
    return Server(LLAMA_SIDE, f"http://127.0.0.1:{port}/v1", "none", spec.model_id, process,
                  folder, boot_s)


# --- the run ---


@dataclass(frozen=True)
class Plan:
    rounds: int
    short_rounds: int
    clients: int
    mixed_requests: int
    decode_requests: int
    mixed_max_tokens: int
    short_max_tokens: int
    levels: tuple[int, ...]


@dataclass
class Results:
    mixed: dict[str, list[Phase]] = field(default_factory=lambda: {s: [] for s in SIDES})
    decode: dict[str, list[Phase]] = field(default_factory=lambda: {s: [] for s in SIDES})
    levels: dict[tuple[str, int], list[Phase]] = field(default_factory=dict)


def orders(rounds: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    for index in range(rounds):
        yield index, SIDES if index % 2 == 0 else SIDES[::-1]


async def measure(servers: dict[str, Server], plan: Plan, prompts: Prompts,
                  mixed: bool, short: bool) -> Results:
    results = Results()
    clients = {side: openai.AsyncOpenAI(base_url=s.base_url, api_key=s.api_key, max_retries=0,
                                        timeout=REQUEST_TIMEOUT_S)
               for side, s in servers.items()}
    try:
        for side, client in clients.items():  # one short and one long: both paths warm
            for prompt, long in ((prompts.short(), False), (prompts.long(), True)):
                warm = await one_stream(client, servers[side].model, prompt, long,
                                        WARM_MAX_TOKENS)
                if warm.error:
                    print(f"  {side} warm-up failed: {warm.error}", flush=True)

        def mixed_pick(index: int) -> tuple[str, bool]:
            long = index % LONG_EVERY == LONG_EVERY - 1
            return (prompts.long() if long else prompts.short()), long

        def short_pick(_: int) -> tuple[str, bool]:
            return prompts.short(), False

        if mixed:
            for index, order in orders(plan.rounds):
                for side in order:
                    await asyncio.sleep(SETTLE_S)
                    model = servers[side].model
                    phase = await run_phase(clients[side], model, plan.clients,
                                            plan.mixed_requests, mixed_pick,
                                            plan.mixed_max_tokens)
                    results.mixed[side].append(phase)
                    await asyncio.sleep(SETTLE_S)
                    decode = await run_phase(clients[side], model, plan.clients,
                                             plan.decode_requests, short_pick,
                                             plan.mixed_max_tokens)
                    results.decode[side].append(decode)
                    print(f"  mixed round {index + 1} {side:<12} gap p50/p99 "
                          f"{ms(phase.gap(50))}/{ms(phase.gap(99))} ms, short TTFT p50 "
                          f"{ms(phase.ttft(50))} ms, {fmt(phase.aggregate_tps)} tok/s, "
                          f"{phase.wall_s:.0f} s; decode gap p50 {ms(decode.gap(50))} ms"
                          f"{errors_note(phase, decode)}", flush=True)
        if short:
            for index, order in orders(plan.short_rounds):
                for side in order:
                    for level in plan.levels:
                        await asyncio.sleep(SETTLE_S)
                        phase = await run_phase(clients[side], servers[side].model, level,
                                                2 * level, short_pick, plan.short_max_tokens)
                        results.levels.setdefault((side, level), []).append(phase)
                        print(f"  short round {index + 1} {side:<12} c={level:<3} "
                              f"{fmt(phase.aggregate_tps)} tok/s, TTFT p99 "
                              f"{ms(phase.ttft(99))} ms{errors_note(phase)}", flush=True)
    finally:
        for client in clients.values():
            await client.close()
    return results


def errors_note(*phases: Phase) -> str:
    errors = [e for p in phases for e in p.errors()]
    return f"; {len(errors)} errors, first: {errors[0]}" if errors else ""


# --- tables and verdicts ---


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def over(phases: list[Phase], read: Callable[[Phase], float]) -> float:
    values = [read(p) for p in phases]
    return median([v for v in values if not math.isnan(v)])


def verdict(label: str, value: float, bound: float, within: bool, unit: str) -> str:
    if math.isnan(value) or math.isnan(bound):
        return f"  verdict {label}: not measured"
    return (f"  verdict {label}: {'PASS' if within else 'FAIL'} "
            f"({value:.3f}{unit} vs bound {bound:.3f}{unit})")


def print_mixed(results: Results, plan: Plan) -> list[str]:
    print(f"\n== mixed: {plan.clients} clients, a ~1,500-token prompt every {LONG_EVERY}th "
          f"request, the rest ~50 tokens, {plan.mixed_max_tokens}-token answers; "
          f"{plan.mixed_requests} requests per round, medians of {plan.rounds} rounds")
    rows = []
    for side in SIDES:
        mixed, decode = results.mixed[side], results.decode[side]
        if not mixed:
            continue
        rows.append([side, f"{over(mixed, lambda p: p.gap(50)):.3f}",
                     f"{over(mixed, lambda p: p.gap(99)):.3f}",
                     f"{over(mixed, lambda p: p.ttft(50)):.3f}",
                     fmt(over(mixed, lambda p: p.aggregate_tps)),
                     f"{over(decode, lambda p: p.gap(50)):.3f}",
                     fmt(over(mixed, lambda p: p.prompt_tokens(False)), 0),
                     fmt(over(mixed, lambda p: p.prompt_tokens(True)), 0),
                     str(sum(len(p.errors()) for p in mixed + decode))])
    print_table(["server", "inter-token p50 s", "inter-token p99 s", "short TTFT p50 s",
                 "aggregate tok/s", "pure-decode p50 s", "short prompt tok", "long prompt tok",
                 "errors"], rows)
    app_mixed, app_decode = results.mixed[APPLIANCE_SIDE], results.decode[APPLIANCE_SIDE]
    lls_mixed = results.mixed[LLAMA_SIDE]
    p99 = over(app_mixed, lambda p: p.gap(99))
    decode_p50 = over(app_decode, lambda p: p.gap(50))
    ttft, lls_ttft = (over(m, lambda p: p.ttft(50)) for m in (app_mixed, lls_mixed))
    agg, lls_agg = (over(m, lambda p: p.aggregate_tps) for m in (app_mixed, lls_mixed))
    lines = [
        verdict("mixed inter-token p99 <= 3x pure-decode p50", p99, 3 * decode_p50,
                p99 <= 3 * decode_p50, " s"),
        verdict("mixed short TTFT p50 <= llama-server's", ttft, lls_ttft, ttft <= lls_ttft,
                " s"),
        verdict("mixed aggregate >= 0.95x llama-server's", agg, 0.95 * lls_agg,
                agg >= 0.95 * lls_agg, " tok/s"),
    ]
    lls_p99 = over(lls_mixed, lambda p: p.gap(99))
    lls_decode = over(results.decode[LLAMA_SIDE], lambda p: p.gap(50))
    print(f"  for reference, llama-server's p99 / its pure-decode p50: {ratio(lls_p99, lls_decode)}"
          f"; appliance's: {ratio(p99, decode_p50)}")
    return lines


def print_levels(results: Results, plan: Plan) -> list[str]:
    print(f"\n== short prompts (~50 tokens), {plan.short_max_tokens}-token answers, 2 x c requests "
          f"per level, medians of {plan.short_rounds} rounds")
    rows = []
    lines = []
    for level in plan.levels:
        app = results.levels.get((APPLIANCE_SIDE, level), [])
        lls = results.levels.get((LLAMA_SIDE, level), [])
        agg, lls_agg = (over(x, lambda p: p.aggregate_tps) for x in (app, lls))
        p99, lls_p99 = (over(x, lambda p: p.ttft(99)) for x in (app, lls))
        errors = sum(len(p.errors()) for p in app + lls)
        rows.append([str(level), fmt(agg), fmt(lls_agg), ratio(agg, lls_agg), ms(p99),
                     ms(lls_p99), ratio(p99, lls_p99), str(errors)])
        if level in (8, 16):
            lines.append(verdict(f"short c={level} aggregate >= 1.0x llama-server's", agg,
                                 lls_agg, agg >= lls_agg, " tok/s"))
            lines.append(verdict(f"short c={level} TTFT p99 <= llama-server's", p99, lls_p99,
                                 p99 <= lls_p99, " s"))
    print_table(["c", "appliance tok/s", "llama-server tok/s", "ratio", "appliance TTFT p99 ms",
                 "llama-server TTFT p99 ms", "ratio", "errors"], rows)
    return lines


# --- main ---


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench-concurrency --mixed",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="mixed rounds (default 2)")
    parser.add_argument("--short-rounds", type=int, default=4,
                        help="rounds of the short levels (default 4)")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--clients", type=int, default=4, help="mixed and decode clients")
    parser.add_argument("--mixed-requests", type=int, default=16,
                        help="requests per mixed round (a quarter long; default 16)")
    parser.add_argument("--decode-requests", type=int, default=8,
                        help="requests per pure-decode round (default 8)")
    parser.add_argument("--mixed-max-tokens", type=int, default=64)
    parser.add_argument("--short-max-tokens", type=int, default=96)
    parser.add_argument("--levels", default="1,8,16", help="short levels, comma separated")
    parser.add_argument("--appliance-root", type=Path, default=ROOT,
                        help="the checkout whose appliance is served (default this one)")
    parser.add_argument("--max-step-ms", type=int, default=None,
                        help="written as the model's max_step_ms in models.toml")
    parser.add_argument("--llama-server", default=None,
                        help="llama-server binary (default: scripts/build-llama-server)")
    parser.add_argument("--skip-mixed", action="store_true")
    parser.add_argument("--skip-short", action="store_true")
    parser.add_argument("--seed", type=int, default=None, help="prompt nonce (default random)")
    args = parser.parse_args(argv)
    try:
        args.level_list = tuple(int(x) for x in args.levels.split(",") if x.strip())
    except ValueError:
        parser.error("--levels takes integers, e.g. 1,8,16")
    if not args.level_list or min(args.level_list) < 1 or max(args.level_list) > 256:
        parser.error("--levels must be between 1 and 256")
    for name in ("rounds", "short_rounds", "clients", "mixed_requests", "decode_requests"):
        if not 1 <= getattr(args, name) <= 1000:
            parser.error(f"--{name.replace('_', '-')} must be 1..1000")
    if not 1 <= args.slots <= 64:
        parser.error("--slots must be 1..64")
    if not 2 <= args.mixed_max_tokens <= 2048 or not 2 <= args.short_max_tokens <= 2048:
        parser.error("--mixed-max-tokens and --short-max-tokens must be 2..2048")
    if args.max_step_ms is not None and not 1 <= args.max_step_ms <= 60_000:
        parser.error("--max-step-ms must be 1..60000")
    if not (args.appliance_root / "appliance" / "cli.py").is_file():
        parser.error(f"--appliance-root {args.appliance_root}: no appliance/cli.py there")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so both servers are stopped
    # The appliance's code comes from the chosen checkout (its `keys create` too); the
    # libraries from this venv.
    os.environ["PYTHONPATH"] = str(args.appliance_root.resolve())
    binary, note = find_llama_server(args.llama_server)
    if binary is None:
        print(f"llama-server: none ({note})")
        return 1
    plan = Plan(args.rounds, args.short_rounds, args.clients, args.mixed_requests,
                args.decode_requests, args.mixed_max_tokens, args.short_max_tokens,
                args.level_list)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    spec = specs("smollm2")[0]
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(f"{CPUS} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{spec.path.name}, {args.slots} slots x {CONTEXT} tokens on both servers; "
          f"appliance from {args.appliance_root.resolve()}"
          f"{'' if args.max_step_ms is None else f', max_step_ms {args.max_step_ms}'}; "
          f"llama-server {binary}; prompt nonce {seed:08x}", flush=True)
    started = time.perf_counter()
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        try:
            for side in SIDES:
                folder = Path(tmp) / side
                folder.mkdir()
                servers[side] = (start_appliance(folder, spec, args.slots, args.max_step_ms)
                                 if side == APPLIANCE_SIDE
                                 else start_llama_server(folder, binary, spec, args.slots))
                print(f"  {side} ready in {servers[side].boot_s:.1f} s", flush=True)
            results = asyncio.run(measure(servers, plan, Prompts(seed), not args.skip_mixed,
                                          not args.skip_short))
        finally:
            for server in servers.values():
                if server.process is not None:
                    stop_process(server.process)
                for line in log_lines(server.folder, ("ERROR", "Traceback", "error:")):
                    print(f"  {server.side} log: {line[:200]}")
    verdicts = [] if args.skip_mixed else print_mixed(results, plan)
    if not args.skip_short:
        verdicts += print_levels(results, plan)
    print()
    for line in verdicts:
        print(line)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
