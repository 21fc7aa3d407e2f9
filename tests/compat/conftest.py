"""The compat suite: official clients against the real session server (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The openai npm package, installed from the lock file on first use."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed for the compat suite (apt install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").is_file():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True, timeout=600)
    return NODE_DIR / "compat.mjs"
