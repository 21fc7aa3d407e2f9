"""OpenAI's Codex CLI (npm @openai/codex) on the appliance's default chat models.

Codex speaks only the Responses API, streamed, and sends ~10k tokens before the user's first
word: its instructions as developer messages, eight function tools, a `namespace` tool, a
`web_search` tool we do not run, `include`, `reasoning`, `prompt_cache_key` and an unknown
`client_metadata`. So this runs `codex exec` (non-interactive) against a server made from the
shipped models.toml's two chat models, as a user would run them: on SmolLM2 (4,096 tokens)
the turn is a clean `context_length_exceeded`, which Codex reports as such; on Gemma 3 270M
(configured with its trained 32k) the turn completes.

Codex runs with a CODEX_HOME of its own (config.toml with a custom provider, nothing else), a
minimal environment (no OpenAI credentials) and stdin closed; `--json` prints its events.
"""

from __future__ import annotations

import json
import os
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.server_harness import (
    ROOT,
    RunningServer,
    create_key,
    free_port,
    start_server,
    toml_string,
    write_config,
)

pytestmark = [pytest.mark.real, pytest.mark.compat]
CHAT_MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
LONG_CONTEXT_MODEL = "gemma-3-270m"
# Codex sends no max_output_tokens and fails its turn on an answer cut short, while Gemma 270M
# (a base model, sampled at Codex's default temperature) may write thousands of tokens before
# its end-of-turn marker. A blank line ends its answer at the first paragraph, as a finished
# answer (a stop string), so the turn takes seconds, not up to the 32k context.
ANSWER_END = "\n\n"
KEY_VARIABLE = "APPLIANCE_API_KEY"
BOOT_TIMEOUT_S = 300.0
TURN_TIMEOUT_S = 600.0


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"models.toml value of an unexpected type: {value!r}")


def shipped_chat_models() -> str:
    """The default models.toml's chat entries, key for key, with their paths made absolute;
    Gemma's stop strings get ANSWER_END."""
    shipped = tomllib.loads((ROOT / "models.toml").read_text(encoding="utf-8"))["models"]
    tables = []
    for entry in (m for m in shipped if m["id"] in CHAT_MODELS):
        if entry["id"] == LONG_CONTEXT_MODEL:
            entry["stop"] = [*entry.get("stop", []), ANSWER_END]
        lines = ["[[models]]"]
        for key, value in entry.items():
            value = str(ROOT / value) if key == "path" else value
            lines.append(f"{key} = {toml_value(value)}")
        tables.append("\n".join(lines))
    assert len(tables) == len(CHAT_MODELS), "models.toml no longer ships both chat models"
    return "\n\n".join(tables) + "\n"


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer,
                                                                              str]]:
    folder = tmp_path_factory.mktemp("codex-server")
    port = free_port()
    config = write_config(folder, port, shipped_chat_models())
    key = create_key(config, "codex")
    server = start_server(config, port, timeout=BOOT_TIMEOUT_S)
    try:
        yield server, key
    finally:
        server.stop()


@pytest.fixture(scope="module")
def codex(node_client: Path) -> Path:
    """The codex launcher; its platform binary is a pinned optional package in the lock."""
    launcher = node_client.parent / "node_modules" / ".bin" / "codex"
    version = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                             timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.startswith("codex-cli "), version
    return launcher


def codex_exec(codex: Path, server: RunningServer, key: str, model: str, home: Path,
               prompt: str) -> tuple[int, list[dict[str, Any]], str]:
    """One ``codex exec --json`` turn: (exit status, its JSONL events, stderr)."""
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(
        f'model = {toml_string(model)}\n'
        'model_provider = "appliance"\n'
        '[model_providers.appliance]\n'
        'name = "Appliance"\n'
        f'base_url = {toml_string(server.base_url + "/v1")}\n'
        'wire_api = "responses"\n'
        f'env_key = "{KEY_VARIABLE}"\n', encoding="utf-8")
    workdir = home / "work"
    workdir.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "CODEX_HOME": str(codex_home), KEY_VARIABLE: key, "LANG": "C.UTF-8"}
    run = subprocess.run([str(codex), "exec", "--json", "--ephemeral", "--skip-git-repo-check",
                          "--sandbox", "read-only", "-C", str(workdir), prompt],
                         env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=TURN_TIMEOUT_S, check=False)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return run.returncode, events, run.stderr


def test_over_the_context_is_context_length_exceeded(codex: Path, shipped_server: tuple[
        RunningServer, str], tmp_path: Path) -> None:
    server, key = shipped_server
    code, events, stderr = codex_exec(codex, server, key, "smollm2-135m-instruct", tmp_path,
                                      "Say hello.")
    assert code != 0, events
    failed = [e for e in events if e["type"] == "turn.failed"]
    assert failed, (events, stderr)
    # Codex words it so only for the error code context_length_exceeded.
    assert "ran out of room in the model's context window" in failed[0]["error"]["message"]
    assert not [e for e in events if e["type"] == "turn.completed"]


def test_a_turn_completes_on_the_long_context_model(codex: Path, shipped_server: tuple[
        RunningServer, str], tmp_path: Path) -> None:
    server, key = shipped_server
    code, events, stderr = codex_exec(codex, server, key, "gemma-3-270m", tmp_path,
                                      "Say hello.")
    kinds = [e["type"] for e in events]
    assert code == 0, (events, stderr[-4000:])
    assert kinds[-1] == "turn.completed" and "turn.failed" not in kinds, events
    usage = events[-1]["usage"]
    # The whole of what Codex sent was read: its instructions alone are thousands of tokens.
    assert usage["input_tokens"] > 5000 and usage["output_tokens"] > 0, usage
    said = [e["item"] for e in events
            if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]
    assert said and said[-1]["text"], events
