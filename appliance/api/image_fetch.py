"""Fetching the pictures of remote image URLs, for the hosts an operator allowed.

A server that fetches any URL its clients name can be led to addresses only it reaches (a
router's admin page, a cloud metadata endpoint, another service on the LAN): server-side
request forgery. So remote image URLs are off unless ``[server] remote_image_hosts`` lists
hosts, and then only those hosts are ever connected to: the URL's host is checked before any
connection, and each redirect's target again (a redirect off the list is refused, never
followed). The body is streamed and cut past the byte cap, and the whole fetch (connect,
redirects, body) has one deadline, so a host that drips its answer cannot hold a request.
The proxy settings of the environment are not used: the allow-list names the hosts connected
to. What comes back is checked as a data URL's bytes are (image_input.read_header).
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import httpx2

from appliance.errors import InvalidRequest, PayloadTooLarge

MAX_REDIRECTS = 3
# What a picture's Content-Type may say; a missing one is left to the sniffing that follows.
_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif"})
_USER_AGENT = "appliance-image-fetch"


def _refused(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param, code=code)


@dataclass(frozen=True)
class ImageFetcher:
    """Fetches remote pictures from ``hosts`` (host names or addresses, compared without
    case; any port), at most ``max_bytes`` each, within ``timeout_s`` each."""

    hosts: frozenset[str]
    max_bytes: int
    timeout_s: float

    def allows(self, url: httpx2.URL) -> bool:
        return url.scheme in ("http", "https") and url.host.lower() in self.hosts

    async def __call__(self, url: str, param: str) -> bytes:
        try:
            target = httpx2.URL(url)
        except httpx2.InvalidURL:
            raise _refused(param, "not a valid URL.") from None
        if not self.allows(target):
            raise _refused(param, f"the host {target.host!r} is not one this server fetches "
                           "images from ([server] remote_image_hosts).", "unsupported_value")
        try:
            with anyio.fail_after(self.timeout_s):
                return await self._fetch(target, param)
        except TimeoutError:
            raise _refused(param, f"fetching the image took longer than {self.timeout_s:g} "
                           "s; this server waits at most that long.", "image_fetch_failed"
                           ) from None
        except httpx2.HTTPError as failure:
            raise _refused(param, f"the image could not be fetched ({type(failure).__name__})."
                           , "image_fetch_failed") from None

    async def _fetch(self, target: httpx2.URL, param: str) -> bytes:
        async with httpx2.AsyncClient(follow_redirects=False, trust_env=False,
                                      timeout=self.timeout_s,
                                      headers={"user-agent": _USER_AGENT}) as client:
            for _ in range(MAX_REDIRECTS + 1):
                async with client.stream("GET", target) as response:
                    if response.is_redirect:
                        target = target.join(response.headers.get("location", ""))
                        if not self.allows(target):
                            raise _refused(param, f"the image URL redirects to the host "
                                           f"{target.host!r}, which is not one this server "
                                           "fetches images from.", "unsupported_value")
                        continue
                    return await self._body(response, param)
        raise _refused(param, f"the image URL redirects more than {MAX_REDIRECTS} times.",
                       "image_fetch_failed")

    async def _body(self, response: httpx2.Response, param: str) -> bytes:
        if response.status_code != 200:
            raise _refused(param, f"fetching the image answered HTTP {response.status_code}.",
                           "image_fetch_failed")
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media not in _IMAGE_TYPES:
            raise _refused(param, f"the URL answered content of type {media!r}, not a PNG, "
                           "JPEG, WebP or GIF image.", "invalid_image_format")
        declared = response.headers.get("content-length", "")
        # ASCII digits only: str.isdigit() takes '²', which int() refuses.
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(param)
        received = bytearray()
        async for piece in response.aiter_bytes():
            received += piece
            if len(received) > self.max_bytes:
                raise self._too_large(param)
        return bytes(received)

    def _too_large(self, param: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"Invalid '{param}': the image at that URL is larger than "
                               f"{self.max_bytes} bytes; this server fetches at most "
                               f"{self.max_bytes} bytes per image.", param=param)
