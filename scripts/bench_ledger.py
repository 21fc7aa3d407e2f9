"""Benchmark: what the ledger costs a request. Requests/s of a trivial endpoint (GET /v1/models)
on two servers started the same way, one writing every request to the SQLite ledger (a
"started" row and the final row, each committed before the request goes on), one with a ledger
that drops rows. Same run, rounds interleaved so both sides see the same machine noise; prints
the median of the rounds and the ratio.

    .venv/bin/python scripts/bench_ledger.py [--rounds 5] [--seconds 3] [--concurrency 32]

Each server is ``python scripts/bench_ledger.py --serve ledger|none --port P --data DIR``: the
real app (auth with a real hashed key, admission, request context) over an empty catalog, on
uvicorn, one process, as ``appliance serve`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.ledger import OnCommit, RequestRecord  # noqa: E402
from devtools.server_harness import free_port, wait_ready  # noqa: E402


class DroppingLedger:
    """The "without" side: answers at once, writes nothing."""

    def record(self, row: RequestRecord, on_commit: OnCommit | None = None) -> None:
        if on_commit is not None:
            on_commit()


def serve(kind: str, port: int, data: Path) -> None:
    import uvicorn

    from appliance.api.app import create_app
    from appliance.api.services import Services
    from appliance.engines.catalog import Catalog
    from appliance.ledger import KeyStore, LedgerReports, LedgerWriter

    keys = KeyStore(data / "keys.sqlite")
    writer = LedgerWriter(data / "ledger.sqlite") if kind == "ledger" else None
    if writer is not None:
        writer.start()
    try:
        services = Services(catalog=Catalog([]), ledger=writer or DroppingLedger(), keys=keys,
                            reports=LedgerReports(data / "ledger.sqlite"))
        uvicorn.run(create_app(services), host="127.0.0.1", port=port, log_level="warning",
                    access_log=False)
    finally:
        if writer is not None:
            writer.close()
        keys.close()


def start(kind: str, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port),
                                "--data", str(data)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, f"{url}/health", None, timeout=30, poll_s=0.1)
    except RuntimeError as exc:
        raise RuntimeError(f"{kind} server did not start: {exc}") from exc
    return process, url


async def load(url: str, secret: str, seconds: float, concurrency: int) -> float:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, limits=limits,
                                  headers={"authorization": f"Bearer {secret}"}) as client:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.get("/v1/models")
                response.raise_for_status()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", choices=["ledger", "none"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.data)
        return
    from appliance.ledger import KeyStore

    with tempfile.TemporaryDirectory() as folder:
        sides = {}
        for kind in ("ledger", "none"):
            data = Path(folder) / kind
            data.mkdir()
            with KeyStore(data / "keys.sqlite") as store:
                secret = store.create("bench")[1]
            sides[kind] = (*start(kind, data), secret)
        try:
            rates: dict[str, list[float]] = {"ledger": [], "none": []}
            for _, url, secret in sides.values():  # warm both: caches, connections
                asyncio.run(load(url, secret, 0.5, args.concurrency))
            for _ in range(args.rounds):
                for kind, (_, url, secret) in sides.items():
                    rates[kind].append(asyncio.run(load(url, secret, args.seconds,
                                                        args.concurrency)))
        finally:
            for process, _, _ in sides.values():
                process.terminate()
                process.wait()
    with_ledger = statistics.median(rates["ledger"])
    without = statistics.median(rates["none"])
    print(f"GET /v1/models, {args.concurrency} concurrent clients, {args.rounds} rounds of "
          f"{args.seconds:g} s each (interleaved)\n")
    print("| server | median req/s | rounds (req/s) |")
    print("| --- | ---: | --- |")
    for label, kind, median in (("with the ledger", "ledger", with_ledger),
                                ("without (rows dropped)", "none", without)):
        rounds = ", ".join(f"{r:.0f}" for r in rates[kind])
        print(f"| {label} | {median:.0f} | {rounds} |")
    print(f"\nwith / without: {with_ledger / without:.3f} "
          f"({(1 - with_ledger / without) * 100:.1f}% fewer requests/s with the ledger)")


if __name__ == "__main__":
    main()
