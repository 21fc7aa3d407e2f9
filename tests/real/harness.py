"""Starts the real `appliance serve` in a subprocess on a free port and stops it afterwards.

Waits for /ready while polling the process, so a server that dies at boot fails the test at
once with its log instead of a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
WHISPER_TINY = ROOT / "models" / "whisper-tiny.en"
WHISPER_BASE = ROOT / "models" / "whisper-base"
# Built (not fetched) by scripts/build_tiny_sd.py; the session fixture builds it if missing.
TINY_SD = ROOT / "models" / "tiny-random-sd"
APPLIANCE = [sys.executable, "-m", "appliance.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(folder: Path, port: int, models_toml: str) -> Path:
    config = folder / "models.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "data"\n\n{models_toml}',
        encoding="utf-8",
    )
    return config


def create_key(config: Path, name: str) -> str:
    done = subprocess.run([*APPLIANCE, "keys", "create", "--name", name, "--config", str(config)],
                          capture_output=True, text=True, check=True, cwd=config.parent)
    return done.stdout.strip()


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    base_url: str
    config: Path
    log_path: Path

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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(config: Path, port: int, timeout: float = 120.0,
                 env: dict[str, str] | None = None, log_name: str = "server.log",
                 append_log: bool = False) -> RunningServer:
    """``env``: variables set for the server on top of this process's environment;
    ``append_log``: keep the log of an earlier server in the same folder (restarts)."""
    log_path = config.parent / log_name
    log_file = log_path.open("ab" if append_log else "wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen([*APPLIANCE, "serve", "--config", str(config)], cwd=config.parent,
                               stdout=log_file, stderr=subprocess.STDOUT, env=env)
    log_file.close()
    server = RunningServer(process, f"http://127.0.0.1:{port}", config, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx2.get(f"{server.base_url}/ready", timeout=1.0).status_code == 200:
                return server
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log()}")
