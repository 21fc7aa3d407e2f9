"""The ledger: one row per request, API keys, and usage reports, in SQLite.

    records.py  RequestRecord, KeyRecord, KeyLimits (plain dataclasses the api builds and reads),
                money (an amount as people write it)
    schema.py   append-only migrations and open_database (WAL, pragmas)
    writer.py   LedgerWriter: one writer thread fed by a queue; record() never blocks
    keys.py     KeyStore: hashed secrets, constant-time lookup, limits, revocation
    usage.py    usage_report (by key / model / day) and month_to_date, read-only
    buckets.py  bucket_totals: time-bucketed sums for the OpenAI-shaped usage endpoints

Imports only the standard library and sqlite-utils; never the api or the engines.
"""

from appliance.ledger.buckets import BucketQuery, BucketTotal, LedgerReports, bucket_totals
from appliance.ledger.keys import (
    SECRET_PREFIX,
    InvalidKeyField,
    KeyStore,
    check_key_name,
    hash_secret,
)
from appliance.ledger.records import (
    MAX_AMOUNT,
    MIN_AMOUNT,
    KeyLimits,
    KeyRecord,
    RequestRecord,
    RequestStatus,
    money,
)
from appliance.ledger.schema import MIGRATION_SET, migrations, open_database
from appliance.ledger.usage import (
    GROUPINGS,
    MonthToDate,
    UsageRow,
    month_to_date,
    usage_report,
)
from appliance.ledger.writer import LedgerWriter, OnCommit

__all__ = [
    "GROUPINGS",
    "MAX_AMOUNT",
    "MIGRATION_SET",
    "MIN_AMOUNT",
    "SECRET_PREFIX",
    "BucketQuery",
    "BucketTotal",
    "InvalidKeyField",
    "KeyLimits",
    "KeyRecord",
    "KeyStore",
    "LedgerReports",
    "LedgerWriter",
    "MonthToDate",
    "OnCommit",
    "RequestRecord",
    "RequestStatus",
    "UsageRow",
    "bucket_totals",
    "check_key_name",
    "hash_secret",
    "migrations",
    "money",
    "month_to_date",
    "open_database",
    "usage_report",
]
