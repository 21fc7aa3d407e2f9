"""The real tier uses the session server from tests/real/session_server.py."""

from tests.real.session_server import RealServer

__all__ = ["RealServer"]
