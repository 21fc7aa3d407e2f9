"""The HTTP edge over fakes: keyless requests count against their address, what the ledger
and the log keep of a path is bounded, the URL bound, log lines nobody can forge, revocation
and expiry through the admin API, image URLs without the Host header, nosniff, the [server]
keys of the edge; and the connection protocol itself (cap, header and body deadlines, TLS) on
a real uvicorn in this process with a trivial app.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.api.app import create_app
from appliance.api.image_files import ImageFiles
from appliance.api.middleware.connections import EdgeBounds, edge_protocol
from appliance.api.middleware.failed_auth import FailedAuthLimiter
from appliance.api.middleware.request_context import RECORDED_PATH_CHARS
from appliance.api.services import Services
from appliance.api.telemetry.logs import (
    MAX_MESSAGE_CHARS,
    Throttle,
    ThrottleFilter,
    log_handler,
)
from appliance.config import load_config
from appliance.engines.base import CHAT, IMAGE, Listing
from appliance.engines.catalog import Catalog
from appliance.errors import ConfigError
from appliance.ledger import KeyStore
from tests.fakes import FakeChatEngine, FakeImageEngine, ListLedger

pytestmark = pytest.mark.anyio
BASE = "http://appliance.test"


@dataclass
class Edge:
    ledger: ListLedger
    keys: KeyStore
    http: httpx2.AsyncClient
    user: str
    admin: str
    clock: list[float]


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    clock = [1000.0]
    ledger = ListLedger()
    with KeyStore(tmp_path / "keys.sqlite") as keys:
        user = keys.create("user")[1]
        admin = keys.create("ops", admin=True)[1]
        services = Services(
            catalog=Catalog([Listing(CHAT, FakeChatEngine()),
                             Listing(IMAGE, FakeImageEngine())]),
            ledger=ledger, keys=keys, key_admin=keys,
            image_files=ImageFiles(tmp_path / "images"),
            auth_failures=FailedAuthLimiter(max_failures=3, window_s=60.0,
                                            clock=lambda: clock[0]))
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                      base_url=BASE) as http:
            yield Edge(ledger, keys, http, user, admin, clock)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler("text", stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# -- keyless requests, the URL bound, what is recorded of a path ------------------------------

async def test_keyless_requests_count_like_wrong_keys_then_a_quiet_429(
        edge: Edge, text_log: io.StringIO) -> None:
    path = "/v1/" + "a" * 8000  # just under the URL bound
    for _ in range(3):
        assert (await edge.http.get(path)).status_code == 401
    refused = await edge.http.get(path)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    # Right key or not, and for every route but the probes.
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 429
    assert (await edge.http.get("/health")).status_code == 200
    for _ in range(50):
        await edge.http.get(path)
    # Three 401 rows, each with a bounded path; the 429s are neither ledgered nor logged.
    assert [row.http_status for row in edge.ledger.rows] == [401, 401, 401]
    assert all(len(row.endpoint) <= RECORDED_PATH_CHARS + 20 for row in edge.ledger.rows)
    assert edge.ledger.rows[0].endpoint.startswith("/v1/aaaa")
    access = [line for line in text_log.getvalue().splitlines() if "appliance.access" in line]
    assert len(access) == 3 + 1  # the 401s and /health
    assert max(len(line) for line in access) < RECORDED_PATH_CHARS + 200
    shut_out = [line for line in text_log.getvalue().splitlines() if "appliance.auth" in line]
    assert len(shut_out) == 1 and "3 failed authentications" in shut_out[0]
    edge.clock[0] += 61
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 200


async def test_revoked_and_malformed_keys_count_too(edge: Edge) -> None:
    revoked = edge.keys.create("gone")[1]
    edge.keys.revoke("gone")
    assert (await edge.http.get("/v1/models", headers=bearer(revoked))).status_code == 401
    assert (await edge.http.get("/v1/models", headers={"Authorization": "Basic x"})
            ).status_code == 401
    assert (await edge.http.get("/metrics")).status_code == 401
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 429


async def test_a_url_over_the_bound_is_a_400_before_auth_and_counts(edge: Edge) -> None:
    answer = await edge.http.get("/v1/models?q=" + "x" * 9000)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "url" and error["code"] == "url_too_long"
    assert "8192 bytes" in error["message"]
    assert (await edge.http.get("/health?" + "x" * 9000)).status_code == 400
    assert (await edge.http.get("/files/images/" + "x" * 9000)).status_code == 400
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 429


async def test_a_head_over_the_bound_is_a_400_naming_headers(edge: Edge) -> None:
    many = {f"x-h{i}": "v" * 100 for i in range(200)}  # about 21 KB
    answer = await edge.http.get("/v1/models", headers={**bearer(edge.user), **many})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "headers" and "16384 bytes" in error["message"]
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 200


async def test_nosniff_on_every_response(edge: Edge) -> None:
    for path in ("/health", "/v1/models", "/files/images/nothing.png"):
        answer = await edge.http.get(path, headers=bearer(edge.user))
        assert answer.headers["x-content-type-options"] == "nosniff", path


# -- revocation and expiry through the admin API ----------------------------------------------

async def test_a_revoked_key_is_refused_from_the_next_request(edge: Edge) -> None:
    created = (await edge.http.post("/v1/organization/api_keys", json={"name": "bob"},
                                    headers=bearer(edge.admin))).json()
    bob = bearer(created["value"])
    assert (await edge.http.get("/v1/models", headers=bob)).status_code == 200
    deleted = await edge.http.delete(f"/v1/organization/api_keys/{created['id']}",
                                     headers=bearer(edge.admin))
    assert deleted.status_code == 200
    refused = await edge.http.get("/v1/models", headers=bob)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    # Revoked by another process (the CLI) through the key file: the same.
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 200
    with KeyStore(edge.keys.path) as other_process:
        other_process.revoke("user")
    assert (await edge.http.get("/v1/models", headers=bearer(edge.user))).status_code == 401


@pytest.mark.parametrize("expires_at", [0, 1_000_000_000, "now"])
async def test_an_expiry_in_the_past_is_a_400_naming_expires_at(edge: Edge,
                                                                expires_at: int | str) -> None:
    when = int(time.time()) if expires_at == "now" else expires_at
    created = await edge.http.post("/v1/organization/api_keys", headers=bearer(edge.admin),
                                   json={"name": "late", "expires_at": when})
    assert created.status_code == 400, created.text
    assert created.json()["error"]["param"] == "expires_at"
    key_id = edge.keys.get("user").id
    updated = await edge.http.post(f"/v1/organization/api_keys/{key_id}",
                                   headers=bearer(edge.admin), json={"expires_at": when})
    assert updated.status_code == 400 and updated.json()["error"]["param"] == "expires_at"
    future = int(time.time()) + 3600
    assert (await edge.http.post(f"/v1/organization/api_keys/{key_id}", headers=bearer(
        edge.admin), json={"expires_at": future})).json()["expires_at"] == future


# -- image URLs --------------------------------------------------------------------------------

async def test_image_urls_never_come_from_the_host_header(edge: Edge) -> None:
    answer = await edge.http.post(
        "/v1/images/generations", headers={**bearer(edge.user), "Host": "evil.example"},
        json={"model": "fake-image", "prompt": "a cat", "response_format": "url"})
    assert answer.status_code == 200, answer.text
    url = answer.json()["data"][0]["url"]
    assert url.startswith(f"{BASE}/files/images/"), url


def test_image_urls_start_with_the_public_url_else_the_local_socket(tmp_path: Path) -> None:
    files = ImageFiles(tmp_path, public_url="https://ai.example.com/appliance/")
    scope = {"scheme": "http", "server": ("10.0.0.2", 8000)}
    assert files.url(scope, "/files/images/a.png") == \
        "https://ai.example.com/appliance/files/images/a.png"
    local = ImageFiles(tmp_path)
    assert local.url(scope, "/f") == "http://10.0.0.2:8000/f"
    assert local.url({"scheme": "https", "server": ("::1", 443)}, "/f") == "https://[::1]/f"


# -- log lines ---------------------------------------------------------------------------------

FORGERY = "x\n2026-01-01 00:00:00,000 INFO appliance.access [-] GET /forged 200 1.0ms"


def test_the_text_format_escapes_control_characters_and_indents_tracebacks() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test_http_edges.text")
    logger.addHandler(log_handler("text", stream))
    logger.propagate = False
    try:
        logger.warning("ignoring unknown request fields: %s", FORGERY + "\r\x1b[2J\u2028")
        try:
            raise ValueError(FORGERY)
        except ValueError:
            logger.exception("failed on %s", "/v1/x\ny")
        logger.warning("%s", "z" * (MAX_MESSAGE_CHARS * 3))
    finally:
        logger.handlers.clear()
    lines = stream.getvalue().splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert len(records) == 3, lines
    assert all(line[:4].isdigit() and " test_http_edges.text " in line for line in records)
    assert "\\x0a2026-01-01" in records[0] and "\\x1b[2J" in records[0]
    assert "\\u2028" in records[0]
    assert "/v1/x\\x0ay" in records[1]
    assert any("ValueError: x" in line for line in lines if line.startswith("    "))
    assert len(records[2]) < MAX_MESSAGE_CHARS + 200


def test_the_json_format_stays_one_valid_object_per_line() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test_http_edges.json")
    logger.addHandler(log_handler("json", stream))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.warning("fields: %s", FORGERY + "\u2028\x00")
        logger.info("access", extra={"path": "/v1/\n" + "p" * 50})
    finally:
        logger.handlers.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"].startswith("fields: x\n2026")
    assert second["path"].startswith("/v1/\n")


def test_a_throttle_lets_a_burst_through_then_counts() -> None:
    clock = [0.0]
    throttle = Throttle(burst=2, window_s=60, clock=lambda: clock[0])
    assert [throttle.allow() for _ in range(5)] == [(True, 0), (True, 0), (False, 0),
                                                    (False, 0), (False, 0)]
    clock[0] = 61
    assert throttle.allow() == (True, 3)

    stream = io.StringIO()
    logger = logging.getLogger("test_http_edges.throttled")
    logger.addHandler(log_handler("text", stream))
    logger.addFilter(ThrottleFilter(burst=2, window_s=60, clock=lambda: clock[0]))
    logger.propagate = False
    try:
        for _ in range(100):
            logger.warning("Invalid HTTP request received.")
        logger.warning("another message")
        clock[0] = 200
        logger.warning("Invalid HTTP request received.")
    finally:
        logger.handlers.clear()
        logger.filters.clear()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1].endswith("Invalid HTTP request received. (98 more like this were not "
                              "logged)")


# -- [server] keys of the edge ----------------------------------------------------------------

def _config(tmp_path: Path, server: str) -> Path:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    path = tmp_path / "models.toml"
    path.write_text(f'[server]\n{server}\n[[models]]\nid = "m"\npath = "{model}"\n')
    return path


def test_edge_keys_in_server(tmp_path: Path) -> None:
    server = load_config(_config(tmp_path, "")).server
    assert (server.max_connections, server.header_timeout_s, server.body_timeout_s,
            server.public_url, server.trusted_proxies) == (512, 10.0, 30.0, None, ())
    server = load_config(_config(tmp_path, 'max_connections = 64\nheader_timeout_s = 2\n'
                                 'body_timeout_s = 5.5\npublic_url = "https://ai.example/"\n'
                                 'trusted_proxies = ["10.0.0.5", "fd00::/8"]')).server
    assert (server.max_connections, server.header_timeout_s, server.body_timeout_s,
            server.public_url, server.trusted_proxies) == (
        64, 2.0, 5.5, "https://ai.example", ("10.0.0.5", "fd00::/8"))


@pytest.mark.parametrize(("line", "key"), [
    ('public_url = "ftp://x"', "public_url"),
    ('public_url = "https://x/?a=1"', "public_url"),
    ('trusted_proxies = ["*"]', "trusted_proxies"),
    ('trusted_proxies = ["10.0.0.300"]', "trusted_proxies"),
    ("header_timeout_s = 0", "header_timeout_s"),
    ("max_connections = 0", "max_connections"),
])
def test_bad_edge_keys_are_errors_naming_them(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"server.{key}"):
        load_config(_config(tmp_path, line))


# -- the connection protocol, on a real uvicorn ------------------------------------------------

async def _hello(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _upload(request: Request) -> Response:
    try:
        body = await request.body()
    except ClientDisconnect:
        request.app.state.gone.set()
        raise
    return JSONResponse({"bytes": len(body)})


@dataclass
class Running:
    port: int
    gone: threading.Event
    server: uvicorn.Server

    def connect(self, tls: ssl.SSLContext | None = None) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return tls.wrap_socket(sock, server_hostname="localhost") if tls else sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serving(limits: EdgeBounds, tls_dir: Path | None = None) -> Iterator[Running]:
    """uvicorn with the edge protocol in a thread, serving GET /hello and POST /upload."""
    app = Starlette(routes=[Route("/hello", _hello), Route("/health", _hello),
                            Route("/upload", _upload, methods=["POST"])])
    gone = threading.Event()
    app.state.gone = gone
    port = _free_port()
    tls: dict[str, Any] = {}
    if tls_dir is not None:
        tls = {"ssl_certfile": str(tls_dir / "cert.pem"), "ssl_keyfile": str(tls_dir / "key.pem")}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=edge_protocol(limits),
                            lifespan="off", log_config=None, access_log=False, **tls)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    try:
        yield Running(port, gone, server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Reads until the server closes; fails if it has not after ``seconds``."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    except TimeoutError:
        pytest.fail(f"still open after {seconds}s (got {received[:200]!r})")
    return received


def _get(running: Running) -> httpx2.Response:
    return httpx2.get(f"http://127.0.0.1:{running.port}/hello", timeout=5)


FAST = EdgeBounds(max_connections=8, header_timeout_s=0.5, body_timeout_s=0.5)


def test_headers_that_trickle_are_cut_at_the_deadline_while_others_are_served() -> None:
    with serving(FAST) as running:
        sock = running.connect()
        started = time.monotonic()
        sock.sendall(b"GET /hello HTTP/1.1\r\n")
        for _ in range(3):  # bytes arriving do not extend the deadline
            time.sleep(0.1)
            sock.sendall(b"X-a: b\r\n")
            assert _get(running).status_code == 200
        assert _closed_within(sock, 2.0) == b""
        assert 0.4 < time.monotonic() - started < 1.5
        sock.close()


def test_the_deadline_holds_for_every_request_of_a_kept_alive_connection() -> None:
    with serving(FAST) as running:
        sock = running.connect()
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"ok":true}'):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK")
        time.sleep(0.2)
        sock.sendall(b"GET /hello HTTP/1.1\r\n")  # the next request never finishes
        started = time.monotonic()
        assert _closed_within(sock, 2.0) == b""
        assert time.monotonic() - started < 1.0
        sock.close()


def test_a_stalled_body_is_cut_and_the_app_sees_the_client_gone() -> None:
    with serving(FAST) as running:
        sock = running.connect()
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(4):  # a body that keeps moving is not cut
            time.sleep(0.3)
            sock.sendall(b"0123456789")
        assert _closed_within(sock, 2.0) == b""
        assert running.gone.wait(2)
        sock.close()
        answer = httpx2.post(f"http://127.0.0.1:{running.port}/upload", content=b"x" * 1000)
        assert answer.json() == {"bytes": 1000}


def test_past_the_cap_a_503_with_retry_after_and_past_twice_the_cap_a_close() -> None:
    with serving(EdgeBounds(max_connections=3, header_timeout_s=1.0)) as running:
        idle = [running.connect() for _ in range(3)]
        time.sleep(0.1)
        over = running.connect()
        over.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _closed_within(over, 2.0)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert b"retry-after: 2" in head and b"connection: close" in head
        assert json.loads(body)["error"]["code"] == "overloaded"
        probe = running.connect()  # /health is answered still, then the connection closed
        probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _closed_within(probe, 2.0).startswith(b"HTTP/1.1 200")
        probe.close()
        more = [running.connect() for _ in range(4)]  # 7 open: past twice the cap
        time.sleep(0.1)
        assert _closed_within(more[-1], 0.5) == b""
        for sock in [*idle, over, *more]:
            sock.close()
        time.sleep(0.1)
        assert _get(running).status_code == 200


def test_tls_connections_get_the_same_deadline(tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    with serving(FAST, tls_dir=tmp_path) as running:
        answer = httpx2.get(f"https://localhost:{running.port}/hello", verify=trust)
        assert answer.json() == {"ok": True}
        sock = running.connect(trust)
        sock.sendall(b"GET /hello HTTP/1.1\r\n")
        assert _closed_within(sock, 2.0) == b""
        sock.close()
