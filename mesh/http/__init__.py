"""Every peer's HTTP face, on a port of its own: the OpenAI-compatible API, Prometheus
metrics, health checks and the dashboard. All of it calls the same Router as the RPC
path; nothing here generates text by itself."""

from mesh.http.server import HttpServer

__all__ = ["HttpServer"]
