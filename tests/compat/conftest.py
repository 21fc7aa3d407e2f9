"""The compat suite: official clients against the real session server (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The npm packages of package.json (openai, @openai/codex), installed from the lock file
    on first use or when one is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed for the compat suite (apt install nodejs npm)")
    wanted = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]
    if not all((NODE_DIR / "node_modules" / name / "package.json").is_file() for name in wanted):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True, timeout=600)
    return NODE_DIR / "compat.mjs"


OPENAI2_DIR = Path(__file__).resolve().parent / "openai2"


@pytest.fixture(scope="session")
def openai2_python() -> Path:
    """The Python of the second client environment (openai2/requirements.txt: libraries that
    need the openai SDK 2.x), built on first use and again when the requirements change."""
    requirements = OPENAI2_DIR / "requirements.txt"
    venv = OPENAI2_DIR / ".venv"
    python = venv / "bin" / "python"
    stamp = venv / ".requirements-sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if not python.is_file() or not stamp.is_file() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(requirements)],
                       check=True, timeout=1200)
        stamp.write_text(wanted)
    return python


def run_client(python: Path, script: str, env: dict[str, str]) -> dict[str, Any]:
    """Run one of openai2/'s client scripts, which prints what it observed as one JSON
    object on its last line."""
    run = subprocess.run([str(python), str(OPENAI2_DIR / script)],
                         env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-4000:]
    observed: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    return observed
