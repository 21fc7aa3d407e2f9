"""The hostile tier: requests nobody here wrote, against the real server with real models.

Every test is marked ``real`` and ``hostile``; one server serves the whole tier.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.server_harness import (
    PIPER_MODEL,
    SMOLLM2,
    TINY_MMPROJ,
    TINY_SD,
    WHISPER_TINY,
    build_tiny_mmproj,
    build_tiny_sd,
    create_key,
    free_port,
    start_server,
    write_config,
)
from tests.hostile.harness import HostileServer

CHAT_MODEL = "smollm2-135m-instruct"
VISION_MODEL = "smollm2-135m-vision"  # SmolLM2 with the tiny random projector (image attacks)
MODELS = f"""
[[models]]
id = "{CHAT_MODEL}"
path = "{SMOLLM2}"
price_per_request = 0.5
context_length = 2048
parallel = 2
threads = 1

[[models]]
id = "{VISION_MODEL}"
path = "{SMOLLM2}"
mmproj = "{TINY_MMPROJ}"
context_length = 2048
parallel = 2
threads = 1

[[models]]
id = "smollm2-135m-embed"
kind = "embedding"
path = "{SMOLLM2}"
pooling = "mean"
context_length = 512
price_per_request = 0.25

[[models]]
id = "whisper-tiny.en"
kind = "transcription"
path = "{WHISPER_TINY}"
price_per_request = 0.125

[[models]]
id = "tiny-random-sd"
kind = "image"
path = "{TINY_SD}"
price_per_request = 0.03
steps = 2
sizes = ["64x64"]

{PIPER_MODEL}"""

GROWTH_FILE_KEY = pytest.StashKey[Path]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/hostile/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.real)
            item.add_marker(pytest.mark.hostile)


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    build_tiny_sd()
    build_tiny_mmproj()
    folder: Path = tmp_path_factory.mktemp("hostile-server")
    port = free_port()
    config = write_config(folder, port, MODELS)
    key = create_key(config, "hostile-tier")
    server = start_server(config, port)
    growth_file = folder / "growth.jsonl"
    request.config.stash[GROWTH_FILE_KEY] = growth_file
    served = HostileServer(server, key, CHAT_MODEL, growth_file)
    try:
        yield served
    finally:
        served.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    growth_file = config.stash.get(GROWTH_FILE_KEY, None)
    if growth_file is None or not growth_file.is_file():
        return
    rows = [json.loads(line) for line in growth_file.read_text().splitlines() if line]
    terminalreporter.section("hostile tier: growth per attack")
    terminalreporter.write_line(f"{'attack':48} {'peak RSS MiB':>12} {'RSS MiB':>8} "
                                f"{'log KiB':>8} {'ledger KiB':>10} {'slowest /health s':>17}")
    for row in rows:
        terminalreporter.write_line(
            f"{row['name'][:48]:48} {row['peak_rss_mib']:>12} {row['rss_mib']:>8} "
            f"{row['log_kib']:>8} {row['ledger_kib']:>10} {row['slowest_health_s']:>17}")
