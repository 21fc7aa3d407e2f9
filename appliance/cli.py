"""The ``appliance`` command: serve, check-config, keys (create, list, show, update, revoke), usage.

Output meant for scripts goes to stdout (a new key, alone on its line); explanations go to
stderr. Configuration errors print one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.config import ApplianceConfig, ChatModelConfig, load_config, with_overrides
from appliance.errors import ConfigError
from appliance.ledger import MAX_AMOUNT, MIN_AMOUNT, KeyLimits, KeyRecord, money

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
    from appliance.api.telemetry.logs import configure_logging
    from appliance.server import serve

    config = _config(args)
    configure_logging(config.server.log_format, config.server.log_level)
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
        if isinstance(model, ChatModelConfig):
            print(f"  {_chat_model_detected(model)}", file=sys.stderr)
    print(f"{config.source}: OK, {len(config.models)} model(s)", file=sys.stderr)
    return 0


def _chat_model_detected(model: ChatModelConfig) -> str:
    """What the GGUF's vocabulary and template say (reasoning), read without the weights."""
    from appliance.engines.loader import describe_chat_model

    try:
        return describe_chat_model(model)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"model {model.id!r}: {model.path} could not be read: {exc}") from exc


def _cmd_keys(args: argparse.Namespace) -> int:
    from appliance.ledger import KeyStore

    config = _config(args)
    store = KeyStore(config.server.keys_path)
    try:
        if args.keys_command == "list":
            print("id\tname\tprefix\tcreated\tstate\tlimits")
            for record in store.list():
                print(f"{record.id}\t{record.name}\t{record.prefix}…\t"
                      f"{_when(record.created_at)}\t{_state(record)}\t{_limits_text(record)}")
            return 0
        if args.keys_command == "create":
            limits = _limits_from_args(args, config, KeyLimits())
            record, secret = store.create(args.name, limits, admin=args.admin)
            kind = "admin key" if record.admin else "key"
            print(f"created {kind} {record.id} named {record.name!r}"
                  f" ({_limits_text(record)}); the secret is shown once, store it now:",
                  file=sys.stderr)
            print(secret)
        elif args.keys_command == "show":
            record = store.get(args.key)
            for label, value in _describe(record):
                print(f"{label}:\t{value}")
        elif args.keys_command == "update":
            current = store.get(args.key)
            record = store.update(current.id, _limits_from_args(args, config, current.limits))
            print(f"updated key {record.id} ({record.name}): {_limits_text(record)}",
                  file=sys.stderr)
        elif args.keys_command == "revoke":
            record = store.revoke(args.key)
            print(f"revoked key {record.id} ({record.name})", file=sys.stderr)
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _limits_from_args(args: argparse.Namespace, config: ApplianceConfig,
                      base: KeyLimits) -> KeyLimits:
    """``base`` with every limit option the user gave applied (``none`` clears one)."""
    changes: dict[str, object] = {}
    for option in ("rpm", "max_concurrent", "monthly_requests", "monthly_budget"):
        value = getattr(args, option, None)
        if value is not None:
            changes[option] = None if value is _CLEAR else value
    if getattr(args, "expires", None) is not None:
        changes["expires_at"] = None if args.expires is _CLEAR else args.expires
    if getattr(args, "models", None) is not None:
        changes["models"] = (None if args.models is _CLEAR
                             else _canonical_models(config, args.models))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _canonical_models(config: ApplianceConfig, names: list[str]) -> tuple[str, ...]:
    canonical = {name: m.id for m in config.models for name in (m.id, *m.aliases)}
    unknown = [name for name in names if name not in canonical]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(map(repr, unknown))}; {config.source} "
                         f"serves {', '.join(sorted(canonical))}")
    return tuple(dict.fromkeys(canonical[name] for name in names))


def _state(record: KeyRecord) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expired(time.time()):
        return "expired"
    return "admin" if record.admin else "active"


def _limits_text(record: KeyRecord) -> str:
    limits = record.limits
    parts = [f"models={','.join(limits.models)}" if limits.models is not None else "",
             f"rpm={limits.rpm}" if limits.rpm is not None else "",
             f"max_concurrent={limits.max_concurrent}"
             if limits.max_concurrent is not None else "",
             f"monthly_requests={limits.monthly_requests}"
             if limits.monthly_requests is not None else "",
             f"monthly_budget={money(limits.monthly_budget)}"
             if limits.monthly_budget is not None else "",
             f"expires={_when(limits.expires_at)}" if limits.expires_at is not None else ""]
    return " ".join(p for p in parts if p) or "no limits"


def _describe(record: KeyRecord) -> list[tuple[str, str]]:
    limits = record.limits

    def text(value: object) -> str:
        return "-" if value is None else str(value)

    return [
        ("id", record.id), ("name", record.name), ("prefix", record.prefix + "…"),
        ("state", _state(record)), ("created", _when(record.created_at)),
        ("revoked", _when(record.revoked_at) if record.revoked_at is not None else "-"),
        ("expires", _when(limits.expires_at) if limits.expires_at is not None else "never"),
        ("models", ",".join(limits.models) if limits.models is not None else "all"),
        ("rpm", text(limits.rpm)), ("max_concurrent", text(limits.max_concurrent)),
        ("monthly_requests", text(limits.monthly_requests)),
        ("monthly_budget", "-" if limits.monthly_budget is None
         else money(limits.monthly_budget)),
    ]


def _cmd_usage(args: argparse.Namespace) -> int:
    from appliance.ledger import KeyStore, usage_report

    config = _config(args)
    store = KeyStore(config.server.keys_path)
    try:
        names = {record.id: record.name for record in store.list()}
    finally:
        store.close()
    if not config.server.ledger_path.is_file():
        print(f"no requests recorded yet (no ledger at {config.server.ledger_path})",
              file=sys.stderr)
        return 0
    rows = usage_report(config.server.ledger_path, by=args.by, since=args.since,
                        until=args.until, key_names=names)
    header = [*args.by, "requests", "ok", "errors", "cancelled", "interrupted",
              "prompt_tokens", "completion_tokens", "audio_seconds", "images", "characters",
              "cost", "currency"]
    table = []
    for row in rows:
        group = {"key": row.key_name or row.key_id or "-", "model": row.model or "-",
                 "day": row.day or "-"}
        table.append([*(group[name] for name in args.by), row.requests, row.ok, row.errors,
                      row.cancelled, row.interrupted, row.prompt_tokens, row.completion_tokens,
                      f"{row.audio_seconds:.1f}", row.images, row.characters,
                      f"{row.cost:.4f}", row.currency])
    writer = csv.writer(sys.stdout, delimiter="," if args.csv else "\t", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(table)
    return 0


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(text: str) -> float:
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date or time, e.g. 2027-01-01 or 2027-01-01T12:00"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


# Given to an update option, ``none`` (``all`` for models, ``never`` for expiry) removes it.
_CLEAR = object()


def _clearable(parse: Callable[[str], object], *words: str) -> Callable[[str], object]:
    def parse_or_clear(text: str) -> object:
        return _CLEAR if text.strip().lower() in ("none", *words) else parse(text)

    parse_or_clear.__name__ = parse.__name__  # argparse names the type in its errors
    return parse_or_clear


def _count(text: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _money(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_AMOUNT <= value <= MAX_AMOUNT:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount from {MIN_AMOUNT:g} to "
                                         f"{MAX_AMOUNT:g}, e.g. 25.00")
    return value


def _future(text: str) -> float:
    moment = _timestamp(text)
    if moment <= time.time():
        raise argparse.ArgumentTypeError(f"{text!r} is already past")
    return moment


def _model_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of models")
    return names


def _groupings(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in ("key", "model", "day")]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: group by key, model or day (or several, comma-separated)")
    return names


def _add_limit_options(parser: argparse.ArgumentParser, *, clearable: bool) -> None:
    def kind(parse: Callable[[str], object], *words: str) -> Callable[[str], object]:
        return _clearable(parse, *words) if clearable else parse

    clear = " ('none' removes it)" if clearable else ""
    parser.add_argument("--models", type=kind(_model_list, "all"),
                        help="comma-separated model ids or aliases the key may use (default: "
                        "all)" + (" ('all' allows every model)" if clearable else ""))
    parser.add_argument("--rpm", type=kind(_count), help="requests per minute" + clear)
    parser.add_argument("--max-concurrent", type=kind(_count),
                        help="requests in flight at once" + clear)
    parser.add_argument("--monthly-requests", type=kind(_count),
                        help="requests per calendar month (UTC)" + clear)
    parser.add_argument("--monthly-budget", type=kind(_money),
                        help="spend per calendar month, in the server's currency" + clear)
    parser.add_argument("--expires", type=kind(_future, "never"),
                        help="ISO date or time the key stops working (UTC unless it says "
                        "otherwise)" + (" ('never' removes it)" if clearable else ""))


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
    create.add_argument("--admin", action="store_true",
                        help="an admin key: manages keys and reads usage over HTTP, calls no "
                        "models")
    _add_limit_options(create, clearable=False)
    key_commands.add_parser("list", parents=[common], help="list keys")
    show = key_commands.add_parser("show", parents=[common], help="show one key")
    show.add_argument("key", help="key id, name or prefix")
    update = key_commands.add_parser("update", parents=[common],
                                     help="change a key's limits (options not given stay)")
    update.add_argument("key", help="key id, name or prefix")
    _add_limit_options(update, clearable=True)
    revoke = key_commands.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("key", help="key id, name or prefix")
    keys.set_defaults(handler=_cmd_keys)

    usage = commands.add_parser("usage", parents=[common],
                                help="totals by key, model and/or day")
    usage.add_argument("--since", type=_timestamp,
                       help="ISO date or time (UTC unless it says otherwise)")
    usage.add_argument("--until", type=_timestamp,
                       help="ISO date or time (UTC unless it says otherwise)")
    usage.add_argument("--by", type=_groupings, default=["key", "model"],
                       help="key, model or day, or several comma-separated (default key,model)")
    usage.add_argument("--csv", action="store_true", help="comma-separated output")
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
