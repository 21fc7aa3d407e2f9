"""Starts real servers in subprocesses and stops them: the one harness of the real and hostile
test tiers, the benchmarks, the load test, the fault drills and the fuzzer.

It owns the model files the tests and scripts serve, a free loopback port, a config in a
folder of its own, API keys made with the CLI (as an operator makes them), and the wait for a
server to answer ready while its process is polled, so a server that dies at boot fails at once
with its log instead of after a timeout. The log goes to a file in the server's folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx2

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
WHISPER_TINY = ROOT / "models" / "whisper-tiny.en"
WHISPER_BASE = ROOT / "models" / "whisper-base"
PIPER_JOE = ROOT / "models" / "piper-joe-medium" / "en_US-joe-medium.onnx"
# The speech model as the session and hostile servers serve it (the default voice, OpenAI's
# voice names mapped to it); it goes last in their configs.
PIPER_MODEL = f"""[[models]]
id = "piper-joe-medium"
kind = "speech"
path = "{PIPER_JOE}"
aliases = ["tts-1", "gpt-4o-mini-tts"]
price_per_request = 0.015
threads = 1
# Its voices last: a sub-table belongs to the [[models]] entry above it.
[models.voices]
alloy = "joe"
ash = "joe"
ballad = "joe"
coral = "joe"
echo = "joe"
fable = "joe"
nova = "joe"
onyx = "joe"
sage = "joe"
shimmer = "joe"
verse = "joe"
marin = "joe"
cedar = "joe"
"""
# SmolLM2 as a think-family reasoning model (models.toml `reasoning = "think"`): ChatML whose
# generation prompt opens <think>, so the output starts inside the block; earlier turns'
# reasoning is not rendered (as Qwen3's template drops it).
THINK_TEMPLATE = '''chat_template = """{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}<|im_start|>assistant
<think>
"""'''
# Built (not fetched) by scripts/build_tiny_sd.py: see build_tiny_sd().
TINY_SD = ROOT / "models" / "tiny-random-sd"
# Built (not fetched) by scripts/build_tiny_mmproj.py: see build_tiny_mmproj(). SmolLM2 with
# it beside is the vision fixture (random projector weights: the answers are nonsense).
TINY_MMPROJ = ROOT / "models" / "tiny-random-mmproj-smollm2.gguf"
APPLIANCE = (sys.executable, "-m", "appliance.cli")  # argv prefix: `appliance` in this venv

READY_TIMEOUT_S = 120.0
READY_POLL_S = 0.2
STOP_GRACE_S = 20.0  # SIGINT, then this long before SIGKILL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def toml_string(text: str) -> str:
    # A JSON string is a valid TOML basic string: TOML accepts every escape JSON writes.
    return json.dumps(text, ensure_ascii=False)


def write_config(folder: Path, port: int, models_toml: str, server_extra: str = "",
                 name: str = "models.toml") -> Path:
    """``folder/name`` serving ``models_toml`` on loopback; its data dir is ``folder/data``
    (shared by every config written there). ``server_extra``: more ``[server]`` lines."""
    config = folder / name
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "data"\n{server_extra}\n'
        f"{models_toml}",
        encoding="utf-8",
    )
    return config


class Key(NamedTuple):
    id: str
    secret: str


def make_key(config: Path, name: str, admin: bool = False) -> Key:
    """A key made with ``appliance keys create``: its id (read from the CLI's message) and its
    secret (the CLI's only line on stdout)."""
    command = [*APPLIANCE, "keys", "create", "--name", name, "--config", str(config)]
    if admin:
        command.append("--admin")
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          cwd=config.parent, timeout=60)
    found = re.search(r"created (?:admin )?key (\S+) named", done.stderr)
    if found is None:
        raise RuntimeError(f"cannot read the key id from: {done.stderr!r}")
    return Key(found.group(1), done.stdout.strip())


def create_key(config: Path, name: str, admin: bool = False) -> str:
    """The secret of a new key (see make_key)."""
    return make_key(config, name, admin).secret


def build_tiny_sd(folder: Path = TINY_SD, quiet: bool = True) -> None:
    """The tiny random-weights diffusers pipeline, built offline (kept while its recipe holds)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tiny_sd.py"), str(folder)],
                   check=True, capture_output=quiet)


def build_tiny_mmproj(path: Path = TINY_MMPROJ, quiet: bool = True) -> None:
    """The tiny random-weight vision projector for SmolLM2, built offline (kept while its
    recipe holds)."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tiny_mmproj.py"), str(path)],
                   check=True, capture_output=quiet)


def log_text(path: Path, tail_lines: int | None = None) -> str:
    if not path.exists():
        return "(no log)"
    text = path.read_text(encoding="utf-8", errors="replace")
    if tail_lines is None:
        return text
    return "\n".join("    " + line for line in text.splitlines()[-tail_lines:])


def spawn(argv: list[str], folder: Path, log_name: str = "server.log", append_log: bool = False,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Starts ``argv`` in ``folder``, stdout and stderr into ``folder/log_name``; ``env``:
    variables set on top of this process's environment."""
    log_file = (folder / log_name).open("ab" if append_log else "wb")
    try:
        return subprocess.Popen(argv, cwd=folder, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    finally:
        log_file.close()


def answers_200(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=1.0).status_code == 200
    except httpx2.HTTPError:
        return False


def wait_ready(process: subprocess.Popen[bytes], url: str, log_path: Path | None,
               timeout: float = READY_TIMEOUT_S, poll_s: float = READY_POLL_S,
               tail_lines: int | None = None) -> float:
    """Polls ``url`` until it answers 200; seconds waited. A process that exits first, or a
    server not ready in time (then stopped), raises RuntimeError with its log (the last
    ``tail_lines`` lines, or all of it)."""
    started = time.perf_counter()
    deadline = started + timeout

    def log() -> str:
        return "(no log)" if log_path is None else log_text(log_path, tail_lines)

    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before ready:\n{log()}")
        if answers_200(url):
            return time.perf_counter() - started
        time.sleep(poll_s)
    stop_process(process)
    raise RuntimeError(f"server not ready after {timeout:g}s:\n{log()}")


def stop_process(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGINT (what Ctrl-C sends), then SIGKILL if it has not exited within ``grace``."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class RunningServer:
    """One ``appliance serve`` process; ``boot_s``: seconds from its start to ready."""

    process: subprocess.Popen[bytes]
    base_url: str
    config: Path
    log_path: Path
    boot_s: float = 0.0

    @property
    def ledger_path(self) -> Path:
        return self.config.parent / "data" / "ledger.sqlite"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM, then wait: (exit status, or None if it did not exit in time; seconds)."""
        started = time.monotonic()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)


def start_server(config: Path, port: int, timeout: float = READY_TIMEOUT_S,
                 env: dict[str, str] | None = None, log_name: str = "server.log",
                 append_log: bool = False, poll_s: float = READY_POLL_S) -> RunningServer:
    """``appliance serve --config config``, once ``/ready`` answers 200. ``env``: variables set
    for the server on top of this process's environment; ``append_log``: keep the log of an
    earlier server in the same folder (restarts)."""
    started = time.perf_counter()
    process = spawn([*APPLIANCE, "serve", "--config", str(config)], config.parent, log_name,
                    append_log, env)
    server = RunningServer(process, f"http://127.0.0.1:{port}", config, config.parent / log_name)
    wait_ready(process, f"{server.base_url}/ready", server.log_path, timeout, poll_s)
    server.boot_s = time.perf_counter() - started
    return server
