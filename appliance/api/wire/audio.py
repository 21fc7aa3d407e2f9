"""The multipart request of /v1/audio/transcriptions and /v1/audio/translations.

Owns reading the upload without holding it twice (Starlette spools the file part to a
temporary file past 1 MiB; the body is counted as it arrives and refused with a 413 past the
limit, whatever Content-Length claimed) and validating every form field into one typed
request. Fields OpenAI defines that we do not serve are a 400 naming them.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.types import Message, Receive

from appliance.errors import InvalidRequest, PayloadTooLarge

Task = Literal["transcribe", "translate"]
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
# Room for the form's other fields and multipart boundaries around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FILES = 1
MAX_FIELDS = 64
MAX_FIELD_BYTES = 1024 * 1024  # Starlette's bound on one non-file field
# Whisper reads the last 224 tokens of a prompt; longer ones only cost tokenizing.
MAX_PROMPT_CHARS = 16_000
MAX_MODEL_CHARS = 256
# The charsets a form's names and values may be sent in (SDKs and browsers send none, which
# is UTF-8). Starlette decodes with whatever codec the header names: Python's punycode
# decoder is quadratic (1 MB held the event loop 17 s), 'undefined' raised past its
# fallback (a 500), and UTF-7 wrote lone surrogates. These four decode in linear time and
# write only Unicode characters.
CHARSETS = {"utf-8": "utf-8", "ascii": "us-ascii", "iso8859-1": "iso-8859-1",
            "cp1252": "windows-1252"}
NOT_SERVED = ("chunking_strategy", "include", "include[]", "known_speaker_names",
              "known_speaker_names[]", "known_speaker_references",
              "known_speaker_references[]")
TRANSCRIPTION_ONLY = ("language", "timestamp_granularities", "timestamp_granularities[]")


@dataclass(frozen=True)
class AudioRequest:
    model: str
    upload: UploadFile
    size: int
    response_format: str
    language: str | None
    prompt: str | None
    temperature: float
    granularities: tuple[str, ...]
    stream: bool


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The audio file is larger than the limit of {limit // (1024 * 1024)} "
                           "MB.", param="file")


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit + MULTIPART_OVERHEAD:
                raise _too_large(limit)
        return message

    return counted


async def read_form(request: Request, max_upload_bytes: int) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("Send the audio as multipart/form-data with a 'file' field.",
                             param="file", code="invalid_content_type")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and \
            int(declared) > max_upload_bytes + MULTIPART_OVERHEAD:
        raise _too_large(max_upload_bytes)
    _check_charset(content_type)
    limited = Request(request.scope, _counting(request.receive, max_upload_bytes))
    # The parser itself, not Request.form: inside an app that turns the parser's refusals
    # into a bare HTTPException (param and code null), and these name the file part.
    parser = MultiPartParser(limited.headers, limited.stream(), max_files=MAX_FILES,
                             max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"The multipart form could not be read: {exc.message} Send one "
                             f"'file' part and at most {MAX_FIELDS} other fields, each field "
                             f"under {MAX_FIELD_BYTES // 1024} KB and each part's headers "
                             "short.", param="file", code="invalid_multipart") from None
    return form


def _check_charset(content_type: str) -> None:
    _, options = parse_options_header(content_type)
    named = options.get(b"charset")
    if named is None:
        return
    charset = named.decode("latin-1")
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        codec = ""
    if codec not in CHARSETS:
        shown = charset if len(charset) <= 40 else charset[:40] + "..."
        raise InvalidRequest(f"The multipart form's charset {shown!r} is not supported: send "
                             f"its fields as one of {', '.join(CHARSETS.values())} (UTF-8 if "
                             "the header names none).", param="file",
                             code="invalid_multipart")


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid type for '{name}': expected a string.", param=name,
                             code="invalid_type")
    return value


def _list(form: FormData, name: str) -> list[str]:
    values = [*form.getlist(f"{name}[]"), *form.getlist(name)]
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidRequest(f"Invalid type for '{name}'.", param=name, code="invalid_type")
        out.append(value)
    return out


def _boolean(form: FormData, name: str) -> bool:
    value = _text(form, name)
    if value is None:
        return False
    if value.lower() not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"Invalid value for '{name}': expected true or false.",
                             param=name, code="invalid_value")
    return value.lower() in ("true", "1")


def _temperature(form: FormData) -> float:
    value = _text(form, "temperature")
    if value is None or value == "":
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        temperature = -1.0
    if not 0.0 <= temperature <= 1.0:
        raise InvalidRequest("Invalid value for 'temperature': expected a number from 0 to 1.",
                             param="temperature", code="invalid_value")
    return temperature


def _refuse(names: Sequence[str], form: FormData, why: str) -> None:
    for name in names:
        if name in form:
            param = name.removesuffix("[]")
            raise InvalidRequest(f"The parameter '{param}' {why}.", param=param,
                                 code="unsupported_parameter")


def to_audio_request(form: FormData, task: Task) -> AudioRequest:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("Missing required parameter: 'file' (an audio file part).",
                             param="file", code="missing_required_parameter")
    model = _text(form, "model")
    if not model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model",
                             code="missing_required_parameter")
    if len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(f"Invalid 'model': longer than {MAX_MODEL_CHARS} characters.",
                             param="model", code="string_above_max_length")
    prompt = _text(form, "prompt") or None
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"Invalid 'prompt': {len(prompt)} characters, more than the limit "
                             f"of {MAX_PROMPT_CHARS} (whisper reads its last 224 tokens).",
                             param="prompt", code="string_above_max_length")
    _refuse(NOT_SERVED, form, "is not supported by this server")
    if task == "translate":
        _refuse(TRANSCRIPTION_ONLY, form, "is not accepted by translations (they always "
                "produce English)")
    response_format = _text(form, "response_format") or "json"
    if response_format not in FORMATS:
        raise InvalidRequest(f"Invalid value for 'response_format': {response_format!r}. "
                             f"Supported values are: {', '.join(FORMATS)}.",
                             param="response_format", code="invalid_value")
    granularities = _list(form, "timestamp_granularities")
    for granularity in granularities:
        if granularity not in GRANULARITIES:
            raise InvalidRequest(f"Invalid value for 'timestamp_granularities': "
                                 f"{granularity!r}. Supported values are: word, segment.",
                                 param="timestamp_granularities", code="invalid_value")
    if granularities and response_format != "verbose_json":
        raise InvalidRequest("'timestamp_granularities' needs response_format "
                             "'verbose_json'.", param="timestamp_granularities",
                             code="invalid_value")
    stream = _boolean(form, "stream")
    if stream and task == "translate":
        # OpenAI's translations have no stream; a client's explicit "false" asks for what
        # they do anyway.
        raise InvalidRequest("The parameter 'stream' is not accepted by translations: they "
                             "answer in one response (send stream=false, or leave it out).",
                             param="stream", code="unsupported_parameter")
    if stream and response_format not in ("json", "text"):
        raise InvalidRequest("Streaming sends text events: use response_format 'json' or "
                             "'text' with stream.", param="stream", code="invalid_value")
    language = _text(form, "language") or None
    return AudioRequest(
        model=model, upload=upload, size=upload.size or 0, response_format=response_format,
        language=language.lower() if language else None, prompt=prompt,
        temperature=_temperature(form),
        granularities=tuple(dict.fromkeys(granularities or ["segment"])), stream=stream)
