"""SIGTERM on the real server: the running stream finishes, new work is refused, exit 0;
requests that outlive the grace period are cut with a proper ending (an error frame and
[DONE] for a stream, a 503 for a plain request), ledgered as errors, and nothing is logged as
an unhandled exception.

Also the JSON log format as the real process writes it (uvicorn's own lines included), slot
use in /metrics from the decode thread, and TLS with a self-signed certificate.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sqlite3
import ssl
import subprocess
import time
from contextlib import closing
from pathlib import Path

import httpx2
import pytest

from devtools.server_harness import (
    APPLIANCE,
    SMOLLM2,
    RunningServer,
    create_key,
    free_port,
    start_server,
    write_config,
)

pytestmark = pytest.mark.real

# SmolLM2's <|endoftext|> and <|im_end|>: banned, so the stream runs to max_tokens and is
# surely still running when the signal arrives.
NEVER_STOP = {"0": -100, "2": -100}


def test_sigterm_drains_the_running_stream_then_exits_0(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, f'[[models]]\nid = "smol"\npath = "{SMOLLM2}"\n'
                          'price_per_request = 0.01\nparallel = 2\ncontext_length = 1024\n'
                          'threads = 1\n')
    text = config.read_text().replace(
        "[server]\n", '[server]\nshutdown_grace_s = 120\nlog_format = "json"\n', 1)
    config.write_text(text)
    secret = create_key(config, "drain")
    admin = subprocess.run([*APPLIANCE, "keys", "create", "--name", "ops", "--admin",
                            "--config", str(config)], capture_output=True, text=True,
                           check=True, cwd=config.parent).stdout.strip()
    server = start_server(config, port)
    auth = {"Authorization": f"Bearer {secret}"}
    body = {"model": "smol", "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 120, "temperature": 0, "stream": True, "logit_bias": NEVER_STOP}
    try:
        with httpx2.Client(base_url=server.base_url, timeout=150) as http, \
                http.stream("POST", "/v1/chat/completions", json=body, headers=auth) as stream:
            assert stream.status_code == 200
            request_id = stream.headers["x-request-id"]
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert "chat.completion.chunk" in first
            # The decode thread's step reports reach /metrics through the loader (the first
            # chunks may leave before the step that made them reports: ask a few times).
            for _ in range(40):
                metrics = http.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
                if 'appliance_engine_slots_busy{model="smol"} 1.0' in metrics.text:
                    break
                time.sleep(0.05)
            assert 'appliance_engine_slots_busy{model="smol"} 1.0' in metrics.text
            server.process.send_signal(signal.SIGTERM)

            # A fresh connection while the stream drains: refused with 503 and retry-after.
            with httpx2.Client(base_url=server.base_url, timeout=10) as other:
                refused = other.post("/v1/chat/completions", headers=auth,
                                     json={**body, "stream": False, "max_tokens": 4})
                ready = other.get("/ready")
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["code"] == "shutting_down"
            assert ready.status_code == 503

            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        finish = [json.loads(line[6:]) for line in rest[:-1]]
        assert any(chunk["choices"] and chunk["choices"][0]["finish_reason"] == "length"
                   for chunk in finish)

        assert server.process.wait(timeout=150) == 0, server.log()
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{server.base_url}/health", timeout=2)
        with closing(sqlite3.connect(server.ledger_path)) as conn:
            status, http_status = conn.execute(
                "SELECT status, http_status FROM requests WHERE request_id = ?",
                (request_id,)).fetchone()
        assert (status, http_status) == ("ok", 200)

        log_lines = [json.loads(line) for line in server.log().splitlines()
                     if line.startswith("{")]
        assert any(line["logger"].startswith("uvicorn") for line in log_lines)
        access = [line for line in log_lines
                  if line["logger"] == "appliance.access" and line["request_id"] == request_id]
        assert len(access) == 1 and access[0]["status"] == 200
        assert secret not in server.log() and admin not in server.log()
    finally:
        server.stop()


def started_rows(server: RunningServer) -> int:
    with closing(sqlite3.connect(server.ledger_path)) as conn:
        (count,) = conn.execute("SELECT count(*) FROM requests WHERE status = 'started'"
                                ).fetchone()
    return int(count)


def test_requests_outliving_the_grace_period_are_cut_cleanly_and_ledgered(
        tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, f'[[models]]\nid = "smol"\npath = "{SMOLLM2}"\n'
                          'parallel = 2\ncontext_length = 4096\nthreads = 1\n')
    config.write_text(config.read_text().replace("[server]\n", "[server]\nshutdown_grace_s = 1\n"))
    secret = create_key(config, "late")
    server = start_server(config, port)
    body = {"model": "smol", "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 4000, "temperature": 0, "logit_bias": NEVER_STOP}
    headers = {"Authorization": f"Bearer {secret}"}
    try:
        started = time.monotonic()
        with httpx2.Client(base_url=server.base_url, timeout=60) as http, \
                concurrent.futures.ThreadPoolExecutor(1) as pool, \
                http.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                            headers=headers) as stream:
            plain = pool.submit(http.post, "/v1/chat/completions", json=body, headers=headers)
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            while started_rows(server) < 2:  # both are admitted before the signal
                time.sleep(0.05)
            server.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data: ")]
            cut = plain.result()
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error"
        assert cut.status_code == 503 and cut.json()["error"]["code"] == "shutting_down"
        assert server.process.wait(timeout=30) == 0, server.log()
        assert time.monotonic() - started < 20
        with closing(sqlite3.connect(server.ledger_path)) as conn:
            rows = conn.execute("SELECT status, http_status, error_code, price FROM requests "
                                "ORDER BY http_status").fetchall()
        assert rows == [("error", 200, "shutting_down", 0.0), ("error", 503, "shutting_down", 0.0)]
        log = server.log()
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log
        assert "cutting them" in log
    finally:
        server.stop()


def test_tls_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    port = free_port()
    config = write_config(tmp_path, port, f'[[models]]\nid = "smol"\npath = "{SMOLLM2}"\n'
                          'parallel = 1\ncontext_length = 512\nthreads = 1\n')
    config.write_text(config.read_text().replace(
        "[server]\n", '[server]\ntls_certfile = "cert.pem"\ntls_keyfile = "key.pem"\n'))
    trust = ssl.create_default_context(cafile=tmp_path / "cert.pem")
    log_file = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)], cwd=tmp_path,
                               stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    server = RunningServer(process, f"https://127.0.0.1:{port}", config, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                httpx2.get(f"{server.base_url}/ready", verify=trust,
                           timeout=1).raise_for_status()
                break
            except httpx2.HTTPError:
                time.sleep(0.2)
        answer = httpx2.get(f"https://127.0.0.1:{port}/health",
                            verify=trust, timeout=10)
        assert answer.status_code == 200
        with pytest.raises(httpx2.HTTPError):  # plain HTTP on the TLS port is no service
            httpx2.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        server.stop()
    assert server.process.returncode == 0
