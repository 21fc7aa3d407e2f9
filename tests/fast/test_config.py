"""models.toml validation: every mistake is named by file, model and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import GPU_LAYERS_ALL, load_config, with_overrides
from appliance.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "n.gguf").write_bytes(b"GGUF")
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[server]
port = 9001
data_dir = "state"

[[models]]
id = "a"
path = "m.gguf"
aliases = ["gpt-4o-mini"]
price_per_request = 0.01
context_length = 2048
parallel = 2
gpu_layers = 10
chat_template = "{{ messages }}"
stop = ["<end>"]

[[models]]
id = "b"
path = "n.gguf"
"""


def test_good_config_is_typed_and_resolved(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={})
    assert config.server.port == 9001
    assert config.server.data_dir == (tmp_path / "state").resolve()
    assert config.server.ledger_path == config.server.data_dir / "ledger.sqlite"
    first, second = config.models
    assert first.aliases == ("gpt-4o-mini",)
    assert first.path == (tmp_path / "m.gguf").resolve()
    assert (first.parallel, first.gpu_layers, first.context_length) == (2, 10, 2048)
    assert first.stop == ("<end>",)
    assert second.gpu_layers == GPU_LAYERS_ALL  # full offload unless told otherwise
    assert second.parallel is None  # "auto": the engine picks slots for the device
    assert second.kind == "chat"


def test_environment_and_flags_override_server_knobs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), env={"APPLIANCE_PORT": "9100"})
    assert config.server.port == 9100
    moved = with_overrides(config, host="0.0.0.0", data_dir=tmp_path / "elsewhere")
    assert moved.server.host == "0.0.0.0"
    assert moved.server.ledger_path == (tmp_path / "elsewhere" / "ledger.sqlite").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("parallel = 2", "paralel = 2"), "models[0] (id 'a').paralel: unknown key"),
        (GOOD.replace('port = 9001', 'prot = 9001'), "server.prot: unknown key"),
        (GOOD.replace('path = "n.gguf"', 'path = "missing.gguf"'), "models[1] (id 'b').path"),
        (GOOD.replace('id = "b"', 'id = "a"'), "models[1] (id 'a').id: name 'a' is already"),
        (GOOD.replace('path = "n.gguf"', 'path = "n.gguf"\naliases = ["gpt-4o-mini"]'),
         "models[1] (id 'b').aliases: name 'gpt-4o-mini' is already used by model 'a'"),
        (GOOD.replace("parallel = 2", 'parallel = "two"'), ".parallel: expected \"auto\""),
        (GOOD.replace("parallel = 2", "parallel = 0"), ".parallel: expected \"auto\""),
        (GOOD.replace("parallel = 2", "parallel = 1.5"), ".parallel: expected int or str"),
        (GOOD.replace("gpu_layers = 10", 'gpu_layers = "most"'), ".gpu_layers"),
        (GOOD.replace('port = 9001', 'port = true'), "server.port: expected int"),
        (GOOD.replace('kind', 'x') + '\n[[models]]\nid = "c"\nkind = "video"\npath = "m.gguf"',
         "models[2] (id 'c').kind"),
        ("[[models]]\npath = 'm.gguf'", "models[0].id"),
        ("[server]\n", "no [[models]] configured"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_config_errors_name_file_model_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert str(path.resolve()) in caught.value.message
    assert expected in caught.value.message


def test_check_config_exits_non_zero_with_a_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("parallel = 2", "paralel = 2"))
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "check-config", "--config",
                           str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "paralel: unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_shipped_models_toml_is_valid() -> None:
    config = load_config(ROOT / "models.toml", env={})
    kinds = {m.id: m.kind for m in config.models}
    assert {"smollm2-135m-instruct": "chat", "smollm2-135m-embed": "embedding",
            "gemma-3-270m": "chat", "whisper-tiny.en": "transcription",
            "whisper-base": "transcription"}.items() <= kinds.items()
    gemma = config.models[2]
    assert gemma.chat_template and "<start_of_turn>" in gemma.chat_template


def test_network_facing_server_keys(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    text = GOOD.replace('data_dir = "state"', 'data_dir = "state"\nlog_format = "json"\n'
                        'metrics_public = true\nshutdown_grace_s = 5\nmax_body_mb = 2\n'
                        'cors_origins = ["http://lan.test:3000"]\n'
                        'tls_certfile = "cert.pem"\ntls_keyfile = "key.pem"')
    server = load_config(write(tmp_path, text), env={}).server
    assert (server.log_format, server.metrics_public, server.shutdown_grace_s) == (
        "json", True, 5.0)
    assert server.cors_origins == ("http://lan.test:3000",)
    assert server.max_body_mb == 2
    assert server.tls_certfile == (tmp_path / "cert.pem").resolve()
    defaults = load_config(write(tmp_path, GOOD), env={}).server
    assert (defaults.log_format, defaults.metrics_public, defaults.shutdown_grace_s,
            defaults.cors_origins, defaults.tls_certfile, defaults.max_body_mb) == (
        "text", False, 30.0, (), None, 8)


@pytest.mark.parametrize(("line", "message"), [
    ('log_format = "xml"', "server.log_format"),
    ("shutdown_grace_s = -1", "server.shutdown_grace_s"),
    ("cors_origins = [1]", "server.cors_origins"),
    ("max_body_mb = 0", "server.max_body_mb"),
    ('tls_certfile = "missing.pem"', "server.tls_certfile"),
    ('tls_certfile = "models.toml"', "needs both"),
])
def test_bad_network_facing_keys_are_named(tmp_path: Path, line: str, message: str) -> None:
    text = GOOD.replace('data_dir = "state"', f'data_dir = "state"\n{line}')
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})
