"""Self-hosted inference appliance: local models behind an OpenAI-compatible API."""

__version__ = "0.1.0"
