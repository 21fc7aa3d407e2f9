"""The bounds every request input is checked against before any work starts.

One place, so the README's limits table and the checks cannot drift apart. Each bound is
answered with a 400 (413 for sizes in bytes) whose message names the parameter and the bound.
Bounds of what a model kind can do (grammar size, audio duration, image steps) live with the
engine that knows them; these are the wire-level ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.errors import InvalidRequest


@dataclass(frozen=True)
class RequestBounds:
    # HTTP
    max_body_bytes: int = 8 * 1024 * 1024  # JSON bodies (413 past it)
    max_upload_bytes: int = 25 * 1024 * 1024  # audio uploads (the largest any model accepts)
    max_url_bytes: int = 8 * 1024  # path + query; longer is a 400 before routing and auth
    # request line + headers: a 400 before routing (h11 closes a connection whose head grows
    # past it unfinished); also what bounds the number of headers
    max_header_bytes: int = 16 * 1024
    # Chat and legacy completions (checked on the parsed JSON, before validation: see
    # api/wire/generation_bounds.py; the schemas' own bounds are engines/llm/schema_bounds.py)
    max_messages: int = 2048
    max_message_chars: int = 1_000_000  # text of one message (all its parts), or one prompt
    max_total_chars: int = 4_000_000  # text of all messages (or prompts) together
    max_message_parts: int = 8192  # content parts and tool calls of all messages together
    max_tools: int = 128  # OpenAI's own limit on functions per request
    max_tool_schema_bytes: int = 64 * 1024  # one tool's definition, as JSON (413 past it)
    max_response_schema_bytes: int = 64 * 1024  # response_format's json_schema (413 past it)
    max_stop_chars: int = 256  # one stop string
    max_prompts: int = 16  # legacy completions: prompts in one request
    max_prompt_token_ids: int = 131_072  # legacy completions: one prompt given as token ids
    max_choice_tokens: int = 65_536  # n x max_tokens (x prompts), when more than one choice
    max_logit_bias: int = 300  # OpenAI's limit on logit_bias entries
    max_metadata_pairs: int = 16  # OpenAI's limits on metadata
    max_metadata_key_chars: int = 64
    max_metadata_value_chars: int = 512
    max_name_chars: int = 256  # model, user, names and ids: labels, never text to work on
    # chat_template_kwargs (the llama-server/vLLM extension): variables for the chat template
    max_template_kwargs: int = 16  # names in the object
    max_template_kwarg_name_chars: int = 64  # one name (an identifier)
    max_template_kwarg_value_chars: int = 1024  # one string value (or list item)
    max_template_kwarg_items: int = 16  # one list value (of scalars, not nested)
    # Images in chat and Responses user turns (api/wire/image_input.py). 5 MiB: a phone
    # photo as JPEG, and its base64 (6.7 MiB) still fits the 8 MiB JSON body (a smaller
    # max_body_bytes is then the effective bound). 16 megapixels: a 12 MP camera's full
    # resolution, at most 48 MiB once decoded to RGB (the projector shrinks it to its own input
    # size anyway); a header declaring more is refused before any decode (an image bomb).
    # 16 images: each costs a projector encode and its tokens (256 on Gemma 3) in the context.
    max_image_bytes: int = 5 * 1024 * 1024  # one picture, decoded from base64 (413 past it)
    max_image_pixels: int = 4096 * 4096  # width x height, read from the header
    max_images: int = 16  # image parts in one request (a continued history's included)
    # All the pictures of one request together: the engine holds each decoded (3 bytes a
    # pixel) until the projector has read it, so this bounds a request's pictures to 96 MiB.
    max_request_image_pixels: int = 2 * 4096 * 4096
    # Embeddings: OpenAI's 2,048 inputs. Tokens per input (the model's context) and per
    # request (models.toml max_request_tokens, OpenAI's 300,000 by default) need the model's
    # tokenizer, so the embedding engine checks them.
    max_embedding_inputs: int = 2048
    # Speech (POST /v1/audio/speech): OpenAI's 4,096 characters of input and of instructions.
    max_speech_input_chars: int = 4096
    # Responses (api/wire/responses_bounds.py): input items count as messages above, the
    # functions inside namespace tools as tools.
    max_include: int = 16  # `include` values (OpenAI knows eight)
    max_chain_turns: int = 1000  # earlier responses one `previous_response_id` continues
    max_history_items: int = 8192  # items continued (a chain or a conversation) plus the input
    # Background responses running at once (a 429 past either): the server's, one key's.
    max_background_responses: int = 64
    max_background_per_key: int = 8


# Labels a body may carry (never text to work on, but echoed in errors and logs): routes whose
# other bounds need no check of their own run this one on the parsed JSON (generation routes
# check them with the rest, in api/wire/generation_bounds.py and responses_bounds.py).
LABELS = ("model", "user")


def check_labels(data: Mapping[str, Any], bounds: RequestBounds,
                 fields: tuple[str, ...] = LABELS) -> None:
    """A 400 for a label (``model``, ``user``) over ``max_name_chars``, naming it and the bound,
    before validation or a model lookup (whose 404 would quote the name back)."""
    for field in fields:
        value = data.get(field)
        if isinstance(value, str):
            check_label(field, value, bounds)


def check_label(param: str, value: str, bounds: RequestBounds) -> None:
    if len(value) > bounds.max_name_chars:
        raise InvalidRequest(f"Invalid '{param}': a string of {len(value)} characters; this "
                             f"server allows at most {bounds.max_name_chars}.", param=param,
                             code="string_above_max_length")
