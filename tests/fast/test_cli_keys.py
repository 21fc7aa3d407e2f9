"""The keys CLI: the secret alone on stdout, only its hash on disk, revocation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from appliance.ledger import KeyStore


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, check=True)


def test_create_list_revoke(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    config = tmp_path / "models.toml"
    config.write_text('[server]\ndata_dir = "d"\n[[models]]\nid = "m"\npath = "m.gguf"\n')
    created = run(config, "keys", "create", "--name", "alice")
    secret = created.stdout.strip()
    assert secret.startswith("sk-app-") and "\n" not in secret
    assert "shown once" in created.stderr
    keys_file = tmp_path / "d" / "keys.sqlite"
    assert secret.encode() not in keys_file.read_bytes()
    with KeyStore(keys_file) as store:
        record = store.lookup(secret)
        assert record is not None and record.name == "alice"
    listed = run(config, "keys", "list").stdout
    assert "alice" in listed and "active" in listed and secret not in listed
    run(config, "keys", "revoke", "alice")
    with KeyStore(keys_file) as store:
        assert store.lookup(secret) is None
    assert "revoked" in run(config, "keys", "list").stdout


def test_usage_without_a_ledger_says_so(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    config = tmp_path / "models.toml"
    config.write_text('[server]\ndata_dir = "d"\n[[models]]\nid = "m"\npath = "m.gguf"\n')
    done = run(config, "usage")
    assert "no requests recorded yet" in done.stderr
