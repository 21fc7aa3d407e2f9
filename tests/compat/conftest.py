"""The compat suite: official clients against the real session server (tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

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
