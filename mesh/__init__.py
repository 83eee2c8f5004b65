"""mesh: a peer-to-peer mesh for LLM inference."""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy, so `import mesh` stays cheap and does not pull in zmq or llama.cpp.
    if name == "Client":
        from mesh.client import Client

        return Client
    if name == "Answer":
        from mesh.api import Answer

        return Answer
    raise AttributeError(name)


__all__ = ["Answer", "Client", "__version__"]
