"""The ``appliance`` command: serve, check-config, keys, usage.

Output meant for scripts goes to stdout (a new key, alone on its line); explanations go to
stderr. Configuration errors print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.config import ApplianceConfig, load_config, with_overrides
from appliance.errors import ConfigError

DEFAULT_CONFIG = Path("models.toml")


def _config(args: argparse.Namespace) -> ApplianceConfig:
    config = load_config(args.config)
    return with_overrides(
        config,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        data_dir=args.data_dir,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from appliance.server import serve

    config = _config(args)
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.first_run_key:
        _ensure_a_key(config)
    serve(config)
    return 0


def _ensure_a_key(config: ApplianceConfig) -> None:
    """For a first-run demo: with no active key at all, make one and show it."""
    from appliance.ledger import KeyStore

    store = KeyStore(config.server.keys_path)
    try:
        if store.count_active() == 0:
            record, secret = store.create("demo")
            print(f"\nNo API key existed, so one was created ({record.id}, named 'demo').\n"
                  f"Use it as the Bearer token; it is shown only this once:\n\n    {secret}\n",
                  file=sys.stderr)
    finally:
        store.close()


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    for model in config.models:
        aliases = f" (aliases: {', '.join(model.aliases)})" if model.aliases else ""
        print(f"{model.id}: {model.kind}, {model.path}{aliases}", file=sys.stderr)
    print(f"{config.source}: OK, {len(config.models)} model(s)", file=sys.stderr)
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from appliance.ledger import KeyStore

    config = _config(args)
    store = KeyStore(config.server.keys_path)
    try:
        if args.keys_command == "create":
            record, secret = store.create(args.name)
            print(f"created key {record.id} named {record.name!r}; the secret is shown "
                  "once, store it now:", file=sys.stderr)
            print(secret)
        elif args.keys_command == "list":
            for record in store.list():
                state = "revoked" if record.revoked_at else "active"
                print(f"{record.id}\t{record.name}\t{record.prefix}…\t{_when(record.created_at)}"
                      f"\t{state}")
        elif args.keys_command == "revoke":
            try:
                record = store.revoke(args.key)
            except KeyError as exc:
                print(f"error: {exc.args[0]}", file=sys.stderr)
                return 1
            print(f"revoked key {record.id} ({record.name})", file=sys.stderr)
    finally:
        store.close()
    return 0


def _cmd_usage(args: argparse.Namespace) -> int:
    from appliance.ledger import KeyStore, usage_totals

    config = _config(args)
    store = KeyStore(config.server.keys_path)
    try:
        names = {record.id: record.name for record in store.list()}
    finally:
        store.close()
    since = _timestamp(args.since) if args.since else None
    until = _timestamp(args.until) if args.until else None
    if not config.server.ledger_path.is_file():
        print(f"no requests recorded yet (no ledger at {config.server.ledger_path})",
              file=sys.stderr)
        return 0
    rows = usage_totals(config.server.ledger_path, since=since, until=until, key_names=names)
    print("key\tmodel\trequests\tok\terrors\tcancelled\tprompt_tokens\tcompletion_tokens\tcost")
    for row in rows:
        print(f"{row.key_name or row.key_id or '-'}\t{row.model or '-'}\t{row.requests}\t"
              f"{row.ok}\t{row.errors}\t{row.cancelled}\t{row.prompt_tokens}\t"
              f"{row.completion_tokens}\t{row.cost:.4f} {row.currency}")
    return 0


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(text: str) -> float:
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="models.toml to use (default: ./models.toml)")
    common.add_argument("--data-dir", type=Path, default=None,
                        help="folder for the ledger and keys (default: [server] data_dir)")
    parser = argparse.ArgumentParser(prog="appliance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="load models and serve the API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--first-run-key", action="store_true",
                       help="create and print a key named 'demo' if no active key exists")
    serve.set_defaults(handler=_cmd_serve)

    check = commands.add_parser("check-config", parents=[common], help="validate models.toml")
    check.set_defaults(handler=_cmd_check_config)

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", parents=[common], help="create a key")
    create.add_argument("--name", required=True)
    key_commands.add_parser("list", parents=[common], help="list keys")
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key", help="key id, name or prefix")
    keys.set_defaults(handler=_cmd_keys)

    usage = commands.add_parser("usage", parents=[common], help="totals per key and model")
    usage.add_argument("--since", help="ISO date or time (UTC unless it says otherwise)")
    usage.add_argument("--until", help="ISO date or time (UTC unless it says otherwise)")
    usage.set_defaults(handler=_cmd_usage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"configuration error: {exc.message}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
