"""The history a response continues, read from the state store: a ``previous_response_id``
chain (each earlier turn's input items, then its output items; the instructions are only ever
the current request's, as OpenAI) or a conversation's items.

Both belong to the caller's key: another key's, an expired or an unknown one is the same 404.
A server without a state store has neither. The items are read back through the same checks
as a request's input (``responses_input.input_item``), so what a conversation holds from its
own routes is held to the same shapes; their errors name the field they came from.
"""

from __future__ import annotations

from appliance.api.bounds import RequestBounds
from appliance.api.stored_state import StateStore, StateTooLarge
from appliance.api.wire.responses import ResponseAsk
from appliance.api.wire.responses_input import Sourced, input_item
from appliance.errors import InvalidRequest, NotFound

_CONTINUABLE = ("completed", "incomplete")


def _previous_missing(response_id: str) -> NotFound:
    # The chain is read whole: a deleted or expired earlier turn breaks it too.
    return NotFound(f"Previous response with id '{response_id[:128]}' not found, or a "
                    "response it continues was deleted or has expired.",
                    param="previous_response_id", code="previous_response_not_found")


async def _chain(state: StateStore | None, owner: str | None, response_id: str,
                 bounds: RequestBounds, room: int) -> list[Sourced]:
    if state is None:
        raise _previous_missing(response_id)
    try:
        chain = await state.chain(owner, response_id, bounds.max_chain_turns)
    except StateTooLarge as too_long:
        too_long.param = "previous_response_id"
        raise
    if not chain:
        raise _previous_missing(response_id)
    status = chain[-1].body.get("status")
    if status not in _CONTINUABLE:
        raise InvalidRequest(f"Previous response with id '{response_id}' is {status}: only a "
                             "completed or incomplete response can be continued.",
                             param="previous_response_id", code="invalid_value")
    found: list[Sourced] = []
    for turn in chain:
        output = turn.body.get("output")
        for item in (*turn.input_items, *(output if isinstance(output, list) else ())):
            found.append((input_item(item, "previous_response_id"), "previous_response_id"))
            if len(found) > room:
                raise InvalidRequest(
                    f"Invalid 'previous_response_id': the responses it continues hold more "
                    f"than {bounds.max_history_items} items; this server continues at most "
                    "that many.", param="previous_response_id", code="invalid_value")
    return found


async def _conversation(state: StateStore | None, owner: str | None, conversation_id: str,
                        room: int) -> list[Sourced]:
    missing = NotFound(f"Conversation with id '{conversation_id}' not found.",
                       param="conversation")
    if state is None:
        raise missing
    try:
        items = await state.all_items(owner, conversation_id, room)
    except StateTooLarge as too_long:
        too_long.param = "conversation"
        raise
    if items is None:
        raise missing
    return [(input_item(item, "conversation"), "conversation") for item in items]


async def continued(state: StateStore | None, owner: str | None, ask: ResponseAsk,
                    bounds: RequestBounds) -> list[Sourced]:
    """The items before this turn's input, oldest first (none for a fresh start)."""
    room = max(bounds.max_history_items - len(ask.items), 0)
    if ask.previous_response_id is not None:
        return await _chain(state, owner, ask.previous_response_id, bounds, room)
    if ask.conversation_id is not None:
        return await _conversation(state, owner, ask.conversation_id, room)
    return []
