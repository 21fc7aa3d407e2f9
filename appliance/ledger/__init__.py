"""The ledger: one row per request, API keys, and usage reports, in SQLite.

    records.py  RequestRecord, KeyRecord (plain dataclasses the api builds and reads)
    schema.py   append-only migrations and open_database (WAL, pragmas)
    writer.py   LedgerWriter: one writer thread fed by a queue; record() never blocks
    keys.py     KeyStore: hashed secrets, constant-time lookup, revocation
    usage.py    usage_totals: per key and model, read-only

Imports only the standard library and sqlite-utils; never the api or the engines.
"""

from appliance.ledger.keys import SECRET_PREFIX, KeyStore, hash_secret
from appliance.ledger.records import KeyRecord, RequestRecord, RequestStatus
from appliance.ledger.schema import MIGRATION_SET, migrations, open_database
from appliance.ledger.usage import UsageTotal, usage_totals
from appliance.ledger.writer import LedgerWriter

__all__ = [
    "MIGRATION_SET",
    "SECRET_PREFIX",
    "KeyRecord",
    "KeyStore",
    "LedgerWriter",
    "RequestRecord",
    "RequestStatus",
    "UsageTotal",
    "hash_secret",
    "migrations",
    "open_database",
    "usage_totals",
]
