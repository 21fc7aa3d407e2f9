"""Remote image URLs (api/image_fetch.py) against a local HTTP server: only allowed hosts are
connected to, redirects off the allow-list are refused, oversize and slow answers are cut; and
the [server] keys that configure it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from appliance.api.image_fetch import ImageFetcher
from appliance.config import load_config
from appliance.errors import ConfigError
from tests.fast.vision_stack import (
    chat_body,
    error_of,
    image_part,
    picture,
    user_turn,
    vision_stack,
)

pytestmark = pytest.mark.anyio
PNG = picture(20, 10)
CAP = 4096
URL_PARAM = "messages[0].content[0].image_url.url"


class _Pictures(BaseHTTPRequestHandler):
    """Serves the paths the tests ask for, and records every request it receives."""

    seen: list[str]
    other_port: int

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/png",
              length: bool = True, **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        if length:
            self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path == "/ok.png":
            self._send(200, PNG)
        elif self.path == "/big.png":
            self._send(200, PNG + b"\0" * CAP)
        elif self.path == "/big-unannounced.png":
            # No content-length: the cap is enforced while reading (the connection's end
            # closes the body).
            self._send(200, PNG + b"\0" * CAP * 4, length=False, connection="close")
            self.close_connection = True
        elif self.path == "/slow.png":
            self.send_response(200)
            self.send_header("content-type", "image/png")
            self.send_header("content-length", str(len(PNG)))
            self.end_headers()
            for byte in PNG[:20]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        elif self.path == "/page.html":
            self._send(200, b"<html></html>", "text/html")
        elif self.path == "/moved":
            self._send(302, b"", location="/ok.png")
        elif self.path == "/away":
            self._send(302, b"", location=f"http://localhost:{self.other_port}/ok.png")
        elif self.path == "/missing.png":
            self._send(404, b"no")
        else:
            self._send(500, b"?")


@pytest.fixture
def server() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Pictures,), {"seen": seen, "other_port": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.other_port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def fetcher(timeout_s: float = 5.0) -> ImageFetcher:
    return ImageFetcher(hosts=frozenset({"127.0.0.1"}), max_bytes=CAP, timeout_s=timeout_s)


async def ask(url: str, fetch: ImageFetcher) -> tuple[int, dict[str, str]]:
    async with vision_stack(image_fetch=fetch) as stack:
        response = await stack.post("/v1/chat/completions",
                                    chat_body(user_turn(image_part(url))))
        body = response.json()
        if response.status_code == 200:
            return 200, {"content": body["choices"][0]["message"]["content"]}
        return response.status_code, error_of(response)


async def test_an_allowed_host_is_fetched(server: tuple[int, list[str]]) -> None:
    port, seen = server
    status, answer = await ask(f"http://127.0.0.1:{port}/ok.png", fetcher())
    assert (status, answer["content"]) == (200, "20x10:auto@0")
    assert seen == ["/ok.png"]
    status, answer = await ask(f"http://127.0.0.1:{port}/moved", fetcher())
    assert (status, answer["content"]) == (200, "20x10:auto@0")  # a redirect on the list
    assert seen == ["/ok.png", "/moved", "/ok.png"]


async def test_another_host_is_refused_without_a_connection(
        server: tuple[int, list[str]]) -> None:
    port, seen = server
    for url in (f"http://localhost:{port}/ok.png", f"http://127.0.0.1.nip.io:{port}/ok.png",
                f"http://127.0.0.1@localhost:{port}/ok.png"):
        status, error = await ask(url, fetcher())
        assert status == 400 and error["param"] == URL_PARAM
        assert "not one this server fetches images from" in error["message"]
    assert seen == []


async def test_a_redirect_off_the_list_is_not_followed(server: tuple[int, list[str]]) -> None:
    port, seen = server
    status, error = await ask(f"http://127.0.0.1:{port}/away", fetcher())
    assert status == 400 and error["param"] == URL_PARAM
    assert "redirects to the host 'localhost'" in error["message"]
    assert seen == ["/away"]  # and not the target's /ok.png


@pytest.mark.parametrize("path", ["/big.png", "/big-unannounced.png"])
async def test_oversize_answers_are_cut(server: tuple[int, list[str]], path: str) -> None:
    port, _ = server
    status, error = await ask(f"http://127.0.0.1:{port}{path}", fetcher())
    assert status == 413 and error["param"] == URL_PARAM
    assert f"at most {CAP} bytes" in error["message"]


async def test_a_slow_answer_is_cut(server: tuple[int, list[str]]) -> None:
    port, _ = server
    status, error = await ask(f"http://127.0.0.1:{port}/slow.png", fetcher(timeout_s=0.5))
    assert status == 400 and error["param"] == URL_PARAM
    assert "longer than 0.5 s" in error["message"]


@pytest.mark.parametrize(("path", "says"), [("/page.html", "'text/html'"),
                                            ("/missing.png", "HTTP 404")])
async def test_what_is_no_picture_is_refused(server: tuple[int, list[str]], path: str,
                                             says: str) -> None:
    port, _ = server
    status, error = await ask(f"http://127.0.0.1:{port}{path}", fetcher())
    assert status == 400 and error["param"] == URL_PARAM and says in error["message"]


def test_server_keys(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    toml = tmp_path / "models.toml"
    models = '[[models]]\nid = "m"\npath = "m.gguf"\n'
    toml.write_text(models)
    default = load_config(toml).server
    assert (default.remote_image_hosts, default.remote_image_max_mb,
            default.remote_image_timeout_s) == ((), 5, 10.0)
    toml.write_text('[server]\nremote_image_hosts = ["Images.Example.com", "192.168.1.20", '
                    '"::1"]\nremote_image_max_mb = 2\nremote_image_timeout_s = 3\n' + models)
    server = load_config(toml).server
    assert server.remote_image_hosts == ("images.example.com", "192.168.1.20", "::1")
    assert (server.remote_image_max_mb, server.remote_image_timeout_s) == (2, 3.0)
    for bad in ('remote_image_hosts = ["https://images.example.com"]',
                'remote_image_hosts = ["example.com:8080"]', "remote_image_max_mb = 0",
                "remote_image_timeout_s = -1"):
        toml.write_text(f"[server]\n{bad}\n{models}")
        with pytest.raises(ConfigError, match=bad.split(" ")[0]):
            load_config(toml)
