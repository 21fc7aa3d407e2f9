"""The hostile tier's /health prober, run in a process of its own.

It measures how long the server takes to answer while an attack runs. In the test process it
would also measure that process: a full garbage collection of the heap earlier tests left
(LiteLLM and pydantic-ai alone bring 400,000 objects, 0.2 s to scan on an idle machine) or an
attacking client holding the GIL read as a /health answer of over a second.

Run as ``python -m tests.hostile.health_probe``, with one command a line on standard input:
``start URL`` asks URL/health every 0.1 s and answers ``started``; ``stop`` ends the asking
and answers one JSON line, ``{"latencies": [seconds...], "failures": [text...]}``. The end
of the input ends the process.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx2

TIMEOUT_S = 5.0  # an answer this late is a failure; the bound the tests check is lower
INTERVAL_S = 0.1


@dataclass
class Asking:
    """One attack's probing: the thread that asks, and what it saw."""

    base_url: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._ask, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, list[float] | list[str]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return {"latencies": self.latencies, "failures": self.failures}

    def _ask(self) -> None:
        with httpx2.Client(base_url=self.base_url, timeout=TIMEOUT_S) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = http.get("/health").status_code
                    if status != 200:
                        self.failures.append(f"/health answered {status}")
                except httpx2.HTTPError as exc:
                    self.failures.append(f"/health failed: {exc!r}")
                self.latencies.append(time.monotonic() - started)
                self._stop.wait(INTERVAL_S)


def main() -> None:
    asking: Asking | None = None
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "start" and asking is None:
            asking = Asking(argument)
            asking.start()
            answer = "started"
        elif command == "stop" and asking is not None:
            answer = json.dumps(asking.stop())
            asking = None
        else:
            answer = json.dumps({"error": f"unexpected command {line.strip()!r}"})
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    if asking is not None:
        asking.stop()


if __name__ == "__main__":
    main()
