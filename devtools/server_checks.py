"""What the scripts that drive a real server read back and report: ledger rows (read-only,
beside the running server), gauges from /metrics, lines of the server log worth a look, and
PASS/FAIL checks printed as Markdown tables.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def ledger_rows(path: Path, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of the ``requests`` table (read-only; fine beside a running server: WAL)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        sql = "SELECT * FROM requests" + (f" WHERE {where}" if where else "")
        return [dict(row) for row in conn.execute(sql, tuple(params))]


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def gauge(metrics_text: str, name: str, model: str) -> float | None:
    found = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', metrics_text, re.M)
    return float(found.group(1)) if found else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, numbers right-aligned."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.2f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    right = [all(isinstance(row[i], int | float) for row in rows) if rows else False
             for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in text]
    return "\n".join(lines)


def log_findings(log: str, limit: int = 8) -> list[str]:
    """Server log lines worth a look: tracebacks, errors, CancelledError."""
    pattern = re.compile(r"Traceback|CancelledError|^\S+ \S+ (ERROR|CRITICAL) |\"level\": "
                         r"\"(ERROR|CRITICAL)\"")
    return [line for line in log.splitlines() if pattern.search(line)][:limit]


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, ok, detail))
        return ok

    @property
    def failed(self) -> list[str]:
        return [name for name, ok, _ in self.results if not ok]

    def report(self) -> str:
        return table(["check", "result", "figures"],
                     [(name, "PASS" if ok else "FAIL", detail)
                      for name, ok, detail in self.results])
