"""The ledger loses nothing: kill -9 the real server in the middle of SDK load, restart it.

Every request that got a complete response has its complete row; requests in flight are
marked ``interrupted`` at the restart; no row is duplicated; the database opens cleanly.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import openai
import pytest

from appliance.ledger import RequestRecord
from devtools.server_harness import SMOLLM2, create_key, free_port, start_server, write_config

pytestmark = pytest.mark.real


def _rows(path: Path) -> dict[str, RequestRecord]:
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = [RequestRecord(*row) for row in conn.execute("SELECT * FROM requests")]
    by_id = {row.request_id: row for row in rows}
    assert len(by_id) == len(rows)  # the primary key holds, but say it: no duplicates
    return by_id


def test_kill_9_mid_load_loses_no_completed_request(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, f'[[models]]\nid = "smol"\npath = "{SMOLLM2}"\n'
                          'price_per_request = 0.01\nparallel = 4\ncontext_length = 512\n')
    secret = create_key(config, "load")
    server = start_server(config, port)
    completed: dict[str, str] = {}  # request id -> "stream" / "plain"
    admitted: set[str] = set()  # ids whose response headers arrived
    lock = threading.Lock()
    stop = threading.Event()

    def worker(index: int) -> None:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0,
                               timeout=30)
        with client:
            while not stop.is_set():
                try:
                    if index % 2:
                        with client.chat.completions.with_streaming_response.create(
                                model="smol", messages=[{"role": "user", "content": "Count"}],
                                max_tokens=24, stream=True, temperature=0) as response:
                            rid = response.headers["x-request-id"]
                            with lock:
                                admitted.add(rid)
                            for _ in response.iter_lines():
                                pass
                        with lock:
                            completed[rid] = "stream"
                    else:
                        raw = client.chat.completions.with_raw_response.create(
                            model="smol", messages=[{"role": "user", "content": "Hi"}],
                            max_tokens=8, temperature=0)
                        raw.parse()
                        with lock:
                            completed[raw.headers["x-request-id"]] = "plain"
                except Exception:  # the SDK's or httpx's error as the connection drops
                    return  # the server died under us: this request never completed

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(completed) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.stop()
    with lock:
        done = dict(completed)
        seen = set(admitted)
    assert len(done) >= 12, server.log()

    after_kill = _rows(server.ledger_path)  # opens cleanly straight after the kill
    for rid in done:
        row = after_kill[rid]
        assert (row.status, row.http_status, row.price) == ("ok", 200, 0.01), row
        assert row.completion_tokens > 0 and row.latency_ms > 0
    in_flight = {rid for rid, row in after_kill.items() if row.status == "started"}
    assert seen - set(done) <= in_flight  # headers arrived, body did not: a "started" row

    restarted = start_server(config, port)  # ready means the start-up sweep has run
    restarted.stop()
    after_restart = _rows(server.ledger_path)
    assert set(after_restart) == set(after_kill)
    assert {rid for rid, row in after_restart.items() if row.status == "interrupted"} \
        == in_flight
    assert all(after_restart[rid].price == 0 for rid in in_flight)
    assert not [row for row in after_restart.values() if row.status == "started"]
    assert "marked interrupted" in restarted.log()
