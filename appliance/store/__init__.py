"""The state store: stored responses, conversations and stored chat completions, in SQLite.

    records.py        the values kept and handed back (StoredResponse, Conversation,
                      StoredCompletion, Page) and the errors raised
    schema.py         append-only migrations and the connection pragmas (WAL, synchronous=FULL)
    threads.py        SqlThreads: one writer thread, a few readers, a transaction per piece
    items.py          the ordered, id-paged items under a parent row (shared by all three)
    responses.py      stored responses and their chains, in SQL
    conversations.py  conversations and their items, in SQL
    completions.py    stored chat completions, their metadata filter and messages, in SQL
    usage.py          what one owner may keep (StoreBounds): bytes per owner, items per
                      conversation, and the checks of a growing write
    sweep.py          deleting what expired, in bounded batches
    state_store.py    SqliteStateStore: the async StateStore the api codes against

Its own file in the data dir (``state.sqlite``), apart from the ledger: state is what clients
keep, the ledger what they were charged. Imports only the standard library, sqlite-utils and
``appliance.errors``; never the api or the engines (``appliance/api/stored_state.py`` holds the
Protocol this implements and re-exports the records).
"""

from appliance.store.records import (
    JSON,
    Conversation,
    ConversationFull,
    CursorNotFound,
    DuplicateItemId,
    Order,
    Page,
    StateTooLarge,
    StorageQuotaExceeded,
    StoredCompletion,
    StoredResponse,
)
from appliance.store.schema import MIGRATION_SET, migrations
from appliance.store.state_store import DAY_SECONDS, SqliteStateStore
from appliance.store.usage import MIB, StoreBounds, stored_size

__all__ = [
    "DAY_SECONDS",
    "JSON",
    "MIB",
    "MIGRATION_SET",
    "Conversation",
    "ConversationFull",
    "CursorNotFound",
    "DuplicateItemId",
    "Order",
    "Page",
    "SqliteStateStore",
    "StateTooLarge",
    "StorageQuotaExceeded",
    "StoreBounds",
    "StoredCompletion",
    "StoredResponse",
    "migrations",
    "stored_size",
]
