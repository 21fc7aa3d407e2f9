"""Fault drills (issue 8): what a shared LAN box meets, on real servers, one drill after another.

Each drill prints one line of figures and PASS/FAIL; a table of every check follows. All servers
run ``appliance serve`` on loopback in one temporary folder and share its data dir (one at a
time, as the ledger asks), so later drills also see what earlier ones left in the ledger.

a. disconnect storm: 40 streaming chats (long generations, end-of-text banned) dropped by their
   clients after 0-4 content chunks, queued ones included. Slot use must read 0 on /metrics
   within --settle seconds, a capacity probe (``parallel`` streams at once) must get every slot
   and finish, and the ledger must say ``cancelled`` for each dropped request.
b. dropped uploads and vanishing clients: multipart uploads to /v1/audio/transcriptions (and
   JSON bodies to /v1/images/generations and /v1/chat/completions) that declare a larger
   Content-Length than they send, then close the socket (RST or FIN): each must get one row,
   ``cancelled`` (a client that left is no server error), and no traceback in the log. Clients
   that leave while a transcription or an image generation runs (and while queued behind it):
   rows ``cancelled``, and the server must keep serving at about its normal speed (no worker
   left busy for nobody; whisper stops between 30 s windows, so some delay is expected).
c. kill -9 under load: SIGKILL while 16 streams run, restart on the same data dir: every row is
   ok / error / cancelled / interrupted (the in-flight ones ``interrupted``), PRAGMA
   integrity_check is ok, the restarted server serves.
d. SIGTERM under load, grace long enough: /ready turns 503 at once, a new request gets 503
   ``shutting_down`` with retry-after, the 16 running or queued streams finish with [DONE], the
   process exits 0 within the grace, every request has its final row.
e. SIGTERM with a 1 s grace and long generations: the process still exits (status and time
   printed), the streams are cut, rows are final (cancelled), none ``started`` after a restart;
   tracebacks in the server log are printed.

    .venv/bin/python scripts/fault_drills.py [--parallel 4] [--only a,b,c,d,e] [--keep]

Exits 1 when a check fails; with --keep the temporary folder (configs, data, server logs) stays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import wave
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from load_test import (
    CHAT_MODEL,
    chat_model_toml,
    engine_load,
    start_server,
    wait_engine_idle,
    write_config,
)

from devtools.server_checks import Checks, integrity, ledger_rows, log_findings
from devtools.server_harness import TINY_SD, WHISPER_TINY, RunningServer, free_port, make_key

AUDIO_MODEL = "whisper"
IMAGE_MODEL = "sd"
# SmolLM2's <|endoftext|> and <|im_end|> banned: a stream runs to max_tokens.
NEVER_STOP = {"0": -100, "2": -100}
FINAL = {"ok", "error", "cancelled", "interrupted"}
SPEECH = ("The lighthouse keeper climbed the stairs every evening to light the lamp. "
          "Ships passed in the night and the sea was calm. ")


def chat_body(max_tokens: int, stream: bool = True, ban_stop: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": max_tokens, "temperature": 0.7, "stream": stream}
    if ban_stop:
        body["logit_bias"] = NEVER_STOP
    return body


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class StreamResult:
    status: int | None = None
    request_id: str | None = None
    content_chunks: int = 0
    done: bool = False  # data: [DONE] arrived
    finish_reason: str | None = None
    error_frame: str | None = None
    exception: str | None = None
    dropped: bool = False  # this script closed it
    headers_at: float | None = None
    first_content_at: float | None = None


async def stream_chat(http: httpx2.AsyncClient, secret: str, body: dict[str, Any],
                      drop_after: int | None = None,
                      result: StreamResult | None = None) -> StreamResult:
    """One streaming chat; ``drop_after``: close the connection after that many content
    chunks (0: right after the headers). ``result`` is filled as the stream goes."""
    result = result or StreamResult()
    try:
        async with http.stream("POST", "/v1/chat/completions", json=body,
                               headers=auth(secret)) as response:
            result.status = response.status_code
            result.request_id = response.headers.get("x-request-id")
            result.headers_at = time.monotonic()
            if response.status_code != 200:
                await response.aread()
                result.error_frame = response.text[:200]
                return result
            if drop_after == 0:
                result.dropped = True
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    result.done = True
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    result.error_frame = json.dumps(payload["error"])[:200]
                    continue
                for choice in payload.get("choices", []):
                    if choice["delta"].get("content"):
                        result.content_chunks += 1
                        if result.first_content_at is None:
                            result.first_content_at = time.monotonic()
                    if choice.get("finish_reason"):
                        result.finish_reason = choice["finish_reason"]
                if drop_after is not None and result.content_chunks >= drop_after:
                    result.dropped = True
                    return result
    except (httpx2.HTTPError, OSError) as exc:
        result.exception = f"{type(exc).__name__}: {exc}"[:120]
    return result


def rows_by_id(server: RunningServer, ids: Iterable[str | None]) -> dict[str, dict[str, Any]]:
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    return {row["request_id"]: row
            for row in ledger_rows(server.ledger_path, f"request_id IN ({marks})", wanted)}


def rows_of_key(server: RunningServer, key_id: str) -> list[dict[str, Any]]:
    return ledger_rows(server.ledger_path, "key_id = ?", (key_id,))


def wait_rows_final(server: RunningServer, where: str, params: tuple[Any, ...], count: int,
                    timeout: float = 10.0) -> list[dict[str, Any]]:
    """Final rows are written in the request's ``finally``: give the writer a moment."""
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger_rows(server.ledger_path, where, params)
        if (len(rows) >= count and all(r["status"] != "started" for r in rows)) \
                or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def statuses(rows: Iterable[dict[str, Any]]) -> str:
    """Rows counted by status/http status[/error code]."""
    counted = Counter("/".join(str(part) for part in (r["status"], r["http_status"],
                                                       r["error_code"]) if part is not None)
                      for r in rows)
    return ", ".join(f"{k}: {n}" for k, n in sorted(counted.items())) or "no rows"


def speech_wav(folder: Path, seconds: float) -> bytes:
    """Spoken English from espeak-ng, repeated to ``seconds`` (a tone when it is missing)."""
    import numpy as np

    path = folder / "speech.wav"
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), SPEECH],
                       check=True, capture_output=True)
        with wave.open(str(path), "rb") as spoken:
            rate = spoken.getframerate()
            samples = np.frombuffer(spoken.readframes(spoken.getnframes()), dtype=np.int16)
    else:
        rate = 16_000
        t = np.arange(int(rate * 2)) / rate
        samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    reps = int(seconds * rate / len(samples)) + 1
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.tile(samples, reps)[: int(seconds * rate)].tobytes())
    return out.getvalue()


def multipart(fields: dict[str, str], file_bytes: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="speech.wav"\r\nContent-Type: audio/wav\r\n\r\n'.encode()
                 + file_bytes + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def partial_request(port: int, secret: str, path: str, content_type: str, body: bytes,
                          declared: int, reset: bool) -> str:
    """Sends the head and ``body`` of a request declaring ``declared`` bytes, then closes the
    socket (RST when ``reset``, else FIN). Returns whatever the server answered first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {secret}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    writer.write(head + body)
    await writer.drain()
    answer = b""
    with contextlib.suppress(TimeoutError, OSError):
        answer = await asyncio.wait_for(reader.read(200), 0.5)
    if reset:
        writer.transport.abort()
    else:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.monotonic()
    value = await coro
    return value, time.monotonic() - started


async def abandon(coro: Any, after: float) -> str:
    """Runs a request and drops it (closing its connection) after ``after`` seconds."""
    try:
        response = await asyncio.wait_for(coro, after)
    except TimeoutError:
        return "dropped"
    return f"answered {response.status_code} before the drop"


# ------------------------------------------------------------------------------------ drills


@dataclass
class Drills:
    folder: Path
    parallel: int
    settle: float
    checks: Checks = field(default_factory=Checks)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (id, secret)
    lines: list[str] = field(default_factory=list)

    def line(self, drill: str, ok: bool, figures: str) -> None:
        text = f"[{'PASS' if ok else 'FAIL'}] {drill}: {figures}"
        self.lines.append(text)
        print(text, flush=True)

    def check(self, drill: str, name: str, ok: bool, detail: str = "") -> bool:
        return self.checks.check(f"{drill}: {name}", ok, detail)

    def secret(self, name: str) -> str:
        return self.keys[name][1]

    def key_id(self, name: str) -> str:
        return self.keys[name][0]


async def probe_capacity(server: RunningServer, secret: str, parallel: int) -> tuple[bool, str]:
    """``parallel`` streams at once: every slot must be taken (no slot left leaked) and each
    stream must finish with [DONE]."""
    seen = 0.0
    async with httpx2.AsyncClient(base_url=server.base_url, timeout=120) as http:
        tasks = [asyncio.ensure_future(stream_chat(http, secret, chat_body(32)))
                 for _ in range(parallel)]
        while not all(t.done() for t in tasks):
            with contextlib.suppress(httpx2.HTTPError):
                busy, _ = await asyncio.to_thread(engine_load, server.base_url)
                seen = max(seen, busy or 0.0)
            await asyncio.wait(tasks, timeout=0.1)
        results = [t.result() for t in tasks]
    finished = sum(r.done and r.finish_reason == "length" for r in results)
    ok = seen == parallel and finished == parallel
    return ok, f"probe: {finished}/{parallel} streams finished, max slots_busy {seen:g}"


async def drill_a(d: Drills, server: RunningServer) -> None:
    name = "a disconnect storm"
    clients = 40
    results = [StreamResult() for _ in range(clients)]
    async with httpx2.AsyncClient(
            base_url=server.base_url, timeout=120,
            limits=httpx2.Limits(max_connections=clients + 4)) as http:
        started = time.monotonic()
        await asyncio.gather(*(stream_chat(http, d.secret("storm"), chat_body(400),
                                           drop_after=i % 5, result=results[i])
                               for i in range(clients)))
        last_drop = time.monotonic()
    idle, idle_s, reading = await asyncio.to_thread(wait_engine_idle, server.base_url,
                                                    d.settle)
    ids = [r.request_id for r in results]
    rows = await asyncio.to_thread(wait_rows_final, server, "key_id = ?",
                                   (d.key_id("storm"),), clients)
    by_id = {r["request_id"]: r for r in rows}
    cancelled = sum(by_id.get(i or "", {}).get("status") == "cancelled" for i in ids)
    probe_ok, probe = await probe_capacity(server, d.secret("probe"), d.parallel)
    findings = log_findings(server.log())
    dropped = sum(r.dropped for r in results)
    errors = [r.exception or r.error_frame for r in results if r.exception or r.error_frame]
    ok = all([
        d.check(name, "every client got its stream and dropped it",
                dropped == clients and not errors,
                f"{dropped}/{clients} dropped after 0-4 chunks in {last_drop - started:.1f} s"
                + (f"; errors {errors[:2]}" if errors else "")),
        d.check(name, f"slots_busy/queue_depth 0 within {d.settle:g} s", idle,
                f"{reading[0]}/{reading[1]} after {idle_s:.2f} s"),
        d.check(name, "a row per dropped request, 'cancelled'",
                cancelled == clients and len(rows) == clients,
                f"{len(rows)} rows: {statuses(rows)}"),
        d.check(name, "no slot leaked, server serves", probe_ok, probe),
        d.check(name, "no traceback / error line in the server log", not findings,
                "; ".join(f[:160] for f in findings[:3]) or "clean"),
    ])
    d.line(name, ok, f"{clients} streams dropped in {last_drop - started:.1f} s; gauges 0 "
           f"after {idle_s:.2f} s; rows {statuses(rows)}; {probe}")


async def drill_b(d: Drills, server: RunningServer, port: int) -> None:
    name = "b dropped uploads"
    audio = await asyncio.to_thread(speech_wav, d.folder, 12.0)
    body, content_type = multipart({"model": AUDIO_MODEL, "response_format": "json"}, audio)
    image_json = json.dumps({"model": IMAGE_MODEL, "prompt": "a lighthouse at night",
                             "response_format": "b64_json"}).encode()
    # 1. Bodies cut short: the audio declares its full size and sends 64 KiB of it (or only
    #    part of the head); the image JSON sends 10 bytes of its 1000.
    cuts = []
    for i in range(8):
        sent = body[:65536] if i % 2 == 0 else body[:120]
        cuts.append(partial_request(port, d.secret("upload"), "/v1/audio/transcriptions",
                                    content_type, sent, len(body), reset=i % 4 < 2))
    for i in range(4):
        cuts.append(partial_request(port, d.secret("upload"), "/v1/images/generations",
                                    "application/json", image_json[:10], 1000, reset=i % 2 == 0))
    chat_json = json.dumps(chat_body(8, stream=False)).encode()
    for i in range(2):
        cuts.append(partial_request(port, d.secret("upload"), "/v1/chat/completions",
                                    "application/json", chat_json[:10], 1000, reset=i % 2 == 0))
    first_answers = Counter(await asyncio.gather(*cuts))
    upload_rows = await asyncio.to_thread(wait_rows_final, server, "key_id = ?",
                                          (d.key_id("upload"),), len(cuts), 5.0)

    async with httpx2.AsyncClient(base_url=server.base_url, timeout=300) as http:
        def transcribe(secret: str) -> Any:
            return http.post("/v1/audio/transcriptions", headers=auth(secret),
                             files={"file": ("speech.wav", audio, "audio/wav")},
                             data={"model": AUDIO_MODEL, "response_format": "json"})

        def image(secret: str, steps: int, size: str) -> Any:
            return http.post("/v1/images/generations", headers=auth(secret),
                             json={"model": IMAGE_MODEL, "prompt": "a lighthouse at night",
                                   "size": size, "response_format": "b64_json",
                                   "steps": steps})

        # 2. Clients that leave while transcriptions run (2 workers) and wait behind them.
        base_audio, audio_s = await timed(transcribe(d.secret("probe")))
        vanish = max(0.3, audio_s / 3)
        audio_drops = Counter(await asyncio.gather(
            *(abandon(transcribe(d.secret("vanish-audio")), vanish) for _ in range(4))))
        after_audio, audio_after_s = await timed(transcribe(d.secret("probe")))
        # 3. The same for image generation (1 worker): long generations, dropped.
        base_image, image_s = await timed(image(d.secret("probe"), 4, "256x256"))
        image_drops = Counter(await asyncio.gather(
            *(abandon(image(d.secret("vanish-image"), 60, "512x512"), 1.0) for _ in range(3))))
        after_image, image_after_s = await timed(image(d.secret("probe"), 4, "256x256"))
        chat = await http.post("/v1/chat/completions", headers=auth(d.secret("probe")),
                               json=chat_body(8, stream=False, ban_stop=False))
    audio_rows = await asyncio.to_thread(wait_rows_final, server, "key_id = ?",
                                         (d.key_id("vanish-audio"),), 4)
    image_rows = await asyncio.to_thread(wait_rows_final, server, "key_id = ?",
                                         (d.key_id("vanish-image"),), 3)
    idle, _, _ = await asyncio.to_thread(wait_engine_idle, server.base_url, d.settle)
    stop_lines = [line for line in server.log().splitlines()
                  if "cancelled request stopped" in line]
    serves = (base_audio.status_code, after_audio.status_code, base_image.status_code,
              after_image.status_code, chat.status_code) == (200,) * 5
    findings = [line for line in log_findings(server.log(), 1000) if "unhandled error" in line]
    ok = all([
        d.check(name, "cut-short bodies: one row each, 'cancelled' (a client that left is "
                "no server error)",
                len(upload_rows) == len(cuts)
                and all(r["status"] == "cancelled" for r in upload_rows),
                f"{len(cuts)} connections cut ({sum(n for a, n in first_answers.items() if a)} "
                f"answered before the cut); {len(upload_rows)} rows: {statuses(upload_rows)}"),
        d.check(name, "no traceback in the server log", not findings,
                f"{len(findings)} 'unhandled error' lines (each with a traceback)"
                + (f", first: {findings[0][:160]}" if findings else "")),
        d.check(name, "transcriptions dropped: rows 'cancelled'",
                len(audio_rows) == 4 and all(r["status"] == "cancelled" for r in audio_rows),
                f"dropped after {vanish:.1f} s: {dict(audio_drops)}; rows "
                f"{statuses(audio_rows)}"),
        d.check(name, "images dropped: rows 'cancelled'",
                len(image_rows) == 3 and all(r["status"] == "cancelled" for r in image_rows),
                f"dropped after 1.0 s: {dict(image_drops)}; rows {statuses(image_rows)}; "
                f"{len(stop_lines)} 'cancelled request stopped' log line(s)"),
        d.check(name, "serves at normal speed after the drops (no busy worker left)",
                serves and audio_after_s <= 2 * audio_s + 2 and image_after_s <= 2 * image_s + 2,
                f"transcription {audio_s:.2f} s before, {audio_after_s:.2f} s after; image "
                f"{image_s:.2f} s before, {image_after_s:.2f} s after; statuses "
                f"{base_audio.status_code}/{after_audio.status_code}/{base_image.status_code}/"
                f"{after_image.status_code}/chat {chat.status_code}"),
        d.check(name, "chat gauges 0", idle, ""),
    ])
    d.line(name, ok, f"cut bodies -> {statuses(upload_rows)}; vanished transcriptions -> "
           f"{statuses(audio_rows)}; vanished images -> {statuses(image_rows)}; after: "
           f"transcription {audio_after_s:.2f} s (was {audio_s:.2f}), image "
           f"{image_after_s:.2f} s (was {image_s:.2f})")


async def start_streams(server: RunningServer, secret: str, count: int, max_tokens: int,
                        generating: int) -> tuple[httpx2.AsyncClient, list[asyncio.Task[Any]],
                                                  list[StreamResult]]:
    """``count`` streams; returns once all have their headers and ``generating`` have content."""
    http = httpx2.AsyncClient(base_url=server.base_url, timeout=300,
                              limits=httpx2.Limits(max_connections=count + 4))
    results = [StreamResult() for _ in range(count)]
    tasks = [asyncio.ensure_future(stream_chat(http, secret, chat_body(max_tokens),
                                               result=results[i])) for i in range(count)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with_headers = sum(r.headers_at is not None for r in results)
        with_content = sum(r.first_content_at is not None for r in results)
        if (with_headers == count and with_content >= generating) \
                or all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.02)
    return http, tasks, results


async def drill_c(d: Drills, server: RunningServer, chat_config: Path,
                  port: int) -> RunningServer | None:
    name = "c kill -9 under load"
    http, tasks, results = await start_streams(server, d.secret("kill"), 16, 300, d.parallel)
    server.process.kill()
    server.process.wait()
    await asyncio.gather(*tasks)
    await http.aclose()
    ids = [r.request_id for r in results]
    check_after_kill = await asyncio.to_thread(integrity, server.ledger_path)
    before = rows_by_id(server, ids)
    boot = time.monotonic()
    try:
        restarted = await asyncio.to_thread(start_server, chat_config, port, "server-c.log")
    except RuntimeError as exc:
        d.check(name, "restart", False, str(exc)[-300:])
        d.line(name, False, "the server did not restart")
        return None
    boot_s = time.monotonic() - boot
    after = rows_by_id(restarted, ids)
    everything = ledger_rows(restarted.ledger_path)
    not_final = [r for r in everything if r["status"] not in FINAL]
    check_after_restart = await asyncio.to_thread(integrity, restarted.ledger_path)
    async with httpx2.AsyncClient(base_url=restarted.base_url, timeout=60) as fresh:
        served = await fresh.post("/v1/chat/completions", headers=auth(d.secret("probe")),
                                  json=chat_body(8, stream=False, ban_stop=False))
    marked = [line for line in restarted.log().splitlines() if "interrupted" in line]
    cut = sum(r.exception is not None for r in results)
    ok = all([
        d.check(name, "streams running at the kill", cut == len(results),
                f"{cut}/{len(results)} streams cut by the kill, "
                f"{sum(r.first_content_at is not None for r in results)} had content"),
        d.check(name, "integrity_check ok (after the kill, after the restart)",
                check_after_kill == check_after_restart == "ok",
                f"{check_after_kill} / {check_after_restart}"),
        d.check(name, "every row final after the restart", not not_final and
                len(after) == len(ids),
                f"{len(everything)} rows in the ledger, {len(not_final)} not final; the 16: "
                f"{statuses(before.values())} after the kill -> {statuses(after.values())}"),
        d.check(name, "restarted server serves", served.status_code == 200,
                f"ready {boot_s:.1f} s after the restart began; chat {served.status_code}; "
                f"log: {marked[0].split('] ', 1)[-1][:100] if marked else 'no sweep line'}"),
    ])
    d.line(name, ok, f"the 16 in flight: "
           f"{statuses(before.values())} -> {statuses(after.values())} after restart "
           f"(ready in {boot_s:.1f} s); integrity {check_after_kill}/{check_after_restart}; "
           f"{len(not_final)} rows not final")
    return restarted


async def drill_sigterm(d: Drills, server: RunningServer, name: str, grace: float, max_tokens: int,
                        key: str, expect_finish: bool) -> tuple[bool, str]:
    """SIGTERM with 16 streams in flight; returns (ok, figures)."""
    http, tasks, results = await start_streams(server, d.secret(key), 16, max_tokens,
                                               d.parallel)
    signalled = time.monotonic()
    server.process.send_signal(15)
    ready_status: int | str = "no answer"
    ready_after = float("nan")
    refused: httpx2.Response | None = None
    async with httpx2.AsyncClient(base_url=server.base_url, timeout=10) as fresh:
        for _ in range(50):
            try:
                answer = await fresh.get("/ready")
            except httpx2.HTTPError as exc:
                ready_status = type(exc).__name__
                break
            ready_status = answer.status_code
            if answer.status_code == 503:
                ready_after = time.monotonic() - signalled
                break
            await asyncio.sleep(0.02)
        with contextlib.suppress(httpx2.HTTPError):
            refused = await fresh.post("/v1/chat/completions", headers=auth(d.secret(key)),
                                       json=chat_body(4, stream=False, ban_stop=False))
    refused_id = refused.headers.get("x-request-id") if refused is not None else None
    code: int | None
    try:
        code = await asyncio.to_thread(server.process.wait, grace + 30)
    except subprocess.TimeoutExpired:
        code = None
        server.kill()
    exit_s = time.monotonic() - signalled
    await asyncio.gather(*tasks)
    await http.aclose()
    rows = rows_by_id(server, [r.request_id for r in results])
    all_started = ledger_rows(server.ledger_path, "status = 'started'")
    refused_row = rows_by_id(server, [refused_id]).get(refused_id or "")
    finished = sum(r.done and r.finish_reason == "length" and not r.error_frame
                   for r in results)
    cut = sum(r.exception is not None for r in results)
    error_frames = sum(r.error_frame is not None for r in results)
    refusal = "no answer"
    if refused is not None:
        body = refused.json() if refused.headers.get("content-type", "").startswith(
            "application/json") else {}
        refusal = (f"{refused.status_code} {body.get('error', {}).get('code')} "
                   f"retry-after={refused.headers.get('retry-after')}")
    findings = log_findings(server.log())
    checks = [
        d.check(name, "/ready 503 at once", ready_status == 503 and ready_after < 1.0,
                f"/ready {ready_status} {ready_after:.2f} s after SIGTERM"),
        d.check(name, "new request refused 503 shutting_down + retry-after",
                refusal.startswith("503 shutting_down") and "retry-after=None" not in refusal,
                refusal + (f", row {refused_row['status']}/{refused_row['http_status']}"
                           if refused_row else ", no row")),
        d.check(name, "process exits" + (" 0 within the grace" if expect_finish else ""),
                code == 0 and (exit_s <= grace or not expect_finish),
                f"exit {code} after {exit_s:.1f} s (grace {grace:g} s)"),
        d.check(name, "no row left 'started'", not all_started and len(rows) == len(results),
                f"the 16: {statuses(rows.values())}; {len(all_started)} 'started' in the "
                "ledger"),
    ]
    if expect_finish:
        checks.append(d.check(name, "in-flight streams finish with [DONE]",
                              finished == len(results),
                              f"{finished}/{len(results)} finished, {cut} cut, "
                              f"{error_frames} error frames"))
        checks.append(d.check(name, "their rows 'ok'",
                              sum(r["status"] == "ok" for r in rows.values()) == len(results),
                              statuses(rows.values())))
    else:
        # Past the grace the drain ends each request itself (an error frame shutting_down and
        # [DONE]; commit 16d2450): any final row will do, and every stream must have ended.
        checks.append(d.check(name, "every stream ended ([DONE] or cut), none hangs",
                              all(r.done or r.exception for r in results),
                              f"{sum(r.done for r in results)} got [DONE] ({error_frames} after "
                              f"an error frame), {cut} cut"))
        checks.append(d.check(name, "rows of the cut streams final, not 'ok'",
                              all(r["status"] in FINAL - {"ok"} for r in rows.values()),
                              statuses(rows.values())))
    checks.append(d.check(name, "no traceback / error line in the server log", not findings,
                          "; ".join(f[:160] for f in findings[:4]) or "clean"))
    frames = Counter(json.loads(r.error_frame).get("code") for r in results
                     if r.error_frame and r.error_frame.startswith("{"))
    figures = (f"/ready {ready_status} after {ready_after:.2f} s; new request -> {refusal}; "
               f"streams: {finished} finished, {cut} cut, {error_frames} error frames "
               f"{dict(frames) if frames else ''}; exit "
               f"{code} after {exit_s:.1f} s (grace {grace:g}); rows {statuses(rows.values())}; "
               f"log: {len(findings)} traceback/error line(s)")
    return all(checks), figures


async def drill_d(d: Drills, server: RunningServer, grace: float) -> None:
    name = "d SIGTERM, grace long enough"
    ok, figures = await drill_sigterm(d, server, name, grace, 24, "drain", True)
    d.line(name, ok, figures)


async def drill_e(d: Drills, folder: Path, port: int, chat_config: Path) -> None:
    name = "e SIGTERM, grace 1 s"
    short = write_config(folder, port, chat_model_toml(d.parallel, 4096),
                         "shutdown_grace_s = 1\n", name="short-grace.toml")
    server = await asyncio.to_thread(start_server, short, port, "server-e.log")
    ok, figures = await drill_sigterm(d, server, name, 1.0, 2000, "late", False)
    for finding in log_findings(server.log(), 40):
        if "CancelledError" in finding or "Traceback" in finding:
            figures += f"\n    log: {finding[:200]}"
    try:
        again = await asyncio.to_thread(start_server, chat_config, port, "server-e2.log")
    except RuntimeError as exc:
        d.check(name, "restart", False, str(exc)[-300:])
        d.line(name, False, figures + "; the server did not restart")
        return
    started = ledger_rows(again.ledger_path, "status = 'started'")
    interrupted = rows_of_key(again, d.key_id("late"))
    code, stop_s = await asyncio.to_thread(again.terminate, 30)
    ok &= d.check(name, "after a restart: nothing 'started'", not started,
                  f"rows of the drill {statuses(interrupted)}; restarted server stopped with "
                  f"{code} in {stop_s:.1f} s")
    d.line(name, ok, figures + f"; after restart {statuses(interrupted)}")


async def run_drills(args: argparse.Namespace, folder: Path) -> Drills:
    d = Drills(folder, args.parallel, args.settle)
    port = free_port()
    models = chat_model_toml(args.parallel) + (
        f'[[models]]\nid = "{AUDIO_MODEL}"\nkind = "transcription"\npath = "{WHISPER_TINY}"\n'
        "workers = 2\nprice_per_request = 0.003\n\n"
        f'[[models]]\nid = "{IMAGE_MODEL}"\nkind = "image"\npath = "{TINY_SD}"\n'
        'workers = 1\nsteps = 4\nsizes = ["256x256", "512x512"]\nprice_per_request = 0.02\n')
    config = write_config(folder, port, models, f"shutdown_grace_s = {args.grace:g}\n")
    chat_config = write_config(folder, port, chat_model_toml(args.parallel),
                               f"shutdown_grace_s = {args.grace:g}\n", name="chat.toml")
    for key in ("storm", "probe", "upload", "vanish-audio", "vanish-image", "kill", "drain",
                "late"):
        d.keys[key] = await asyncio.to_thread(make_key, config, key)
    only = set(args.only.split(","))
    boot = time.monotonic()
    server: RunningServer | None = await asyncio.to_thread(start_server, config, port)
    print(f"server with chat + whisper + image models ready in {time.monotonic() - boot:.1f} s "
          f"(parallel = {args.parallel}; {folder})\n", flush=True)
    try:
        if "a" in only:
            await drill_a(d, server)
        if "b" in only:
            await drill_b(d, server, port)
        if "c" in only:
            server = await drill_c(d, server, chat_config, port)
        if server is not None and "d" in only:
            await drill_d(d, server, args.grace)
        if server is not None:
            server.kill()  # whichever server is left (a drill that stopped short)
        if "e" in only:
            await drill_e(d, folder, port, chat_config)
    finally:
        if server is not None:
            server.kill()
    return d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallel", type=int, default=4, help="the chat model's slots")
    parser.add_argument("--grace", type=float, default=120.0,
                        help="shutdown_grace_s of drills a-d (e uses 1 s)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds for slot use to read 0 after the storm")
    parser.add_argument("--only", default="a,b,c,d,e", help="drills to run, e.g. a,d")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="appliance-drills-"))
    started = time.monotonic()
    try:
        drills = asyncio.run(run_drills(args, folder))
        checks = drills.checks
    except Exception as exc:
        checks = Checks()
        checks.check("drills", False, f"{type(exc).__name__}: {exc}"[-600:])
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n" + checks.report())
    print(f"\n{time.monotonic() - started:.0f} s in all")
    if checks.failed:
        print(f"FAILED: {len(checks.failed)} check(s)"
              + (f"; logs and data in {folder}" if args.keep else " (--keep keeps the logs)"))
        return 1
    print("all drills passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
