"""One request's prompt with pictures in it: where each picture stands in the rendered text,
and the prompt turned into text tokens and picture tokens.

The template renders the messages with a marker where each picture stood between the text
parts. A marker is MARK (prompt_tokens.py), then U+FDD1, a per-request random number, the
picture's index and U+FDD1 again: request text holds no MARK that is not followed by two
private-use characters (RequestText marks every one), so no text a client writes can become a
marker, and the random number keeps one request's markers from being taken for another's.
Only characters no template transform alters (noncharacters, decimal digits, a colon) make it
up. The rendered prompt is split at the markers: each text piece is tokenized as any prompt
(the first one with the BOS), each picture decoded (pictures.py) and tokenized by the
projector (vision.py), in the prompt threads, checking the cancel token and the token limit
between pieces. A template that leaves a picture's message out leaves the picture out too;
one that repeats it repeats the picture.
"""

from __future__ import annotations

import re
import secrets

from appliance.engines.base import CancelToken, ImageInput
from appliance.engines.llm.pictures import decode_picture
from appliance.engines.llm.prompt_images import PromptImages, is_placeholder
from appliance.engines.llm.prompt_tokens import MARK, PromptTokenizer, PromptTooLong, RequestText
from appliance.engines.llm.vision import ImageChunk, Projector
from appliance.errors import InvalidRequest

_FENCE = "\ufdd1"


class PromptPictures:
    """The pictures of one request, by marker; made per request (its own random number)."""

    def __init__(self, projector: Projector | None):
        self._projector = projector
        self._nonce = f"{secrets.randbelow(10**12):012d}"
        self._pattern = re.compile(re.escape(MARK + _FENCE + self._nonce) + r":(\d+)" + _FENCE)
        self._images: list[ImageInput] = []

    def marker(self, image: ImageInput) -> str:
        """The text standing for ``image`` in the messages the template renders."""
        self._images.append(image)
        return f"{MARK}{_FENCE}{self._nonce}:{len(self._images) - 1}{_FENCE}"

    def tokenize(self, tokenizer: PromptTokenizer, rendered: str, marks: RequestText, *,
                 limit: int, cancel: CancelToken) -> tuple[list[int], PromptImages | None]:
        """The prompt's tokens, pictures' placeholders included, and the runs behind them
        (None without pictures). Raises PromptTooLong past ``limit`` tokens, Cancelled once
        cancelled; the runs made so far are freed then."""
        if not self._images:
            return tokenizer.tokenize(rendered, marks, limit=limit, cancel=cancel), None
        projector = self._projector
        if projector is None:  # the api refuses images for a model without a projector
            raise InvalidRequest("This model does not take images.",
                                 param=self._images[0].param, code="invalid_value")
        tokens: list[int] = []
        runs: list[tuple[int, ImageChunk]] = []
        try:
            at = 0
            for found in self._pattern.finditer(rendered):
                self._text(tokenizer, rendered[at:found.start()], marks, tokens, limit, cancel,
                           leading=at == 0)
                cancel.check()
                # A picture that fails to decode is a 400 naming its own part.
                picture = decode_picture(self._images[int(found.group(1))])
                cancel.check()
                made = projector.tokenize(picture)
                runs += [(len(tokens) + offset, chunk) for offset, chunk in made.runs]
                tokens += made.tokens
                if len(tokens) > limit:
                    raise PromptTooLong(len(tokens))
                at = found.end()
            self._text(tokenizer, rendered[at:], marks, tokens, limit, cancel,
                       leading=at == 0)
            if tokens and is_placeholder(tokens[-1]):
                # The first token is sampled from the prompt's last logits: a text token's.
                raise InvalidRequest("The prompt may not end with an image.",
                                     param="messages", code="invalid_value")
        except BaseException:
            for _, chunk in runs:
                chunk.close()
            raise
        return tokens, PromptImages(runs) if runs else None

    @staticmethod
    def _text(tokenizer: PromptTokenizer, text: str, marks: RequestText, tokens: list[int],
              limit: int, cancel: CancelToken, *, leading: bool) -> None:
        if not text and not leading:
            return
        try:
            tokens += tokenizer.tokenize(text, marks, limit=max(limit - len(tokens), 0),
                                         cancel=cancel, leading=leading)
        except PromptTooLong as too_long:
            raise PromptTooLong(len(tokens) + too_long.at_least) from None
        if len(tokens) > limit:
            raise PromptTooLong(len(tokens))
