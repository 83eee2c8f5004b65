"""In-memory twins of mesh's seams, shipped with the package for tests and embedders.

- ``ManualClock``: a clock you advance by hand.
- ``ScriptedBackend``: a Backend that replies from a script, honouring the same
  contract as the llama.cpp backend (busy, cancellation, final stats).
- ``SimNetwork`` / ``SimAuthority``: a deterministic in-process network of SWIM members
  with a virtual clock, loss, latency, partitions, kills and restarts.
"""

from mesh.testing.clock import ManualClock


def __getattr__(name):
    if name == "ScriptedBackend":
        from mesh.testing.backend import ScriptedBackend

        return ScriptedBackend
    if name in ("SimNetwork", "SimAuthority"):
        from mesh.testing import network

        return getattr(network, name)
    raise AttributeError(name)


__all__ = ["ManualClock", "ScriptedBackend", "SimAuthority", "SimNetwork"]
