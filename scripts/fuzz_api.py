"""Fuzzing the real server on loopback: every operation of the ``/openapi.json`` it serves,
with schemathesis' valid (positive) and schema-breaking (negative) requests, on real models.

Starts ``appliance serve`` in a temporary folder (SmolLM2 as a chat model and as an embedding
model, whisper tiny.en, the tiny random-weights SD pipeline), makes a regular and an admin key
with the CLI, fetches ``/openapi.json`` from the server (what clients see, not the file in the
repo) and sends --examples cases per operation and mode over real HTTP, the admin key to
``/v1/organization/*`` and ``/metrics``. A conversation with items, a stored chat completion and
a stored response of the regular key are made first, and half the cases of the stored-state
routes name their ids (made anew after a case deleted one), so that those routes are fuzzed
past the lookup, not only as 404s. Cases, modes and the served-model swap are those of
tests/fast/test_openapi_fuzz.py (devtools/openapi_cases.py); that test runs on fake engines
through ASGI, this one reaches llama.cpp, faster-whisper, diffusers, uvicorn and the ledger.

Every answer is checked, and the run goes on after a failure:
- no 5xx, except a 503 with ``retry-after`` (load shedding: counted apart);
- every 4xx and 5xx body is OpenAI's ``{"error": {message, type, param, code}}``;
- an answer comes (a connection dropped or a timeout is a failure too).

Then: the server still runs, ``/ready`` is 200, ``appliance_engine_slots_busy`` and
``appliance_engine_queue_depth`` read 0 for every model (polled), it exits 0 on SIGTERM, and
its ledger has no row left ``started``; no traceback in its log.

    .venv/bin/python scripts/fuzz_api.py [--examples 50] [--seed N] [--only TEXT] [--keep]

Prints a table per operation and the checks; exits 1 when any failed. The temporary folder
(server log, ledger, failures.json) is kept on failure or with --keep, and its path printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.schemas import APIOperation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_test import start_server  # noqa: E402

from devtools.openapi_cases import (  # noqa: E402
    Wire,
    draw_case,
    envelope_problem,
    modes,
    needs_admin,
    prepare,
)
from devtools.server_checks import Checks, ledger_rows, log_findings, table  # noqa: E402
from devtools.server_harness import (  # noqa: E402
    SMOLLM2,
    TINY_SD,
    WHISPER_TINY,
    RunningServer,
    create_key,
    free_port,
    write_config,
)

CHAT = "smollm2-135m-instruct"
MODELS_TOML = f"""
[[models]]
id = "{CHAT}"
path = "{SMOLLM2}"
aliases = ["gpt-4o-mini"]
parallel = 4
context_length = 2048
# Fuzzed requests ask for huge max_tokens: each ends within seconds instead.
generation_timeout_s = 3

[[models]]
id = "smollm2-135m-embed"
kind = "embedding"
path = "{SMOLLM2}"
aliases = ["text-embedding-3-small"]
context_length = 512

[[models]]
id = "whisper-tiny.en"
kind = "transcription"
path = "{WHISPER_TINY}"
aliases = ["whisper-1"]

[[models]]
id = "tiny-random-sd"
kind = "image"
path = "{TINY_SD}"
aliases = ["dall-e-2"]
steps = 2
# 256x256 is in OpenAI's enum for dall-e-2, so some generated requests reach the pipeline.
sizes = ["64x64", "256x256"]
"""
# Served names, as the fast test swaps them in; completions by id (it takes no alias there).
SERVED = {"/v1/chat/completions": "gpt-4o-mini", "/v1/completions": CHAT,
          "/v1/responses": "gpt-4o-mini", "/v1/responses/input_tokens": "gpt-4o-mini",
          "/v1/embeddings": "text-embedding-3-small", "/v1/audio/transcriptions": "whisper-1",
          "/v1/audio/translations": "whisper-1", "/v1/images/generations": "dall-e-2"}
REQUEST_TIMEOUT_S = 30.0  # generation_timeout_s bounds chat at 3 s: silence this long is a hang
SETTLE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 60.0
SIGN = {GenerationMode.POSITIVE: "+", GenerationMode.NEGATIVE: "-"}


@dataclass
class Failure:
    operation: str
    status: int | None  # None: no answer
    problem: str
    request: str
    body: str
    sent: str = ""  # the whole request body (failures.json), to replay it

    def text(self) -> str:
        status = "no answer" if self.status is None else str(self.status)
        return (f"[{self.operation}] {status}: {self.problem}\n    request: {self.request}\n"
                f"    answer:  {self.body}")


@dataclass
class Tally:
    """One operation's answers, both modes together."""

    sent: int = 0
    classes: Counter[str] = field(default_factory=Counter)  # 2xx, 4xx, 503, 5xx, other
    envelope: int = 0  # error bodies that are not OpenAI's envelope
    unsendable: int = 0  # cases the HTTP client refuses to put on the wire (not the server's)
    modes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _excerpt(data: bytes | None, limit: int = 300) -> str:
    if not data:
        return ""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def _whole(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="backslashreplace")


def _status_class(response: httpx2.Response) -> str:
    status = response.status_code
    if status == 503 and "retry-after" in response.headers:
        return "503"
    return {2: "2xx", 4: "4xx", 5: "5xx"}.get(status // 100, "other")


def stored_state(http: httpx2.Client, base_url: str, key: str) -> dict[str, str]:
    """A conversation with items, a stored completion and a stored response of ``key``, made
    through the API: path parameter -> id, for ``draw_case``."""
    headers = {"Authorization": f"Bearer {key}"}

    def made(path: str, body: dict[str, object]) -> dict[str, str]:
        answer = http.post(base_url + path, json=body, headers=headers)
        answer.raise_for_status()
        made_body: dict[str, str] = answer.json()
        return made_body

    message = {"type": "message", "role": "user", "content": "Hi"}
    conversation = made("/v1/conversations", {"items": [message, message]})["id"]
    items = http.get(f"{base_url}/v1/conversations/{conversation}/items", headers=headers)
    items.raise_for_status()
    short = {"model": CHAT, "temperature": 0}
    completion = made("/v1/chat/completions", {**short, "store": True, "max_tokens": 4,
                                               "messages": [{"role": "user", "content": "Hi"}]})
    response = made("/v1/responses", {**short, "max_output_tokens": 16, "input": "Hi"})
    return {"conversation_id": conversation, "item_id": items.json()["data"][0]["id"],
            "completion_id": completion["id"], "response_id": response["id"]}


class Fuzzer:
    def __init__(self, base_url: str, user: str, admin: str, examples: int, seed: int):
        self.base_url = base_url
        self.user = user
        self.admin = admin
        self.examples = examples
        self.seed = seed
        self.http = httpx2.Client(timeout=REQUEST_TIMEOUT_S)
        self.tallies: dict[str, Tally] = {}
        self.failures: list[Failure] = []
        self.generation_errors: list[str] = []
        self.ids = stored_state(self.http, base_url, user)

    def run(self, operation: APIOperation) -> None:
        tally = self.tallies.setdefault(operation.label, Tally())
        began = time.monotonic()
        for mode in modes(operation):
            tally.modes.append(SIGN[mode])
            self._mode(operation, mode, tally)
        tally.seconds += time.monotonic() - began

    def _mode(self, operation: APIOperation, mode: GenerationMode, tally: Tally) -> None:
        key = self.admin if needs_admin(operation) else self.user
        label = f"{operation.label} {SIGN[mode]}"

        # Never raises on a bad answer (it is recorded), so hypothesis runs every example and
        # never shrinks: the point is to see everything that fails, not one minimal case.
        @hypothesis_seed(self.seed)
        @settings(max_examples=self.examples, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            case = draw_case(data, operation, mode, key, SERVED, self.ids)
            status = self._send(label, prepare(case.as_transport_kwargs(base_url=self.base_url)),
                                tally)
            if case.method.upper() == "DELETE" and status == 200:
                self.ids = stored_state(self.http, self.base_url, self.user)

        try:
            one()
        except Exception as exc:  # schemathesis could not generate: say so, go on
            self.generation_errors.append(f"{label}: {exc!r}"[:300])

    def _send(self, label: str, wire: Wire, tally: Tally) -> int | None:
        """Sends one case and records its answer; its status (None: it got none)."""
        request = f"{wire.method} {wire.url} {_excerpt(wire.body, 240)!r}"
        try:
            response = self.http.request(wire.method, wire.url, headers=wire.headers,
                                         content=wire.body)
        except httpx2.LocalProtocolError:
            tally.unsendable += 1  # e.g. a header value h11 will not write: never left here
            return None
        except (httpx2.InvalidURL, UnicodeError):
            tally.unsendable += 1
            return None
        except httpx2.HTTPError as exc:
            tally.sent += 1
            self.failures.append(Failure(label, None, repr(exc), request, "",
                                         _whole(wire.body)))
            return None
        tally.sent += 1
        kind = _status_class(response)
        tally.classes[kind] += 1
        if kind == "5xx":
            self.failures.append(Failure(label, response.status_code, "server error", request,
                                         _excerpt(response.content), _whole(wire.body)))
        problem = envelope_problem(response.status_code, response.content)
        if problem is not None:
            tally.envelope += 1
            self.failures.append(Failure(label, response.status_code, problem[:300], request,
                                         _excerpt(response.content), _whole(wire.body)))
        return response.status_code

    def report(self) -> str:
        rows: list[list[object]] = []
        total = Tally()
        for label, tally in self.tallies.items():
            counts = [tally.classes[k] for k in ("2xx", "4xx", "503", "5xx", "other")]
            rows.append([label, "/".join(tally.modes), tally.sent, *counts, tally.envelope,
                         tally.unsendable, tally.seconds])
            total.sent += tally.sent
            total.seconds += tally.seconds
            total.classes.update(tally.classes)
            total.envelope += tally.envelope
            total.unsendable += tally.unsendable
        rows.append(["total", "", total.sent,
                     *[total.classes[k] for k in ("2xx", "4xx", "503", "5xx", "other")],
                     total.envelope, total.unsendable, total.seconds])
        return table(["operation", "modes", "sent", "2xx", "4xx", "503+retry", "5xx", "other",
                      "not envelope", "unsendable", "s"], rows)


def _write_config(folder: Path, port: int) -> Path:
    # Not load_test.write_config: /metrics stays behind the admin key, as it ships.
    return write_config(folder, port, MODELS_TOML.lstrip("\n"))


def _gauges(text: str, name: str) -> dict[str, float]:
    return {model: float(value) for model, value in
            re.findall(rf'^{name}\{{model="([^"]+)"\}} (\S+)$', text, re.M)}


def _settle(base_url: str, admin: str) -> tuple[bool, float, str]:
    """Polls /metrics until every model's slots and queue read 0: (idle, seconds, reading)."""
    started = time.monotonic()
    reading = "no answer"
    while True:
        with contextlib.suppress(httpx2.HTTPError):
            text = httpx2.get(f"{base_url}/metrics", timeout=10,
                              headers={"Authorization": f"Bearer {admin}"}).text
            slots = _gauges(text, "appliance_engine_slots_busy")
            queues = _gauges(text, "appliance_engine_queue_depth")
            reading = ", ".join(f"{m} {slots[m]:g}/{queues.get(m, 0):g}" for m in sorted(slots))
            if slots and not any(slots.values()) and not any(queues.values()):
                return True, time.monotonic() - started, reading
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            return False, time.monotonic() - started, reading or "no gauges"
        time.sleep(0.1)


def _after_run(server: RunningServer, admin: str, checks: Checks) -> None:
    checks.check("server alive after the run", server.alive(),
                 "" if server.alive() else f"exit {server.process.returncode}")
    try:
        ready = httpx2.get(f"{server.base_url}/ready", timeout=10)
        checks.check("/ready is 200", ready.status_code == 200,
                     f"{ready.status_code} {ready.json().get('status')}")
    except (httpx2.HTTPError, ValueError) as exc:
        checks.check("/ready is 200", False, repr(exc))
    idle, waited, reading = _settle(server.base_url, admin)
    checks.check("slots busy and queue 0 for every model", idle,
                 f"{reading} (model slots/queue) after {waited:.1f}s")
    code, took = server.terminate(STOP_TIMEOUT_S)
    checks.check("SIGTERM: exit status 0", code == 0, f"{code} after {took:.1f}s")
    if code is None:
        server.kill()
    rows = ledger_rows(server.ledger_path)
    by_status = Counter(str(row["status"]) for row in rows)
    by_http = Counter(row["http_status"] for row in rows)
    checks.check("ledger: no row left 'started'", by_status["started"] == 0,
                 f"{len(rows)} rows; status " + ", ".join(f"{k} {v}" for k, v in
                                                          sorted(by_status.items())) +
                 "; http " + ", ".join(f"{k} {v}" for k, v in
                                       sorted(by_http.items(), key=lambda kv: str(kv[0]))))
    findings = log_findings(server.log())
    checks.check("no traceback or ERROR in the server log", not findings,
                 f"{len(findings)} lines, first: {findings[0][:120]}" if findings else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=50,
                        help="cases per operation and mode (default 50: about 2 min on 2 cores)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default random)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--only", default="",
                        help="fuzz only operations whose label contains this, e.g. 'completions'")
    args = parser.parse_args(argv)
    missing = [str(p) for p in (SMOLLM2, WHISPER_TINY, TINY_SD) if not p.exists()]
    if missing:
        print(f"missing models: {', '.join(missing)} (run scripts/fetch-models and "
              "scripts/build-tiny-sd)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    began = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    checks = Checks()
    fuzzer: Fuzzer | None = None
    server: RunningServer | None = None
    try:
        port = free_port()
        config = _write_config(folder, port)
        user = create_key(config, "fuzz")
        admin = create_key(config, "fuzz-admin", admin=True)
        server = start_server(config, port)
        boot = time.monotonic() - began
        document = httpx2.get(f"{server.base_url}/openapi.json", timeout=30).json()
        schema = schemathesis.openapi.from_dict(document)
        operations = [result.ok() for result in schema.get_all_operations()
                      if args.only in result.ok().label]
        print(f"server ready in {boot:.0f}s; {len(operations)} operations from "
              f"{server.base_url}/openapi.json; {args.examples} examples per operation and "
              f"mode; seed {seed}", flush=True)
        fuzzer = Fuzzer(server.base_url, user, admin, args.examples, seed)
        fuzz_began = time.monotonic()
        for operation in operations:
            fuzzer.run(operation)
        fuzz_s = time.monotonic() - fuzz_began
        fuzzer.http.close()
        checks.check("no 5xx (a 503 with retry-after aside)",
                     not any(t.classes["5xx"] for t in fuzzer.tallies.values()))
        checks.check("every error in OpenAI's envelope",
                     not any(t.envelope for t in fuzzer.tallies.values()))
        checks.check("every request answered",
                     not any(f.status is None for f in fuzzer.failures),
                     f"fuzzing took {fuzz_s:.0f}s")
        checks.check("schemathesis generated every operation and mode",
                     not fuzzer.generation_errors, "; ".join(fuzzer.generation_errors)[:300])
        _after_run(server, admin, checks)
    except BaseException:
        print(f"kept {folder} (server.log, data/ledger.sqlite)", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.kill()
    if fuzzer is not None:
        print(fuzzer.report())
        if fuzzer.failures:
            print(f"\n{len(fuzzer.failures)} failures (first 20):")
            for failure in fuzzer.failures[:20]:
                print(failure.text())
            (folder / "failures.json").write_text(
                json.dumps([vars(f) for f in fuzzer.failures], indent=1), encoding="utf-8")
    print()
    print(checks.report())
    print(f"\nwall time {time.monotonic() - began:.0f}s; seed {seed}")
    if checks.failed or args.keep:
        print(f"kept {folder} (server.log, data/ledger.sqlite, failures.json)")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
