"""The HTTP edge against the real server: floods without a key, trickling connections, the
connection cap, spoofed X-Forwarded-For, forged log lines, a Host header naming another host,
revocation, a past expiry, nosniff.

Attacks that would shut an address out come from their own loopback address (127.0.0.2 and
up; Linux routes all of 127/8 to lo), so the tier's other requests, from 127.0.0.1, are not
refused with them. Attacks that need their own settings (a small connection cap, 2 s
deadlines, a trusted proxy) run on a second server of this module (SmolLM2 only).

Ledger bounds count the WAL: each committed row adds about 28 KB of pages there (the table
and its six indexes) until SQLite's checkpoint recycles them; the harness's normal chat after
each attack alone is two commits.
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, suppress
from pathlib import Path

import httpx2
import pytest

from devtools.server_harness import (
    APPLIANCE,
    SMOLLM2,
    create_key,
    free_port,
    start_server,
    write_config,
)
from tests.hostile.conftest import GROWTH_FILE_KEY
from tests.hostile.harness import Bounds, HostileServer

CHAT = {"model": "smollm2-135m-instruct", "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hi"}]}
FORGED = "2026-01-01 00:00:00,000 INFO appliance.access [-] GET /forged 200 1.0ms"


def client_from(base_url: str, address: str) -> httpx2.Client:
    """A client whose connections leave from ``address`` (a loopback alias)."""
    return httpx2.Client(base_url=base_url, timeout=30,
                         transport=httpx2.HTTPTransport(local_address=address))


def admin_key(config: Path, name: str) -> str:
    return subprocess.run([*APPLIANCE, "keys", "create", "--name", name, "--admin", "--config",
                           str(config)], capture_output=True, text=True, check=True,
                          cwd=config.parent).stdout.strip()


def ledger_count(server: HostileServer, where: str = "1") -> int:
    with closing(sqlite3.connect(server.server.ledger_path)) as conn:
        (count,) = conn.execute(f"SELECT count(*) FROM requests WHERE {where}").fetchone()
    return int(count)


def _connect(port: int, address: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(address, 0))
    return sock


def _read_all(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(wait)
    received = b""
    with suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _is_closed(sock: socket.socket, wait: float) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- keyless floods ----------------------------------------------------------------------------

def test_keyless_floods_are_shut_out_and_grow_ledger_and_log_by_a_bound(
        hostile: HostileServer) -> None:
    rows_before = ledger_count(hostile)
    # 2,500 requests, 40 ledger rows and access lines of about 370 bytes. The log also holds
    # the probe's /health lines (about 110 bytes each, ten a second); the ledger files, the
    # WAL's pages (about 28 KB per committed row: the table and its six indexes), which
    # SQLite's checkpoint recycles.
    with hostile.attack("2,000 keyless requests, 16 KB paths",
                        Bounds(peak_rss_mib=40, log_kib=48, ledger_kib=1400)), \
            client_from(hostile.base_url, "127.0.0.2") as http:
        answers = [http.get(f"/v1/{i:05d}" + "a" * 16_000) for i in range(2000)]
        # Under the URL bound, keyless: 401s until the allowance is spent.
        with client_from(hostile.base_url, "127.0.0.9") as other:
            short = [other.get(f"/v1/{i:05d}" + "b" * 8000) for i in range(500)]
    statuses = [a.status_code for a in answers]
    assert statuses[:20] == [400] * 20 and set(statuses[20:]) == {429}, statuses[:30]
    first = answers[0].json()["error"]
    assert first["param"] == "url" and "8192 bytes" in first["message"]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert [a.status_code for a in short[:21]] == [401] * 20 + [429]
    assert {a.status_code for a in short[21:]} == {429}
    # 20 rows per address (the 400s and 401s), none for the 2,460 429s.
    assert ledger_count(hostile) - rows_before <= 40 + 1  # + the harness's normal chat
    with closing(sqlite3.connect(hostile.server.ledger_path)) as conn:
        longest = conn.execute("SELECT max(length(endpoint)) FROM requests").fetchone()[0]
    assert longest <= 300


def test_heads_over_16_kib_are_refused_whole_or_trickled_and_logged_a_few_times(
        hostile: HostileServer) -> None:
    port = int(hostile.base_url.rsplit(":", 1)[1])
    invalid_before = hostile.server.log().count("Invalid HTTP request received.")
    with hostile.attack("300 heads of 20 KB, and 50 trickled past 16 KiB",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=800)):
        # Whole in one read, h11 parses it: the gate's 400 (counted), then 429s.
        with client_from(hostile.base_url, "127.0.0.7") as http:
            whole = [http.get("/v1/models", headers={"x-big": "h" * 20_000})
                     for _ in range(300)]
        # Arriving in pieces, h11 gives up once 16 KiB are buffered unfinished: uvicorn's 400.
        trickled = []
        for _ in range(50):
            with closing(_connect(port, "127.0.0.13")) as sock:
                sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 17_000)
                trickled.append(_read_all(sock, 5.0))
    assert [a.status_code for a in whole[:21]] == [400] * 20 + [429]
    assert whole[0].json()["error"]["param"] == "headers"
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in trickled), trickled[0][:200]
    # uvicorn's warning, once per request, is throttled to a few lines a minute.
    assert hostile.server.log().count("Invalid HTTP request received.") - invalid_before <= 6


# -- X-Forwarded-For is not trusted by default ---------------------------------------------------

def test_a_spoofed_x_forwarded_for_neither_dodges_nor_aims_the_limiter(
        hostile: HostileServer) -> None:
    with hostile.attack("25 wrong keys, each with a fresh X-Forwarded-For",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=800)):
        with client_from(hostile.base_url, "127.0.0.3") as http:
            statuses = [http.get("/v1/models", headers={
                "Authorization": "Bearer sk-app-guess-000000000000",
                "X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(25)]
        # Naming the shut-out address from elsewhere changes nothing for either.
        with client_from(hostile.base_url, "127.0.0.4") as other:
            named = other.get("/v1/models", headers={
                "Authorization": f"Bearer {hostile.key}", "X-Forwarded-For": "127.0.0.3"})
    assert statuses == [401] * 20 + [429] * 5
    assert named.status_code == 200


# -- log lines ---------------------------------------------------------------------------------

def test_control_characters_cannot_forge_a_log_line(hostile: HostileServer) -> None:
    path = "/v1/models/x%0A" + FORGED.replace(" ", "%20")
    with hostile.attack("a path and a field name carrying a forged log line",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=260)), \
            hostile.http() as http:
        assert http.get(path).status_code == 404
        answer = http.post("/v1/chat/completions", json={**CHAT, f"x\n{FORGED}": 1})
        assert answer.status_code == 200
    log = hostile.server.log()
    assert not [line for line in log.splitlines() if line.startswith("2026-01-01")]
    # Once in the access line of the path, once in the unknown-field line (which keeps 64
    # characters of a field name).
    assert log.count("\\x0a" + FORGED[:40]) >= 2, log[-3000:]


# -- image URLs and their files ------------------------------------------------------------------

def test_image_urls_ignore_the_host_header_and_files_say_nosniff(hostile: HostileServer) -> None:
    with hostile.attack("an image URL asked for with Host: evil.example",
                        Bounds(peak_rss_mib=200, log_kib=16, ledger_kib=200)), \
            hostile.http() as http:
        answer = http.post("/v1/images/generations", headers={"Host": "evil.example"}, json={
            "model": "tiny-random-sd", "prompt": "a red square", "size": "64x64",
            "response_format": "url"})
        assert answer.status_code == 200, answer.text
        url = answer.json()["data"][0]["url"]
        image = httpx2.get(url, timeout=30)
    assert url.startswith(hostile.base_url + "/files/images/"), url
    assert "evil" not in url
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"


# -- keys: revocation and expiry -----------------------------------------------------------------

def test_revocation_takes_effect_at_the_next_request(hostile: HostileServer) -> None:
    config = hostile.server.config
    admin = {"Authorization": f"Bearer {admin_key(config, 'edge-ops')}"}
    # The refusals come from an address of their own: 401s count against it.
    with hostile.attack("revoke through the admin API and the CLI",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=450)), \
            client_from(hostile.base_url, "127.0.0.8") as http:
        created = http.post("/v1/organization/api_keys", headers=admin,
                            json={"name": "edge-bob"}).json()
        bob = {"Authorization": f"Bearer {created['value']}"}
        assert http.get("/v1/models", headers=bob).status_code == 200
        assert http.delete(f"/v1/organization/api_keys/{created['id']}",
                           headers=admin).status_code == 200
        refused = http.get("/v1/models", headers=bob)
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]

        carol = {"Authorization": f"Bearer {create_key(config, 'edge-carol')}"}
        assert http.get("/v1/models", headers=carol).status_code == 200
        subprocess.run([*APPLIANCE, "keys", "revoke", "edge-carol", "--config", str(config)],
                       capture_output=True, check=True, cwd=config.parent)
        assert http.get("/v1/models", headers=carol).status_code == 401


def test_an_expiry_in_the_past_is_a_400(hostile: HostileServer) -> None:
    admin = {"Authorization": f"Bearer {admin_key(hostile.server.config, 'edge-ops2')}"}
    with hostile.attack("keys created and updated with a past expires_at",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=320)), \
            httpx2.Client(base_url=hostile.base_url, headers=admin, timeout=30) as http:
        past = int(time.time()) - 10
        created = http.post("/v1/organization/api_keys",
                            json={"name": "edge-late", "expires_at": past})
        key_id = http.get("/v1/organization/api_keys").json()["data"][0]["id"]
        updated = http.post(f"/v1/organization/api_keys/{key_id}", json={"expires_at": past})
    for answer in (created, updated):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "expires_at"


# -- connections: a server with a small cap, short deadlines and a trusted proxy -----------------

EDGE_SERVER = """max_connections = 320
header_timeout_s = 2
body_timeout_s = 2
trusted_proxies = ["127.0.0.5"]
"""


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    folder = tmp_path_factory.mktemp("edge-server")
    # The tier's growth table shows these attacks too (when the tier's server ran first).
    growth_file = request.config.stash.get(GROWTH_FILE_KEY, folder / "growth.jsonl")
    port = free_port()
    config = write_config(folder, port, f'[[models]]\nid = "smollm2-135m-instruct"\n'
                          f'path = "{SMOLLM2}"\ncontext_length = 1024\nparallel = 2\n'
                          'threads = 1\n')
    config.write_text(config.read_text().replace("[server]\n", "[server]\n" + EDGE_SERVER, 1))
    key = create_key(config, "edge")
    server = start_server(config, port)
    served = HostileServer(server, key, "smollm2-135m-instruct", growth_file)
    try:
        yield served
    finally:
        served.close()


def test_300_trickling_connections_are_closed_while_a_normal_request_is_served(
        edge: HostileServer) -> None:
    port = int(edge.base_url.rsplit(":", 1)[1])
    with edge.attack("300 connections trickling their headers",
                     Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=200)):
        socks = [_connect(port, "127.0.0.10") for _ in range(300)]
        opened = time.monotonic()
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        served: list[int] = []
        normal = threading.Thread(target=lambda: served.append(
            httpx2.post(edge.base_url + "/v1/chat/completions", json=CHAT, timeout=60,
                        headers={"Authorization": f"Bearer {edge.key}"}).status_code))
        normal.start()
        while time.monotonic() - opened < 1.5:  # a header line every 0.3 s: still too slow
            for sock in socks:
                with suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.3)
        normal.join(timeout=60)
        closed = [_is_closed(sock, max(0.1, opened + 4.0 - time.monotonic())) for sock in socks]
        elapsed = time.monotonic() - opened
        for sock in socks:
            sock.close()
    assert served == [200]
    assert all(closed), f"{closed.count(False)} of 300 still open"
    assert elapsed < 4.5


def test_past_the_connection_cap_new_connections_get_a_503_to_retry(edge: HostileServer) -> None:
    port = int(edge.base_url.rsplit(":", 1)[1])
    with edge.attack("330 idle connections against a cap of 320",
                     Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=200)):
        idle = [_connect(port, "127.0.0.11") for _ in range(330)]
        time.sleep(0.3)
        with client_from(edge.base_url, "127.0.0.12") as http:
            refused = http.get("/v1/models", headers={"Authorization": f"Bearer {edge.key}"})
        assert all(_is_closed(sock, 4.0) for sock in idle)  # the header deadline
        for sock in idle:
            sock.close()
        time.sleep(0.2)
        with client_from(edge.base_url, "127.0.0.12") as http:
            again = http.get("/v1/models", headers={"Authorization": f"Bearer {edge.key}"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "overloaded"
    assert refused.headers["retry-after"] == "2"
    assert again.status_code == 200


def test_a_stalled_body_is_cut_and_ledgered_as_cancelled(edge: HostileServer) -> None:
    port = int(edge.base_url.rsplit(":", 1)[1])
    cancelled = ledger_count(edge, "status = 'cancelled'")
    with edge.attack("a body that stops after 100 of 1,000 bytes",
                     Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=200)):
        sock = _connect(port)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     + f"Authorization: Bearer {edge.key}\r\n".encode()
                     + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     + b'{"model": "smollm2-135m-instruct", ' + b" " * 65)
        started = time.monotonic()
        assert _is_closed(sock, 5.0)
        assert time.monotonic() - started < 4.0
        sock.close()
    time.sleep(0.5)
    assert ledger_count(edge, "status = 'cancelled'") == cancelled + 1


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(edge: HostileServer) -> None:
    wrong = "Bearer sk-app-guess-000000000000"
    with edge.attack("wrong keys through a trusted proxy and around it",
                     Bounds(peak_rss_mib=40, log_kib=24, ledger_kib=1400)):
        with client_from(edge.base_url, "127.0.0.5") as proxy:
            through = [proxy.get("/v1/models", headers={
                "Authorization": wrong, "X-Forwarded-For": "10.1.1.1"}).status_code
                for _ in range(21)]
            # The proxy's other clients are not shut out with the one that guessed.
            other_client = proxy.get("/v1/models", headers={
                "Authorization": f"Bearer {edge.key}", "X-Forwarded-For": "10.2.2.2"})
        with client_from(edge.base_url, "127.0.0.6") as direct:
            around = [direct.get("/v1/models", headers={
                "Authorization": wrong, "X-Forwarded-For": f"10.3.3.{i}"}).status_code
                for i in range(21)]
            claimed = direct.get("/v1/models", headers={
                "Authorization": f"Bearer {edge.key}", "X-Forwarded-For": "10.4.4.4"})
    assert through == [401] * 20 + [429]
    assert other_client.status_code == 200
    assert around == [401] * 20 + [429]
    assert claimed.status_code == 429
