"""HTTP: the OpenAI-compatible API, /metrics, health, and the dashboard.

``server`` (``HttpServer``) mounts the route groups: ``openai_api`` (chat completions
through the Router; ``openai_schema`` and ``openai_format`` are its pure parts), ``ops``
(health, metrics, status for the dashboard), ``dashboard`` (the page). ``guard`` checks
API keys (``apikeys``: the key file) and rate limits. ``metrics`` (``PeerMetrics``: the
Prometheus registry) and ``recent`` (the recent requests the dashboard lists) record
what the Router reports.
"""

from mesh.http.server import HttpServer

__all__ = ["HttpServer"]
