"""The parameter rows of docs/compatibility.md, read the same way by the test over fakes
(tests/fast/test_compatibility_doc.py) and the one on the real models
(tests/real/test_compatibility_real.py), so both hold the same document true."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "compatibility.md"
ROW = re.compile(r"^\| `(?P<param>[a-z_]+)`(?: \(extension\))? \| (?P<status>\w+) \| "
                 r"`(?P<example>.+?)` \|")
STATUSES = ("honoured", "accepted", "rejected")
# Chat rows sent to a model that reasons (an alias both the fast and the real stacks serve).
REASONING_PARAMS = ("reasoning_effort", "chat_template_kwargs")
REASONING_MODEL = "o4-mini"


@dataclass(frozen=True)
class Row:
    route: str
    param: str
    status: str
    example: Any  # a JSON value, as the document writes it

    @property
    def id(self) -> str:
        return f"{self.route.removeprefix('/v1/')}:{self.param}"

    @property
    def is_audio(self) -> bool:
        """A multipart audio upload (speech, though under /v1/audio/, takes JSON)."""
        return self.route in ("/v1/audio/transcriptions", "/v1/audio/translations")

    def companions(self) -> dict[str, object]:
        """What the example needs beside it to mean anything, as the document's notes say."""
        if self.param == "stream_options":
            return {"stream": True}
        if self.param == "top_logprobs":
            return {"logprobs": True}
        if self.param == "output_compression":
            return {"output_format": "jpeg"}  # png is lossless: compression needs jpeg or webp
        if self.route == "/v1/chat/completions" and self.param in REASONING_PARAMS:
            return {"model": REASONING_MODEL}  # effort is refused on models that do not reason
        return {}


def rows() -> list[Row]:
    """Every parameter row under a ``## POST`` heading, its example parsed as JSON."""
    found: list[Row] = []
    route = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            route = line.removeprefix("## POST ").strip() if line.startswith("## POST ") else ""
        elif route and (match := ROW.match(line)):
            found.append(Row(route, match["param"], match["status"], json.loads(match["example"])))
    return found


def form_fields(param: str, value: object) -> dict[str, str | list[str]]:
    """A value as a multipart form field, the way the SDK sends it: lists as repeated
    ``param[]`` fields, booleans in lower case."""
    if isinstance(value, list):
        return {f"{param}[]": [str(item) for item in value]}
    if isinstance(value, bool):
        return {param: str(value).lower()}
    return {param: str(value)}
