"""The keys and usage CLI: the secret alone on stdout, only its hash on disk, limits validated
with clear errors, show / update / revoke, usage grouped by key, model or day, as CSV."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.ledger import KeyLimits, KeyStore, LedgerWriter, RequestRecord

CONFIG = ('[server]\ndata_dir = "d"\n[[models]]\nid = "m"\npath = "m.gguf"\n'
          'aliases = ["gpt-4o-mini"]\n[[models]]\nid = "e"\nkind = "embedding"\n'
          'path = "m.gguf"\n')


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = tmp_path / "models.toml"
    path.write_text(CONFIG)
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, check=True)


def cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_revoke(config: Path) -> None:
    created = run(config, "keys", "create", "--name", "alice")
    secret = created.stdout.strip()
    assert secret.startswith("sk-app-") and "\n" not in secret
    assert "shown once" in created.stderr
    keys_file = config.parent / "d" / "keys.sqlite"
    assert secret.encode() not in keys_file.read_bytes()
    with KeyStore(keys_file) as store:
        record = store.lookup(secret)
        assert record is not None and record.name == "alice"
    listed = run(config, "keys", "list").stdout
    assert "alice" in listed and "active" in listed and secret not in listed
    run(config, "keys", "revoke", "alice")
    with KeyStore(keys_file) as store:
        found = store.lookup(secret)
        assert found is not None and found.revoked_at is not None
    assert "revoked" in run(config, "keys", "list").stdout


def test_limits_show_and_update(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, config, "keys", "create", "--name", "alice", "--models",
                         "gpt-4o-mini,e", "--rpm", "60", "--max-concurrent", "4",
                         "--monthly-requests", "10000", "--monthly-budget", "25.00",
                         "--expires", "2099-01-01")
    assert code == 0 and out.startswith("sk-app-")
    assert "models=m,e rpm=60" in err and "expires=2099-01-01T00:00:00Z" in err
    keys_file = config.parent / "d" / "keys.sqlite"
    with KeyStore(keys_file) as store:
        assert store.get("alice").limits == KeyLimits(
            models=("m", "e"), rpm=60, max_concurrent=4, monthly_requests=10000,
            monthly_budget=25.0, expires_at=4070908800.0)
    code, out, _ = cli(capsys, config, "keys", "show", "alice")
    assert "models:\tm,e" in out and "rpm:\t60" in out and "state:\tactive" in out
    code, _, err = cli(capsys, config, "keys", "update", "alice", "--rpm", "none",
                       "--models", "all", "--monthly-budget", "5", "--expires", "never")
    assert code == 0 and "updated key" in err
    with KeyStore(keys_file) as store:
        assert store.get("alice").limits == KeyLimits(
            max_concurrent=4, monthly_requests=10000, monthly_budget=5.0)
    code, _, err = cli(capsys, config, "keys", "create", "--name", "ops", "--admin")
    assert code == 0 and "created admin key" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--name", "x", "--rpm", "0"], "'0' is not a whole number of at least 1"),
    (["--name", "x", "--rpm", "ten"], "'ten' is not a whole number"),
    (["--name", "x", "--monthly-budget", "-3"], "'-3' is not an amount from 1e-09 to 1e+12"),
    (["--name", "x", "--monthly-budget", "nan"], "'nan' is not an amount from 1e-09 to 1e+12"),
    # A budget past a trillion failed every request of its key (its spend in billionths).
    (["--name", "x", "--monthly-budget", "1e300"], "'1e300' is not an amount from 1e-09"),
    (["--name", "x", "--expires", "2001-01-01"], "'2001-01-01' is already past"),
    (["--name", "x", "--expires", "next week"], "is not an ISO date or time"),
    (["--name", "x", "--models", "m,,e"], "is not a comma-separated list"),
])
def test_bad_options_are_clear_errors(config: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["keys", "create", *args, "--config", str(config)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["create", "--name", "x", "--models", "gpt-5"], "unknown model(s) 'gpt-5'"),
    (["create", "--name", "bad name!"], "invalid key name 'bad name!'"),
    (["create", "--name", "ops", "--admin", "--rpm", "3"], "admin keys call no models"),
    (["show", "nobody"], "no key has the id, name or prefix 'nobody'"),
    (["update", "nobody", "--rpm", "3"], "no key has the id"),
    (["revoke", "nobody"], "no active key"),
])
def test_bad_requests_are_clear_errors(config: Path, capsys: pytest.CaptureFixture[str],
                                       args: list[str], message: str) -> None:
    code, out, err = cli(capsys, config, "keys", *args)
    assert code == 1 and out == "" and message in err


def test_usage_without_a_ledger_says_so(config: Path) -> None:
    done = run(config, "usage")
    assert "no requests recorded yet" in done.stderr


def test_usage_by_key_model_day_and_csv(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with KeyStore(config.parent / "d" / "keys.sqlite") as store:
        alice, _ = store.create("alice")
    day = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    with LedgerWriter(config.parent / "d" / "ledger.sqlite") as writer:
        for i, (key, model, when, price) in enumerate([
            (alice.id, "m", day, 0.5), (alice.id, "e", day + 86400, 0.25),
            ("key_gone", "m", day + 86400, 1.0), (alice.id, "m", day + 5 * 86400, 9.0),
        ]):
            writer.record(RequestRecord(f"r{i}", when, "/v1/chat/completions", "POST", key,
                                        model, "ok", 200, price=price, prompt_tokens=3))
    _, out, _ = cli(capsys, config, "usage", "--by", "key", "--csv",
                       "--since", "2026-01-01", "--until", "2026-01-03")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["key"], r["requests"], r["cost"]) for r in rows] == [
        ("alice", "2", "0.7500"), ("key_gone", "1", "1.0000")]
    _, out, _ = cli(capsys, config, "usage", "--by", "day,model", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["day"], r["model"], r["requests"]) for r in rows] == [
        ("2026-01-01", "m", "1"), ("2026-01-02", "e", "1"), ("2026-01-02", "m", "1"),
        ("2026-01-06", "m", "1")]
    _, out, _ = cli(capsys, config, "usage", "--by", "model")
    assert out.splitlines()[0].startswith("model\trequests\tok")
    with pytest.raises(SystemExit):
        main(["usage", "--by", "project", "--config", str(config)])
