"""The hostile tier's server and its attack probe.

One real server for the tier (its own folder, ledger and log, so growth is measured against
nothing else), with every kind of model. ``HostileServer.attack()`` wraps one attack: while it
runs, a process of its own asks ``/health`` every 0.1 s (tests/hostile/health_probe.py);
afterwards it asserts that the server is alive, that every ``/health`` answered within a
second, that a normal chat request succeeds, and that the growth of resident memory (peak
and current), log and ledger stayed under the bounds the test states. Each attack's growth
is appended to ``growth.jsonl`` in the server's folder and printed as a table at the end of
the run (tests/hostile/conftest.py).
"""

from __future__ import annotations

import gc
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx2

from devtools.server_harness import RunningServer

HEALTH_BOUND_S = 1.0
REPOSITORY = Path(__file__).resolve().parents[2]  # where python -m finds tests/
MIB = 1024 * 1024


@dataclass
class Growth:
    name: str
    peak_rss_mib: float = 0.0  # growth of the process's high-water mark (VmHWM)
    rss_mib: float = 0.0  # growth of the current resident set (VmRSS)
    log_kib: float = 0.0
    ledger_kib: float = 0.0
    slowest_health_s: float = 0.0
    health_probes: int = 0


@dataclass
class Bounds:
    peak_rss_mib: float = 200.0
    log_kib: float = 64.0
    ledger_kib: float = 256.0


class HealthProbe:
    """The /health prober process of one HostileServer (tests/hostile/health_probe.py),
    started at its first attack and kept for the next ones (a Python start is 0.25 s, and
    the tier runs hundreds of attacks)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def start(self, base_url: str) -> None:
        if self._process is None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tests.hostile.health_probe"], cwd=REPOSITORY,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        answer = self._ask(f"start {base_url}")
        assert answer == "started", answer

    def stop(self) -> tuple[list[float], list[str]]:
        """The seconds each /health took since start, and what failed."""
        seen = json.loads(self._ask("stop"))
        assert "error" not in seen, seen
        return seen["latencies"], seen["failures"]

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:  # the end of its input ends it; communicate closes both pipes
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()

    def _ask(self, command: str) -> str:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write(command + "\n")
        process.stdin.flush()
        answer = process.stdout.readline()
        assert answer, f"the /health prober ended (exit {process.wait()})"
        return answer.strip()


@dataclass
class HostileServer:
    server: RunningServer
    key: str
    chat_model: str
    growth_file: Path
    probe: HealthProbe = field(default_factory=HealthProbe)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def close(self) -> None:
        """Stop the prober, then the server."""
        try:
            self.probe.close()
        finally:
            self.server.stop()

    def http(self, timeout: float = 60.0) -> httpx2.Client:
        return httpx2.Client(base_url=self.base_url, timeout=timeout,
                             headers={"Authorization": f"Bearer {self.key}"})

    def timed_post(self, path: str, body: object, timeout: float = 60.0
                   ) -> tuple[httpx2.Response, float]:
        """The answer to a JSON POST and the seconds it took the server. A dict is encoded
        before the clock starts (100,000 fields take 0.1 s here) and this process's collector
        stays off while the request runs: a heap that earlier tests filled takes 0.2 s to
        scan, and a full run read 1.1 s against a bound of 1 s. No collection before it,
        either: a flood must stay a flood."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self.http(timeout) as http:
            gc.disable()
            try:
                started = time.monotonic()
                answer = http.post(path, content=content,
                                   headers={"Content-Type": "application/json"})
                return answer, time.monotonic() - started
            finally:
                gc.enable()

    def _status(self, field_name: str) -> float:
        """A memory figure from /proc (kB), in MiB."""
        text = Path(f"/proc/{self.server.process.pid}/status").read_text()
        for line in text.splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field_name)

    def _ledger_bytes(self) -> int:
        """The ledger's data, not its write-ahead log: the WAL file is reused, not truncated,
        after each checkpoint, so its size jumps by whatever the checkpoints happened to
        leave (one run measured 60 KiB more than another for the same attack). A passive
        checkpoint from here (it blocks no writer) moves the committed pages into the main
        file first, whose size then grows with the rows alone."""
        path = self.server.ledger_path
        with closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return path.stat().st_size

    def _log_bytes(self) -> int:
        return self.server.log_path.stat().st_size

    def normal_chat(self) -> None:
        """A plain chat request right after the attack must still be answered."""
        with self.http() as http:
            answer = http.post("/v1/chat/completions", json={
                "model": self.chat_model, "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "Say hi"}]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["role"] == "assistant"

    @contextmanager
    def attack(self, name: str, bounds: Bounds | None = None) -> Iterator[Growth]:
        bounds = bounds or Bounds()
        growth = Growth(name)
        hwm, rss = self._status("VmHWM"), self._status("VmRSS")
        log_size, ledger_size = self._log_bytes(), self._ledger_bytes()
        self.probe.start(self.base_url)
        try:
            yield growth
        finally:
            latencies, failures = self.probe.stop()
        assert self.server.alive(), f"the server died during {name}:\n{self.server.log()[-4000:]}"
        self.normal_chat()
        time.sleep(0.5)  # the ledger writer commits within its batch interval
        growth.peak_rss_mib = round(self._status("VmHWM") - hwm, 1)
        growth.rss_mib = round(self._status("VmRSS") - rss, 1)
        growth.log_kib = round((self._log_bytes() - log_size) / 1024, 1)
        growth.ledger_kib = round((self._ledger_bytes() - ledger_size) / 1024, 1)
        growth.slowest_health_s = round(max(latencies, default=0.0), 3)
        growth.health_probes = len(latencies)
        with self.growth_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(growth)) + "\n")
        assert not failures, failures[:5]
        assert growth.slowest_health_s < HEALTH_BOUND_S, growth
        assert growth.peak_rss_mib < bounds.peak_rss_mib, growth
        assert growth.log_kib < bounds.log_kib, growth
        assert growth.ledger_kib < bounds.ledger_kib, growth
