"""Load test (issue 8): many streaming chat clients over several API keys against one real server.

Starts ``appliance serve`` on loopback in a temporary folder (SmolLM2 as a chat model with
``parallel`` slots, ``metrics_public = true``), creates K keys with the CLI before the server
starts, then runs N streaming clients for D seconds through the official ``openai`` SDK
(``AsyncOpenAI``, its own retries on: a 503 with ``retry-after`` is retried as the SDK does).
Every HTTP attempt is counted by an httpx event hook, retried ones included, by key and status.

Key A is "greedy": it gets ``--greedy-share`` of the clients (default half); the others share
the rest. Fairness: free slots go round-robin across the keys that have requests waiting, so
every key that is backlogged the whole time should be admitted equally often, however many
clients it has. Per key we measure the seconds it had work waiting (some request sent and its
first token not yet back, from the client's side) and count its requests that got a slot
(first token) in the measurement window; fairness = max / min over keys of slots per
backlogged second. It must be <= 1 + --fairness-tolerance (0.2: "within 20%"). Slots, not
completions, because round-robin hands out slots (a request's length is its own); completions
in the window are printed beside them. Under first-come-first-served admission the greedy key
would instead get about its share of the clients (printed too).

The first --warmup seconds are left out of the fairness figures (all clients start at once).
At the end of the window the clients close the streams they still have open (queued or
generating: those rows say ``cancelled``), so the run is bounded; then the checks:
- no 5xx other than a 503 carrying ``retry-after`` (and no client error other than a 503 the
  SDK gave up on);
- ``appliance_engine_slots_busy`` and ``appliance_engine_queue_depth`` of the model read 0 on
  /metrics (polled, at most --settle-timeout seconds), read ``parallel`` under load, and the
  queue never holds more than ``queue_limit``;
- the server stops on SIGTERM with exit status 0;
- the ledger (read after that stop) has one row per HTTP attempt: per key and HTTP status its
  counts equal the clients' counts, ``ok`` rows match completed streams, no row is ``started``.

    .venv/bin/python scripts/load_test.py [--clients 64] [--keys 4] [--seconds 60]
        [--parallel 4] [--queue-limit N] [--greedy-share 0.5] [--min-tokens 16]
        [--max-tokens 32] [--warmup 5]

Exits 1 when a check fails. The server's log stays in the temporary folder only with --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
# The servers are started as the real-tier tests start them (devtools/server_harness.py).
from devtools import server_harness as harness
from devtools.server_checks import Checks, gauge, ledger_rows, log_findings, percentile, table
from devtools.server_harness import SMOLLM2, RunningServer, free_port, make_key

CHAT_MODEL = "smollm2"
BOOT_TIMEOUT_S = 180.0
PROMPTS = (
    "Name three colours.",
    "Say hello in French.",
    "What is two plus two?",
    "Give me a word that rhymes with cat.",
    "Tell me a fun fact about the sea.",
    "Write one sentence about a dog.",
)


# ----------------------------------------------------------------------------- shared helpers
# (scripts/fault_drills.py imports these)


def chat_model_toml(parallel: int, context_length: int = 1024, extra: str = "") -> str:
    return (f'[[models]]\nid = "{CHAT_MODEL}"\nkind = "chat"\npath = "{SMOLLM2}"\n'
            f"price_per_request = 0.001\nparallel = {parallel}\n"
            f"context_length = {context_length}\n{extra}\n")


def write_config(folder: Path, port: int, models: str, server_extra: str = "",
                 name: str = "models.toml") -> Path:
    """A config in ``folder`` whose data dir is ``folder/data`` (shared by every config there),
    /metrics open: the checks read its gauges without a key."""
    return harness.write_config(folder, port, models, "metrics_public = true\n" + server_extra,
                                name)


def start_server(config: Path, port: int, log_name: str = "server.log",
                 timeout: float = BOOT_TIMEOUT_S) -> RunningServer:
    """Starts ``appliance serve`` and waits for /ready; the log is appended to, so a restart
    on the same folder keeps the first server's lines."""
    return harness.start_server(config, port, timeout=timeout, log_name=log_name,
                                append_log=True)


def engine_load(base_url: str, model: str = CHAT_MODEL) -> tuple[float | None, float | None]:
    """(slots busy, queue depth) from /metrics."""
    text = httpx2.get(f"{base_url}/metrics", timeout=10).text
    return (gauge(text, "appliance_engine_slots_busy", model),
            gauge(text, "appliance_engine_queue_depth", model))


def wait_engine_idle(base_url: str, timeout: float,
                     model: str = CHAT_MODEL) -> tuple[bool, float, tuple[Any, Any]]:
    """Polls /metrics until both gauges read 0: (idle, seconds waited, last reading)."""
    started = time.monotonic()
    reading: tuple[Any, Any] = (None, None)
    while True:
        with contextlib.suppress(httpx2.HTTPError):
            reading = engine_load(base_url, model)
            if reading == (0.0, 0.0):
                return True, time.monotonic() - started, reading
        if time.monotonic() - started > timeout:
            return False, time.monotonic() - started, reading
        time.sleep(0.05)


# ----------------------------------------------------------------------------------- the load


@dataclass
class KeyStats:
    name: str
    key_id: str
    secret: str
    clients: int
    attempts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    bad_5xx: list[str] = field(default_factory=list)
    completed: int = 0  # streams read to their usage chunk (finish_reason seen)
    cancelled: int = 0  # streams this script closed at the end of the run
    completed_in_window: int = 0  # completed inside the measurement window
    admitted_in_window: int = 0  # first token inside the measurement window (got a slot)
    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    pending: int = 0  # requests sent whose first token has not arrived
    backlog_since: float | None = None
    backlog_s: float = 0.0  # inside the measurement window

    def wait_begins(self, now: float) -> None:
        self.pending += 1
        if self.pending == 1:
            self.backlog_since = now

    def wait_ends(self, now: float, window: tuple[float, float]) -> None:
        self.pending -= 1
        if self.pending == 0 and self.backlog_since is not None:
            self.backlog_s += _overlap(self.backlog_since, now, window)
            self.backlog_since = None

    def close_window(self, window: tuple[float, float]) -> None:
        if self.backlog_since is not None:
            self.backlog_s += _overlap(self.backlog_since, window[1], window)
            self.backlog_since = window[1]


def _overlap(start: float, end: float, window: tuple[float, float]) -> float:
    return max(0.0, min(end, window[1]) - max(start, window[0]))


def _hooks(stats: KeyStats) -> dict[str, list[Callable[..., Any]]]:
    """Counts every HTTP attempt (the SDK's retries too) and checks every 5xx."""
    async def on_request(request: httpx2.Request) -> None:
        stats.attempts += 1

    async def on_response(response: httpx2.Response) -> None:
        stats.statuses[response.status_code] += 1
        if response.status_code >= 500 and not (
                response.status_code == 503 and "retry-after" in response.headers):
            stats.bad_5xx.append(f"{response.status_code} {dict(response.headers)}")

    return {"request": [on_request], "response": [on_response]}


@dataclass
class Run:
    """Times (monotonic) and the tasks that are reading a stream (cancellable at the end)."""
    start: float
    measure_from: float
    end: float
    streaming: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def window(self) -> tuple[float, float]:
        return (self.measure_from, self.end)


async def _client(sdk: openai.AsyncOpenAI, stats: KeyStats, rng: random.Random, run: Run,
                  args: argparse.Namespace) -> None:
    me = asyncio.current_task()
    assert me is not None
    while time.monotonic() < run.end:
        sent = time.monotonic()
        stats.wait_begins(sent)
        first: float | None = None
        finish: str | None = None
        usage: int | None = None
        try:
            # create() returns once the response headers are in: from then on the request has
            # its ledger row, and the end of the run may close the stream.
            stream = await sdk.chat.completions.create(
                model=CHAT_MODEL,
                messages=[{"role": "user", "content": rng.choice(PROMPTS)}],
                max_tokens=rng.randint(args.min_tokens, args.max_tokens),
                temperature=0.7, stream=True, stream_options={"include_usage": True})
            run.streaming.add(me)
            try:
                async with stream:
                    async for chunk in stream:
                        if first is None and chunk.choices and (
                                chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
                            first = time.monotonic()
                            stats.wait_ends(first, run.window)
                            stats.admitted_in_window += run.measure_from <= first <= run.end
                        if chunk.choices and chunk.choices[0].finish_reason:
                            finish = chunk.choices[0].finish_reason
                        if chunk.usage is not None:
                            usage = chunk.usage.completion_tokens
            finally:
                run.streaming.discard(me)
        except asyncio.CancelledError:
            if finish is None or usage is None:
                stats.cancelled += 1
                if first is None:
                    stats.wait_ends(time.monotonic(), run.window)
                return
        except openai.APIStatusError as exc:
            # A 503 the SDK retried max_retries times: a refusal it then gave up on.
            kind = "gave up after 503s" if exc.status_code == 503 else "status"
            stats.failures[f"{kind}: {exc.status_code} {str(exc)[:80]}"] += 1
        except Exception as exc:  # counted and reported; the checks decide
            stats.failures[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
        if first is None:
            stats.wait_ends(time.monotonic(), run.window)
        done = time.monotonic()
        if finish is not None and usage is not None:
            stats.completed += 1
            stats.completed_in_window += run.measure_from <= done <= run.end
            stats.tokens += usage
            stats.ttft.append((first or done) - sent)
            stats.latency.append(done - sent)
        elif first is not None:
            stats.failures["stream ended without finish_reason and usage"] += 1


async def _sample_load(base_url: str, stop: asyncio.Event,
                       samples: list[tuple[float, float]]) -> None:
    async with httpx2.AsyncClient(timeout=10) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx2.HTTPError):
                text = (await http.get(f"{base_url}/metrics")).text
                busy = gauge(text, "appliance_engine_slots_busy", CHAT_MODEL)
                depth = gauge(text, "appliance_engine_queue_depth", CHAT_MODEL)
                if busy is not None and depth is not None:
                    samples.append((busy, depth))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run_load(base_url: str, keys: list[KeyStats], args: argparse.Namespace,
                   samples: list[tuple[float, float]]) -> tuple[Run, float, bool]:
    """Runs the clients for the window, then closes the streams still open: (the run, seconds
    the close took, every client returned)."""
    sdks = []
    for stats in keys:
        http = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=stats.clients + 8,
                                 max_keepalive_connections=stats.clients + 8),
            timeout=httpx2.Timeout(args.request_timeout, connect=10), event_hooks=_hooks(stats))
        sdks.append(openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=stats.secret,
                                       max_retries=args.max_retries, http_client=http))
    rng = random.Random(args.seed)
    start = time.monotonic()
    run = Run(start, start + args.warmup, start + args.seconds)
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_load(base_url, stop, samples))
    # Clients start interleaved across keys (A, B, C, D, A, B, ...), so the first slots do not
    # all go to whichever key's clients happened to start first.
    order = sorted(((i, sdk, stats) for sdk, stats in zip(sdks, keys, strict=True)
                    for i in range(stats.clients)), key=lambda item: item[0])
    tasks = [asyncio.ensure_future(_client(sdk, stats, random.Random(rng.random()), run, args))
             for _, sdk, stats in order]
    await asyncio.wait(tasks, timeout=args.seconds)
    closing_from = time.monotonic()
    # Close every open stream; a request still waiting for its headers (an SDK retry) is
    # closed once they arrive, so every attempt has a status and, on the server, a row.
    deadline = closing_from + args.close_timeout
    while time.monotonic() < deadline and not all(task.done() for task in tasks):
        for task in list(run.streaming):
            task.cancel()
        await asyncio.wait(tasks, timeout=0.05)
    for stats in keys:
        stats.close_window(run.window)
    late = [task for task in tasks if not task.done()]
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop.set()
    await sampler
    for sdk in sdks:
        await sdk.close()
    return run, time.monotonic() - closing_from, not late


def split_clients(total: int, keys: int, greedy_share: float) -> list[int]:
    if keys == 1:
        return [total]
    if greedy_share <= 0:
        split = [total // keys] * keys
        for i in range(total - sum(split)):
            split[i] += 1
        return split
    greedy = max(1, round(total * greedy_share))
    split = [greedy] + [(total - greedy) // (keys - 1)] * (keys - 1)
    for i in range(total - sum(split)):
        split[1 + i] += 1
    return split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds at the start left out of the fairness figures")
    parser.add_argument("--parallel", type=int, default=4, help="the model's slots")
    parser.add_argument("--queue-limit", type=int, default=None,
                        help="the model's queue_limit (default: the config default, 64)")
    parser.add_argument("--greedy-share", type=float, default=0.5,
                        help="share of the clients on key A (0: equal split)")
    parser.add_argument("--min-tokens", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-retries", type=int, default=8, help="the SDK's max_retries")
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--close-timeout", type=float, default=30.0,
                        help="seconds to close the streams still open after the window")
    parser.add_argument("--settle-timeout", type=float, default=5.0,
                        help="seconds for the gauges to read 0 after the last request")
    parser.add_argument("--fairness-tolerance", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    if args.keys < 1 or args.clients < args.keys or not 0 <= args.warmup < args.seconds:
        parser.error("need a client per key and a warm-up shorter than the run")

    folder = Path(tempfile.mkdtemp(prefix="appliance-load-"))
    checks = Checks()
    server: RunningServer | None = None
    try:
        port = free_port()
        extra = f"queue_limit = {args.queue_limit}\n" if args.queue_limit else ""
        config = write_config(folder, port, chat_model_toml(args.parallel, extra=extra),
                              "shutdown_grace_s = 60\n")
        keys: list[KeyStats] = []
        for index, clients in enumerate(split_clients(args.clients, args.keys,
                                                      args.greedy_share)):
            name = chr(ord("A") + index)
            key_id, secret = make_key(config, f"load-{name}")
            keys.append(KeyStats(name, key_id, secret, clients))
        boot = time.monotonic()
        server = start_server(config, port)
        print(f"server ready in {time.monotonic() - boot:.1f} s; {args.clients} streaming "
              f"clients over {args.keys} keys for {args.seconds:g} s (fairness measured after "
              f"{args.warmup:g} s); {CHAT_MODEL} parallel = {args.parallel}, queue_limit = "
              f"{args.queue_limit or 64}; max_tokens {args.min_tokens}-{args.max_tokens}, "
              f"temperature 0.7; openai SDK max_retries = {args.max_retries}; "
              f"{os.cpu_count()} CPUs\n", flush=True)
        samples: list[tuple[float, float]] = []
        run, close_s, all_returned = asyncio.run(run_load(server.base_url, keys, args, samples))
        idle, idle_s, reading = wait_engine_idle(server.base_url, args.settle_timeout)
        stop_code, stop_s = server.terminate(timeout=90)
        if stop_code is None:
            server.kill()
        rows = ledger_rows(server.ledger_path)
        spread = report(keys, rows, samples, run, close_s, args)

        checks.check("every client returned", all_returned,
                     f"open streams closed {close_s:.1f} s after the window")
        bad = [line for stats in keys for line in stats.bad_5xx]
        statuses = Counter[int]()
        for stats in keys:
            statuses.update(stats.statuses)
        checks.check("no 5xx but 503 + retry-after", not bad,
                     "statuses seen " + ", ".join(f"{code}: {n}"
                                                  for code, n in sorted(statuses.items()))
                     + (f"; bad: {bad[:3]}" if bad else ""))
        failures = Counter[str]()
        for stats in keys:
            failures.update(stats.failures)
        hard = [what for what in failures if not what.startswith("gave up after 503s")]
        checks.check("no failed client request", not hard,
                     "; ".join(f"{n} x {what}" for what, n in failures.most_common(4)) or "0")
        checks.check(f"fairness within {args.fairness_tolerance:.0%}",
                     spread <= 1 + args.fairness_tolerance,
                     f"max/min over keys of slots per backlogged second = {spread:.3f}")
        busy_max = max((b for b, _ in samples), default=0.0)
        checks.check("slots all used under load", busy_max == args.parallel,
                     f"max slots_busy sampled = {busy_max:g} of {args.parallel}")
        depth_max = max((q for _, q in samples), default=0.0)
        limit = args.queue_limit or 64
        checks.check("queue never above queue_limit", depth_max <= limit,
                     f"max queue_depth sampled = {depth_max:g}, queue_limit {limit}")
        checks.check("gauges read 0 after the run", idle,
                     f"slots_busy, queue_depth = {reading[0]}, {reading[1]} after "
                     f"{idle_s:.2f} s")
        checks.check("SIGTERM: exit 0", stop_code == 0,
                     f"exit {stop_code} after {stop_s:.1f} s")
        ledger_ok, detail = compare_ledger(keys, rows)
        checks.check("ledger rows == HTTP attempts", ledger_ok, detail)
        started = [r for r in rows if r["status"] == "started"]
        checks.check("no row left 'started'", not started, f"{len(started)} started")
        findings = log_findings(server.log(), 100_000)
        # A 503 overloaded is load shedding, not a fault; the server logs each at ERROR level.
        refusals = [f for f in findings if "requests waiting; try again shortly" in f]
        others = [f for f in findings if f not in refusals]
        checks.check("server log: no traceback, no error but refusals", not others,
                     ("; ".join(others[:3]) if others else "no traceback / other error lines")
                     + (f"; {len(refusals)} ERROR lines for 503 overloaded refusals"
                        if refusals else ""))
    except Exception as exc:
        checks.check("run", False, f"{type(exc).__name__}: {exc}"[:400])
    finally:
        if server is not None:
            server.kill()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n" + checks.report())
    if checks.failed:
        print(f"\nFAILED: {', '.join(checks.failed)}"
              + (f" (server files kept in {folder})" if args.keep else ""))
        return 1
    print("\nall checks passed")
    return 0


def report(keys: list[KeyStats], rows: list[dict[str, Any]],
           samples: list[tuple[float, float]], run: Run, close_s: float,
           args: argparse.Namespace) -> float:
    """Prints the tables; returns the fairness spread."""
    total_clients = sum(s.clients for s in keys)
    total_slots = sum(s.admitted_in_window for s in keys) or 1
    total_done = sum(s.completed_in_window for s in keys) or 1
    measured = run.end - run.measure_from
    print(table(
        ["key", "clients", "completed", "tokens", "completed / client", "TTFT p50 s",
         "TTFT p95 s", "latency p50 s", "latency p95 s", "closed at end"],
        [(s.name, s.clients, s.completed, s.tokens, s.completed / s.clients,
          percentile(s.ttft, 50), percentile(s.ttft, 95), percentile(s.latency, 50),
          percentile(s.latency, 95), s.cancelled) for s in keys]))
    print()
    rates = {s.name: s.admitted_in_window / s.backlog_s if s.backlog_s else 0.0 for s in keys}
    print(f"fairness, over the {measured:g} s after the warm-up:\n")
    print(table(
        ["key", "share of clients", "backlogged s", "got a slot", "share of slots",
         "slots / backlogged s", "completed", "share of completions"],
        [(s.name, f"{s.clients / total_clients:.1%}", s.backlog_s, s.admitted_in_window,
          f"{s.admitted_in_window / total_slots:.1%}", rates[s.name], s.completed_in_window,
          f"{s.completed_in_window / total_done:.1%}") for s in keys]))
    positive = [r for r in rates.values() if r > 0]
    spread = (max(positive) / min(positive) if len(positive) == len(keys) else float("inf"))
    print(f"\nfairness = max/min over keys of slots per backlogged second = {spread:.3f} "
          f"(pass <= {1 + args.fairness_tolerance:.2f}). A key is backlogged while one of its "
          "requests waits for its first token; round-robin admission gives every backlogged key "
          "an equal share of slots, whatever its number of clients (first-come-first-served "
          "would give each key about its share of clients)")
    fewest = min(s.admitted_in_window for s in keys)
    if fewest:
        print(f"resolution: the key with the fewest slots got {fewest}; one request more or "
              f"less moves its rate by {1 / fewest:.0%}")
    tokens = sum(s.tokens for s in keys)
    print(f"aggregate: {sum(s.completed for s in keys)} requests completed, {tokens} tokens, "
          f"{tokens / (run.end - run.start):.1f} tokens/s; {sum(s.cancelled for s in keys)} "
          f"streams closed by the client at the end (in {close_s:.1f} s); /metrics sampled "
          f"{len(samples)} times: max slots_busy {max((b for b, _ in samples), default=0):g}, "
          f"max queue_depth {max((d for _, d in samples), default=0):g}\n")
    by_key = {s.key_id: s.name for s in keys}
    ledger = Counter((by_key.get(r["key_id"], r["key_id"]), r["http_status"], r["status"])
                     for r in rows)
    print(table(
        ["key", "HTTP attempts", "client: statuses", "client: completed / closed",
         "ledger rows", "ledger: http status"],
        [(s.name, s.attempts, ", ".join(f"{c}: {n}" for c, n in sorted(s.statuses.items())),
          f"{s.completed} / {s.cancelled}",
          sum(n for (k, _, _), n in ledger.items() if k == s.name),
          ", ".join(f"{h} {st}: {n}" for (k, h, st), n in sorted(ledger.items())
                    if k == s.name)) for s in keys]))
    return spread


def compare_ledger(keys: list[KeyStats], rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """Per key: rows by HTTP status == attempts by status; 'ok' rows between the streams read
    to the end and those plus the ones closed at the end (one closed just as it finished may be
    'ok' on the server); every 200 row 'ok' or 'cancelled'."""
    by_key: dict[str, Counter[int]] = defaultdict(Counter)
    outcome: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        by_key[row["key_id"]][row["http_status"]] += 1
        if row["http_status"] == 200:
            outcome[row["key_id"]][row["status"]] += 1
    problems = []
    for stats in keys:
        seen = by_key.pop(stats.key_id, Counter())
        if seen != stats.statuses:
            problems.append(f"key {stats.name}: ledger {dict(seen)} != clients "
                            f"{dict(stats.statuses)}")
        if sum(stats.statuses.values()) != stats.attempts:
            problems.append(f"key {stats.name}: {stats.attempts} attempts, "
                            f"{sum(stats.statuses.values())} responses")
        ok, cancelled = outcome[stats.key_id]["ok"], outcome[stats.key_id]["cancelled"]
        if not stats.completed <= ok <= stats.completed + stats.cancelled:
            problems.append(f"key {stats.name}: {ok} ok rows, {stats.completed} completed + "
                            f"{stats.cancelled} closed streams")
        if ok + cancelled != stats.statuses[200]:
            problems.append(f"key {stats.name}: 200 rows {dict(outcome[stats.key_id])}")
    if by_key:
        problems.append(f"rows of other keys: {dict(by_key)}")
    attempts = sum(s.attempts for s in keys)
    return not problems, f"{len(rows)} rows, {attempts} attempts" + (
        "; " + "; ".join(problems) if problems else "")


if __name__ == "__main__":
    sys.exit(main())
