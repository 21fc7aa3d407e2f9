"""Turning the image parts of a request into ``ImageInput``s, within the bounds.

Two steps, so that nothing is decoded or fetched before every part was checked:

1. ``chat_part_ref`` / ``response_part_ref`` read a part as it is written (chat ``image_url``,
   Responses ``input_image``), checked for its shape, its ``detail`` and its role (user turns
   only); ``ImageRefs`` collects a request's, against the count per request and, for a data
   URL, its encoded length against the byte bound. Cheap and linear, on the event loop.
2. ``resolve_images`` reads each distinct picture: a data URL is base64-decoded strictly, a
   remote URL goes to the fetcher the server allows (api/image_fetch.py; none: a 400 saying how
   an operator enables it), and the bytes are sniffed with Pillow's lazy ``Image.open``: the
   header only, no pixel is decoded here (the engine decodes in its prompt threads). Only PNG,
   JPEG, WebP and GIF are read; width x height from the header is bounded, so a small file
   declaring gigapixels (an image bomb) is a 400 before anything decodes it. Decoding base64
   and parsing headers (PNG text chunks can be zlib streams) run in a worker thread.

Pictures are keyed by (url, detail): the same picture sent twice (a second turn about it) is
read once, and the engine sees equal bytes, which its prefix reuse keys by content. Every
refusal names the part's field (``messages[0].content[1].image_url.url``) and states the bound.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import anyio.to_thread
from PIL import Image, UnidentifiedImageError

from appliance.api.bounds import RequestBounds
from appliance.engines.base import ImageDetail, ImageInput, ModelInfo
from appliance.errors import InvalidRequest, PayloadTooLarge

DETAILS: tuple[ImageDetail, ...] = ("low", "high", "auto")
# Pillow's format names, and the media types a data URL may declare for them.
FORMATS: Mapping[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp",
                              "GIF": "image/gif"}
_MEDIA_TYPES = frozenset({*FORMATS.values(), "image/jpg"})  # image/jpg: a common misspelling
_FORMAT_NAMES = "PNG, JPEG, WebP or GIF"
# Fetches a remote picture: (url, the param an error names) -> its bytes, within its bounds.
Fetch = Callable[[str, str], Awaitable[bytes]]
ImageKey = tuple[str, ImageDetail]  # a picture as a request names it: (url, detail)
DATA_SCHEME = "data:"
SCHEMES = (DATA_SCHEME, "http://", "https://")


@dataclass(frozen=True)
class ImageRef:
    """One image part, checked for its shape but not yet read."""

    url: str
    detail: ImageDetail
    url_param: str  # the field holding the URL: what errors about the picture name
    part_param: str  # the part itself: what an error about the part as a whole names

    @property
    def key(self) -> ImageKey:
        return (self.url, self.detail)

    @property
    def remote(self) -> bool:
        return not _has_scheme(self.url, (DATA_SCHEME,))


def _has_scheme(url: str, schemes: tuple[str, ...]) -> bool:
    """Whether ``url`` starts with one of ``schemes`` (lower case): a scheme is compared
    without case (RFC 3986 3.1), so ``DATA:`` and ``HTTP://`` are the same as ``data:``."""
    return url[:8].lower().startswith(schemes)


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _detail(value: object, param: str) -> ImageDetail:
    if value is None:
        return "auto"
    for known in DETAILS:
        if value == known:
            return known
    raise _invalid(param, f"Invalid value for '{param}': {value!r}. Supported values are: "
                   "'low', 'high' and 'auto'.")


def max_encoded_chars(max_bytes: int) -> int:
    """The base64 length of ``max_bytes`` bytes: a longer payload decodes to more."""
    return 4 * -(-max_bytes // 3)


def _ref(url: object, detail: ImageDetail, url_param: str, part_param: str,
         role: str) -> ImageRef:
    if role != "user":
        raise _invalid(part_param, f"Invalid '{part_param}': images are only supported in "
                       f"user messages (this one is {role!r}).")
    if not isinstance(url, str) or not url:
        raise _invalid(url_param, f"Missing required parameter: '{url_param}' (a data URL "
                       "or an http(s) URL).", "missing_required_parameter")
    if not _has_scheme(url, SCHEMES):
        raise _invalid(url_param, f"Invalid '{url_param}': expected a data URL "
                       "(data:image/png;base64,...) or an http(s) URL.")
    return ImageRef(url, detail, url_param, part_param)


def chat_part_ref(part: Mapping[str, object], where: str, role: str) -> ImageRef:
    """A chat ``image_url`` part, checked for its shape: ``{"image_url": {"url": ...,
    "detail": ...}}`` (a bare string ``image_url``, as vLLM takes it, too)."""
    image_url = part.get("image_url")
    if isinstance(image_url, str):
        return _ref(image_url, "auto", f"{where}.image_url", where, role)
    if not isinstance(image_url, Mapping):
        raise _invalid(f"{where}.image_url", f"Missing required parameter: "
                       f"'{where}.image_url' (an object with a 'url').",
                       "missing_required_parameter")
    detail = _detail(image_url.get("detail"), f"{where}.image_url.detail")
    return _ref(image_url.get("url"), detail, f"{where}.image_url.url", where, role)


def response_part_ref(part: Mapping[str, object], where: str, role: str) -> ImageRef:
    """A Responses ``input_image`` part, checked for its shape: ``image_url`` (a string) and
    ``detail``; a ``file_id`` names a file of the Files API, which this server does not have."""
    if part.get("file_id") is not None:
        raise _invalid(f"{where}.file_id", f"Invalid '{where}.file_id': this server has no "
                       "Files API; send the picture as 'image_url' (a data URL).",
                       "unsupported_value")
    detail = _detail(part.get("detail"), f"{where}.detail")
    return _ref(part.get("image_url"), detail, f"{where}.image_url", where, role)


class ImageRefs:
    """The image parts of one request, in order, against the per-request bounds: their
    count, and each data URL's encoded length (before anything decodes it)."""

    def __init__(self, bounds: RequestBounds):
        self.bounds = bounds
        self.refs: list[ImageRef] = []

    def add(self, ref: ImageRef) -> None:
        bounds = self.bounds
        if len(self.refs) >= bounds.max_images:
            raise _invalid(ref.part_param, f"Invalid '{ref.part_param}': more than "
                           f"{bounds.max_images} images in one request; this server allows at "
                           f"most {bounds.max_images}.")
        _, comma, payload = ref.url.partition(",")
        if not ref.remote and comma and len(payload) > max_encoded_chars(bounds.max_image_bytes):
            raise PayloadTooLarge(
                f"Invalid '{ref.url_param}': the image's base64 data is {len(payload)} "
                f"characters (more than {bounds.max_image_bytes} bytes); this server allows at "
                f"most {bounds.max_image_bytes} bytes per image.", param=ref.url_param)
        self.refs.append(ref)


def chat_part_key(part: Mapping[str, object]) -> ImageKey:
    """The key of a chat ``image_url`` part ``chat_part_ref`` already checked."""
    image_url = part.get("image_url")
    if isinstance(image_url, Mapping):
        return (str(image_url.get("url")), _detail(image_url.get("detail"), "detail"))
    return (str(image_url), "auto")


def response_part_key(part: Mapping[str, object]) -> ImageKey:
    """The key of a Responses ``input_image`` part ``response_part_ref`` already checked."""
    return (str(part.get("image_url")), _detail(part.get("detail"), "detail"))


def _data_url_bytes(ref: ImageRef) -> bytes:
    head, comma, payload = ref.url.partition(",")
    media, _, encoding = head[len(DATA_SCHEME):].partition(";")  # the caller saw "data:"
    if not comma or encoding.lower() != "base64":
        raise _invalid(ref.url_param, f"Invalid '{ref.url_param}': expected a base64 data URL "
                       "such as data:image/png;base64,...")
    if media.lower() not in _MEDIA_TYPES:
        raise _invalid(ref.url_param, f"Invalid '{ref.url_param}': images of type {media!r} "
                       f"are not supported; this server reads {_FORMAT_NAMES} "
                       f"({', '.join(FORMATS.values())}).", "invalid_image_format")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error:
        raise _invalid(ref.url_param, f"Invalid '{ref.url_param}': the data URL's payload is "
                       "not valid base64.", "invalid_image") from None


def read_header(data: bytes, ref: ImageRef, bounds: RequestBounds) -> ImageInput:
    """The picture's format and size from its header (no pixel decoded), within the bounds.
    A fetched picture's bytes were bounded by the fetcher's own cap while it read them."""
    param = ref.url_param
    if not ref.remote and len(data) > bounds.max_image_bytes:
        raise PayloadTooLarge(f"Invalid '{param}': the image is {len(data)} bytes; this server "
                              f"allows at most {bounds.max_image_bytes} bytes per image.",
                              param=param)
    too_many_pixels = _invalid(param, f"Invalid '{param}': the image declares more than "
                               f"{bounds.max_image_pixels} pixels (width x height); this "
                               f"server allows at most {bounds.max_image_pixels}.",
                               "image_too_large")
    try:
        # Pillow warns (and past twice its own limit refuses) on large sizes; the bound here
        # is ours, so its warning is silenced and its refusal read as ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(FORMATS)) as image:
                width, height = image.size
                found = image.format
    except Image.DecompressionBombError:
        raise too_many_pixels from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise _invalid(param, f"Invalid '{param}': the data is not a {_FORMAT_NAMES} image "
                       "this server can read.", "invalid_image_format") from None
    if found not in FORMATS or width < 1 or height < 1:
        raise _invalid(param, f"Invalid '{param}': the data is not a {_FORMAT_NAMES} image "
                       "this server can read.", "invalid_image_format")
    if width * height > bounds.max_image_pixels:
        raise _invalid(param, f"Invalid '{param}': the image is {width} x {height} = "
                       f"{width * height} pixels; this server allows at most "
                       f"{bounds.max_image_pixels}.", "image_too_large")
    return ImageInput(data=data, width=width, height=height, detail=ref.detail, param=param)


def _read_local(refs: list[ImageRef], bounds: RequestBounds) -> dict[ImageKey, ImageInput]:
    return {ref.key: read_header(_data_url_bytes(ref), ref, bounds) for ref in refs}


def refused_images(ref: ImageRef, model: str) -> InvalidRequest:
    """The answer to an image part sent to a model without a projector."""
    return _invalid(ref.part_param, f"Invalid '{ref.part_param}': the model {model!r} does not "
                    "take images (it has no projector: models.toml mmproj).",
                    "unsupported_content_type")


def _remote_off(ref: ImageRef) -> InvalidRequest:
    return _invalid(ref.url_param, f"Invalid '{ref.url_param}': this server does not fetch "
                    "image URLs (a server fetching URLs its clients name can be led to "
                    "addresses on its own network). Send the picture as a data URL "
                    "(data:image/png;base64,...), or ask the operator to allow the host in "
                    "models.toml ([server] remote_image_hosts).", "unsupported_value")


async def resolve_images(refs: list[ImageRef], model: ModelInfo, bounds: RequestBounds,
                         fetch: Fetch | None) -> dict[ImageKey, ImageInput]:
    """Each distinct picture of ``refs``, read and checked, for ``model`` (one without a
    projector refuses the first part). ``fetch``: how remote URLs are fetched (None: they are
    refused, naming the first one)."""
    if refs and not model.vision:
        raise refused_images(refs[0], model.id)
    # The first part of each picture: the one its errors, here and in the engine, name.
    first: dict[ImageKey, ImageRef] = {}
    for ref in refs:
        first.setdefault(ref.key, ref)
    distinct = list(first.values())
    remote = [ref for ref in distinct if ref.remote]
    if remote and fetch is None:
        raise _remote_off(remote[0])
    local = [ref for ref in distinct if not ref.remote]
    found = await anyio.to_thread.run_sync(_read_local, local, bounds) if local else {}
    for ref in remote:
        assert fetch is not None
        data = await fetch(ref.url, ref.url_param)
        found[ref.key] = await anyio.to_thread.run_sync(read_header, data, ref, bounds)
    _check_total_pixels(refs, found, bounds)
    return found


def _check_total_pixels(refs: list[ImageRef], found: Mapping[ImageKey, ImageInput],
                        bounds: RequestBounds) -> None:
    """Every part counts, a picture sent twice twice: the engine decodes each part."""
    total = 0
    for ref in refs:
        image = found[ref.key]
        total += image.width * image.height
        if total > bounds.max_request_image_pixels:
            raise _invalid(ref.part_param, f"Invalid '{ref.part_param}': the request's images "
                           f"hold more than {bounds.max_request_image_pixels} pixels in all; "
                           f"this server allows at most {bounds.max_request_image_pixels} per "
                           "request.", "image_too_large")


def images_at(parts: list[tuple[int, ImageKey]],
              images: Mapping[ImageKey, ImageInput]) -> tuple[tuple[int, ImageInput], ...]:
    """A message's pictures at their offsets, as ChatMessage.images holds them."""
    return tuple((offset, images[key]) for offset, key in parts)
